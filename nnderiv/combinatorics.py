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
    def runs(self) -> np.ndarray:
        """The pairs as maximal runs ``(left0, right0, target0, length)`` in which all three rows
        advance by one together: ``out[t0 : t0 + n] += a[l0 : l0 + n] * b[r0 : r0 + n]``.

        Taylor-mode tables have one run per pair of orders, as long as the number of directions,
        so a product is a few contiguous slice operations instead of a gather.
        """
        if self.target.size == 0:
            return np.zeros((0, 4), dtype=np.intp)
        order = np.lexsort((self.target, self.right - self.target, self.left - self.target))
        left, right, target = self.left[order], self.right[order], self.target[order]
        breaks = (np.diff(left) != 1) | (np.diff(right) != 1) | (np.diff(target) != 1)
        starts = np.flatnonzero(np.r_[True, breaks])
        lengths = np.diff(np.r_[starts, len(target)])
        return np.stack([left[starts], right[starts], target[starts], lengths], axis=1)

    @cached_property
    def adjoint_left(self) -> SparseBilinear:
        """The map ``(out_bar, b) -> a_bar``: ``a_bar[left[p]] += out_bar[target[p]] * b[right[p]]``."""
        return SparseBilinear.from_pairs(self.target, self.right, self.left, self.n_out)

    @cached_property
    def adjoint_right(self) -> SparseBilinear:
        """The map ``(out_bar, a) -> b_bar``: ``b_bar[right[p]] += out_bar[target[p]] * a[left[p]]``."""
        return SparseBilinear.from_pairs(self.target, self.left, self.right, self.n_out)


class SeriesTable:
    """A truncated series algebra: which rows a stack has, and which rows multiply into which.

    Rows are sorted by degree (row 0 is the constant term, the value). ``pairs`` lists every
    product of two rows of degree >= 1 that lands inside the truncation: ``(left, right, target)``.
    The modes differ only by their table (:mod:`nnderiv.modes.series`).
    """

    def __init__(self, degrees, pairs, description: str = "truncated series", n_directions: int | None = None):
        self.description = description  # for nnderiv.explain
        #: Taylor mode's count of directions (:func:`directional_table`), ``None`` for other tables
        self.n_directions = n_directions
        self.degrees = np.asarray(degrees, dtype=np.intp)
        self.order = int(self.degrees[-1])
        self._pairs = np.asarray(pairs, dtype=np.intp).reshape(-1, 3)
        self._starts = np.searchsorted(self.degrees, np.arange(self.order + 2))

    @property
    def n_coef(self) -> int:
        return len(self.degrees)

    def degree_slice(self, k: int) -> slice:
        """Rows of degree exactly ``k``."""
        return slice(int(self._starts[k]), int(self._starts[k + 1]))

    @cache  # noqa: B019 - tables are cached for the process lifetime
    def series_product(self, min_right_degree: int = 1) -> SparseBilinear:
        """Truncated product of two series without constant term, ``(u * v)[t] = sum u[l] v[r]``.

        Only pairs with ``degree(r) >= min_right_degree`` are kept: the ``j``-th power of a series
        without constant term starts at degree ``j``, so the other products are known zeros.
        """
        left, right, target = self._pairs.T
        keep = self.degrees[right] >= max(min_right_degree, 1)
        return SparseBilinear.from_pairs(left[keep], right[keep], target[keep], self.n_coef)


class MultiIndexTable(SeriesTable):
    """All multi-indices of ``d`` variables up to degree ``order``, in graded order (full mode)."""

    def __init__(self, d: int, order: int):
        self.d = d
        self.alphas = np.array(
            [alpha for k in range(order + 1) for alpha in _compositions(k, d)], dtype=np.intp
        ).reshape(-1, d)
        self.position = {tuple(int(a) for a in alpha): i for i, alpha in enumerate(self.alphas)}
        description = f"full mode, every partial to order {order}"
        super().__init__(self.alphas.sum(axis=1), list(self._product_pairs()), description)

    def _product_pairs(self):
        for t, alpha in enumerate(self.alphas):
            for r_alpha in _sub_indices(tuple(alpha)):
                l_alpha = tuple(int(a - b) for a, b in zip(alpha, r_alpha))
                if sum(r_alpha) >= 1 and sum(l_alpha) >= 1:
                    yield self.position[l_alpha], self.position[r_alpha], t

    @cached_property
    def factorials(self) -> np.ndarray:
        """``alpha! = prod_i alpha_i!`` of every row, as float64 (Taylor coefficient -> derivative)."""
        return np.array([math.prod(math.factorial(a) for a in alpha) for alpha in self.alphas], dtype=np.float64)

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
    return MultiIndexTable(d, order)


@cache
def directional_table(n_dir: int, order: int) -> SeriesTable:
    """Univariate series along ``n_dir`` directions, orders ``0..order`` (Taylor mode).

    Row 0 is the value, shared by every direction; the coefficient of order ``k >= 1`` along
    direction ``r`` is row ``1 + (k - 1) n_dir + r``. Only coefficients of one direction multiply.
    """

    def row(k, r):
        return 1 + (k - 1) * n_dir + r

    degrees = [0] + [k for k in range(1, order + 1) for _ in range(n_dir)]
    pairs = [
        (row(k1, r), row(k2, r), row(k1 + k2, r))
        for r in range(n_dir)
        for k1 in range(1, order)
        for k2 in range(1, order - k1 + 1)
    ]
    return SeriesTable(degrees, pairs, f"Taylor mode, {order} coefficients along {n_dir} directions", n_dir)


@cache
def collapsed_second_order_table(n_dir: int, n_negative: int = 0) -> SeriesTable:
    """Value, first order along ``n_dir`` directions, and the SUMMED second-order coefficients.

    Rows: 0 the value; ``1 .. n_dir`` first order along each direction; ``n_dir + 1`` the sum of
    the second-order coefficients along the first ``n_dir - n_negative`` directions; if
    ``n_negative``, row ``n_dir + 2`` the sum along the last ``n_negative`` ones. Summing is exact:
    the second-order coefficient of a product of series without constant term along direction
    ``r`` is ``u_r v_r``, which needs first-order rows only (collapsed / forward Laplacian mode).
    """
    n_positive = n_dir - n_negative
    degrees = [0] + [1] * n_dir + [2] * (1 + (n_negative > 0))
    pairs = [(1 + r, 1 + r, n_dir + 1 + (r >= n_positive)) for r in range(n_dir)]
    return SeriesTable(degrees, pairs, f"collapsed second order (forward Laplacian), {n_dir} directions")


@cache
def hessian_vector_table(d: int) -> SeriesTable:
    """Series in ``t_1..t_d`` and ``s`` (displacements along ``e_i`` and ``v``), truncated to
    ``1, t_i, s, t_i s``: rows 0 the value, ``1 .. d`` the gradient, ``d + 1`` the directional
    derivative along ``v``, ``d + 2 + i`` the coefficient of ``t_i s``, i.e. ``(H v)_i``.
    """
    degrees = [0] + [1] * (d + 1) + [2] * d
    pairs = [pair for i in range(d) for pair in ((1 + i, d + 1, d + 2 + i), (d + 1, 1 + i, d + 2 + i))]
    return SeriesTable(degrees, pairs, "Hessian-vector series: 1, t_i, s, t_i s")
