"""Array kernels of the NumPy reference backend.

The hot loops of every mode are expressed through these few functions, so that a faster backend
replaces them one by one with the same signatures (``numpy`` stays the oracle).
"""

from __future__ import annotations

import numpy as np

from .combinatorics import SparseBilinear


def bilinear(a: np.ndarray, b: np.ndarray, table: SparseBilinear) -> np.ndarray:
    """``out[table.target[p]] += a[table.left[p]] * b[table.right[p]]`` for every pair ``p``.

    ``a`` and ``b`` are stacks ``(rows, N, width)``; returns ``(table.n_out, N, width)``. The pairs
    come in runs of consecutive rows (:attr:`SparseBilinear.runs`), each one multiply-add on
    contiguous slices into a reused buffer: no gather, no temporary the size of all pairs.
    """
    out = np.zeros((table.n_out, *a.shape[1:]), dtype=a.dtype)
    runs = table.runs
    if len(runs):
        buffer = np.empty((int(runs[:, 3].max()), *a.shape[1:]), dtype=a.dtype)
        for l0, r0, t0, n in runs.tolist():
            product = np.multiply(a[l0 : l0 + n], b[r0 : r0 + n], out=buffer[:n])
            out[t0 : t0 + n] += product
    return out


def affine(stack: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``stack @ W`` over the last axis as ONE matrix product on ``(rows * N, n_in)``."""
    rows, n, n_in = stack.shape
    return (stack.reshape(rows * n, n_in) @ W).reshape(rows, n, W.shape[1])


def affine_weight_grad(stack: np.ndarray, stack_out_bar: np.ndarray) -> np.ndarray:
    """``sum over rows and points of stack^T @ stack_out_bar``: the weight cotangent, ONE product."""
    n_in, n_out = stack.shape[-1], stack_out_bar.shape[-1]
    return stack.reshape(-1, n_in).T @ stack_out_bar.reshape(-1, n_out)
