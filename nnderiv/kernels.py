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
    are sorted by target, so the sum is one gather, one product and one ``reduceat``.
    """
    out = np.zeros((table.n_out, *a.shape[1:]), dtype=a.dtype)
    if table.target.size:
        products = a[table.left]
        products *= b[table.right]
        out[table.run_targets] = np.add.reduceat(products, table.run_starts, axis=0)
    return out


def affine(stack: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``stack @ W`` over the last axis as ONE matrix product on ``(rows * N, n_in)``."""
    rows, n, n_in = stack.shape
    return (stack.reshape(rows * n, n_in) @ W).reshape(rows, n, W.shape[1])


def affine_weight_grad(stack: np.ndarray, stack_out_bar: np.ndarray) -> np.ndarray:
    """``sum over rows and points of stack^T @ stack_out_bar``: the weight cotangent, ONE product."""
    n_in, n_out = stack.shape[-1], stack_out_bar.shape[-1]
    return stack.reshape(-1, n_in).T @ stack_out_bar.reshape(-1, n_out)
