"""Multi-index tables: counts, graded order, series products against brute-force polynomial products."""

import itertools
import math

import numpy as np
import pytest

from nnderiv import kernels
from nnderiv.combinatorics import multi_index_table, n_coefficients


@pytest.mark.parametrize(("d", "order"), [(1, 0), (1, 5), (2, 3), (3, 4), (5, 2)])
def test_table_counts_and_graded_order(d, order):
    table = multi_index_table(d, order)
    assert table.n_coef == n_coefficients(d, order) == math.comb(d + order, order)
    assert (np.diff(table.degrees) >= 0).all()  # graded
    assert len({tuple(a) for a in table.alphas}) == table.n_coef  # each multi-index once
    for k in range(order + 1):
        assert (table.degrees[table.degree_slice(k)] == k).all()
    assert tuple(table.alphas[0]) == (0,) * d
    if order >= 1:
        np.testing.assert_array_equal(table.alphas[1 : 1 + d], np.eye(d, dtype=int))


def test_two_variable_layout_is_documented_one():
    assert [tuple(a) for a in multi_index_table(2, 2).alphas] == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]


def _brute_product(u, v, table):
    """Multiply two truncated polynomials given as {alpha: coef}, dropping constant terms."""
    out = np.zeros(table.n_coef)
    for (i, a), (j, b) in itertools.product(enumerate(table.alphas), repeat=2):
        if a.sum() and b.sum() and (a + b).sum() <= table.order:
            out[table.position[tuple(a + b)]] += u[i] * v[j]
    return out


@pytest.mark.parametrize(("d", "order"), [(1, 4), (2, 3), (3, 3)])
def test_series_product_matches_brute_force(d, order):
    table = multi_index_table(d, order)
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(2, table.n_coef))
    got = kernels.bilinear(u[:, None, None], v[:, None, None], table.series_product(1))[:, 0, 0]
    np.testing.assert_allclose(got, _brute_product(u, v, table), rtol=1e-14, atol=1e-14)


def test_series_product_adjoints_are_transposes():
    table = multi_index_table(2, 3)
    product = table.series_product(1)
    rng = np.random.default_rng(1)
    u, v, w = (rng.normal(size=(table.n_coef, 1, 1)) for _ in range(3))
    forward = float(np.sum(w * kernels.bilinear(u, v, product)))
    # <w, u*v> == <adjoint_left(w, v), u> == <adjoint_right(w, u), v>
    assert np.isclose(forward, float(np.sum(u * kernels.bilinear(w, v, product.adjoint_left))), rtol=1e-13)
    assert np.isclose(forward, float(np.sum(v * kernels.bilinear(w, u, product.adjoint_right))), rtol=1e-13)


def test_tensor_layout_maps_permutations_to_one_row():
    table = multi_index_table(3, 3)
    rows, factors = table.tensor_layout(3)
    assert rows[0, 1, 2] == rows[2, 0, 1] == rows[1, 2, 0]
    assert factors[0, 0, 1] == 2.0 and factors[1, 1, 1] == 6.0 and factors[0, 1, 2] == 1.0
