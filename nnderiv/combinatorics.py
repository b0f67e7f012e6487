"""Combinatorial tables: multi-indices, truncated series products, symmetric tensor layouts.

Everything here depends only on the number of inputs ``d`` and the order ``K``; it is computed
once per ``(d, K)`` and cached. No array of points ever passes through this module.

Multi-indices are stored in *graded* order: first the value ``(0, ..., 0)``, then the ``d``
first-order indices ``e_0, ..., e_{d-1}``, then the ``d (d + 1) / 2`` second-order ones, and so
on; inside one degree, in descending lexicographic order. For ``d = 2, K = 2``::

    (0, 0) | (1, 0) (0, 1) | (2, 0) (1, 1) (0, 2)

There are ``C(d + K, K)`` of them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np


def n_coefficients(d: int, order: int) -> int:
    """Number of multi-indices ``alpha`` in ``d`` variables with ``|alpha| <= order``."""
    return math.comb(d + order, order)


def _compositions(total: int, parts: int):
    """All ``parts``-tuples of non-negative integers summing to ``total``, descending lex order."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total, -1, -1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


@dataclass(frozen=True, eq=False)
class SparseBilinear:
    """The bilinear map ``out[target[p]] += a[left[p]] * b[right[p]]`` over pairs ``p``.

    ``a``, ``b`` and ``out`` are stacks indexed by the same ``n_out`` rows (multi-indices).

    The pairs are kept sorted by ``target`` with the start of each run of equal targets, so that
    the sum over pairs is one ``reduceat`` (see :func:`nnderiv.kernels.bilinear`).
    """

    left: np.ndarray
    right: np.ndarray
    target: np.ndarray
    n_out: int

    @classmethod
    def from_pairs(cls, left, right, target, n_out: int) -> SparseBilinear:
        left, right, target = (np.asarray(v, dtype=np.intp) for v in (left, right, target))
        order = np.argsort(target, kind="stable")
        return cls(left[order], right[order], target[order], n_out)

    @cached_property
    def run_starts(self) -> np.ndarray:
        """Index of the first pair of each run of equal targets."""
        if self.target.size == 0:
            return np.zeros(0, dtype=np.intp)
        return np.flatnonzero(np.r_[True, self.target[1:] != self.target[:-1]])

    @cached_property
    def run_targets(self) -> np.ndarray:
        """The distinct targets, one per run."""
        return self.target[self.run_starts]

    @cached_property
    def adjoint_left(self) -> SparseBilinear:
        """The map ``(out_bar, b) -> a_bar``: ``a_bar[left[p]] += out_bar[target[p]] * b[right[p]]``."""
        return SparseBilinear.from_pairs(self.target, self.right, self.left, self.n_out)

    @cached_property
    def adjoint_right(self) -> SparseBilinear:
        """The map ``(out_bar, a) -> b_bar``: ``b_bar[right[p]] += out_bar[target[p]] * a[left[p]]``."""
        return SparseBilinear.from_pairs(self.target, self.left, self.right, self.n_out)


@dataclass(frozen=True, eq=False)
class MultiIndexTable:
    """All multi-indices of ``d`` variables up to degree ``order``, in graded order."""

    d: int
    order: int
    alphas: np.ndarray  # (n_coef, d) int
    position: dict  # alpha tuple -> row in ``alphas``

    @property
    def n_coef(self) -> int:
        return len(self.alphas)

    @cached_property
    def degrees(self) -> np.ndarray:
        """``|alpha|`` of every row."""
        return self.alphas.sum(axis=1)

    @cached_property
    def factorials(self) -> np.ndarray:
        """``alpha! = prod_i alpha_i!`` of every row, as float64 (Taylor coefficient -> derivative)."""
        return np.array([math.prod(math.factorial(a) for a in alpha) for alpha in self.alphas], dtype=np.float64)

    def degree_slice(self, k: int) -> slice:
        """Rows of the multi-indices of degree exactly ``k``."""
        return slice(n_coefficients(self.d, k - 1) if k > 0 else 0, n_coefficients(self.d, k))

    @cache  # noqa: B019 - the table itself is cached for the process lifetime
    def series_product(self, min_right_degree: int = 1) -> SparseBilinear:
        """Truncated product of two series without constant term.

        ``(u * v)[t] = sum_{l + r = t} u[l] v[r]`` over ``|l| >= 1``, ``|r| >= min_right_degree``,
        ``|t| <= order``. Restricting ``|r|`` skips products with coefficients known to be zero:
        the ``j``-th power of a series without constant term starts at degree ``j``.
        """
        left, right, target = [], [], []
        for t, alpha in enumerate(self.alphas):
            for r_alpha in _sub_indices(tuple(alpha)):
                l_alpha = tuple(a - b for a, b in zip(alpha, r_alpha))
                if sum(r_alpha) >= max(min_right_degree, 1) and sum(l_alpha) >= 1:
                    left.append(self.position[l_alpha])
                    right.append(self.position[r_alpha])
                    target.append(t)
        return SparseBilinear.from_pairs(left, right, target, self.n_coef)

    @cache  # noqa: B019
    def tensor_layout(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Where each entry of the symmetric order-``k`` tensor lives in the stack.

        Returns ``(rows, factors)``, both of shape ``(d,) * k``: the entry ``[i_1, ..., i_k]`` is
        ``factors[i] * coefs[rows[i]]``, where ``rows[i]`` is the multi-index counting the ``i_j``
        and ``factors[i]`` its ``alpha!`` (stored coefficients are Taylor coefficients).
        """
        rows = np.empty((self.d,) * k, dtype=np.intp)
        for idx in itertools.product(range(self.d), repeat=k):
            rows[idx] = self.position[tuple(np.bincount(np.array(idx, dtype=np.intp), minlength=self.d))]
        return rows, self.factorials[rows]


def _sub_indices(alpha: tuple[int, ...]):
    """All multi-indices ``beta <= alpha`` componentwise."""
    return itertools.product(*(range(a + 1) for a in alpha))


@cache
def multi_index_table(d: int, order: int) -> MultiIndexTable:
    """The cached :class:`MultiIndexTable` of ``d`` variables up to degree ``order``."""
    alphas = [alpha for k in range(order + 1) for alpha in _compositions(k, d)]
    array = np.array(alphas, dtype=np.intp).reshape(len(alphas), d)
    return MultiIndexTable(d, order, array, {alpha: i for i, alpha in enumerate(alphas)})
