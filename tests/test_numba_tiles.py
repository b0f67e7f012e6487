"""The register-tiled products of :mod:`nnderiv.backends.numba_tiles`.

Oracle: the product in float64 of float64 copies (``np.matmul``), bounded by the standard error
of a length-``k`` sum, ``k * eps * (|a| @ |W|)``; and where ``k`` is short, NumPy's own product
bit for bit is not asked (BLAS kernels differ by machine), only that bound. Shapes cover every
tail: rows past the last whole tile (0-5 of 6), column vectors past the last whole group of
``TILE_VECTORS``, and columns past the last whole vector.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnderiv as nd
from nnderiv.backends import numba_backend, numba_sweeps, numba_tiles
from nnderiv.backends import numpy_backend as reference

pytestmark = pytest.mark.skipif(numba_tiles.TILE_BITS == 0, reason="no AVX2/FMA or AVX-512 tiles on this CPU")

DTYPES = [np.float64, np.float32]


@pytest.fixture(autouse=True)
def tiles_on(monkeypatch):
    """The tiles taken where they fit, whatever ``NNDERIV_TILED_PRODUCTS`` says for this run."""
    monkeypatch.setattr(numba_tiles, "TILED_PRODUCTS", True)


def _bound(a, W):
    """``k * eps * (|a| @ |W|)``: what a sum of ``k`` rounded products may be off by."""
    eps = np.finfo(a.dtype).eps
    return a.shape[1] * eps * (np.abs(a).astype(np.float64) @ np.abs(W).astype(np.float64))


@settings(deadline=None)
@given(
    m=st.integers(0, 40),
    k=st.integers(1, 300),
    extra=st.integers(0, 70),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_tiled_product_is_the_product_to_rounding(m, k, extra, dtype, seed):
    n = numba_tiles.lanes(dtype) + extra  # at least one vector of columns
    rng = np.random.default_rng(seed)
    a, W = rng.normal(size=(m, k)).astype(dtype), rng.normal(size=(k, n)).astype(dtype)
    c = np.full((m, n), np.nan, dtype=dtype)  # every entry must be written
    numba_tiles.tiled_product(a, W, c)
    exact = a.astype(np.float64) @ W.astype(np.float64)
    assert (np.abs(c - exact) <= _bound(a, W)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_tail_of_rows_and_columns_is_computed(dtype):
    """Rows 1..13 (tiles of 6 and single rows), columns from one vector to past four, and one column more."""
    width, rng = numba_tiles.lanes(dtype), np.random.default_rng(0)
    for m in range(1, 14):
        for n in (width, 2 * width + 1, 4 * width, 5 * width - 1, 9 * width + 3):
            a, W = rng.normal(size=(m, 7)).astype(dtype), rng.normal(size=(7, n)).astype(dtype)
            c = np.full((m, n), np.nan, dtype=dtype)
            numba_tiles.tiled_product(a, W, c)
            assert (np.abs(c - a.astype(np.float64) @ W.astype(np.float64)) <= _bound(a, W)).all(), (m, n)


def test_each_entry_is_summed_in_order_by_multiply_adds():
    """``c_ij = fma(a_i,k-1, w_k-1,j, ... fma(a_i0, w_0j, 0))``, whatever tile computes it: here a
    sum whose order shows (the large terms cancel only if added first)."""
    big, n = 2.0**60, numba_tiles.lanes(np.float64) + 1  # a tile column and a tail column
    a = np.array([[big, -big, 1.0]] * 7)  # 7 rows: a tile of 6, then a single row
    W = np.ones((3, n))
    c = np.empty((7, n))
    numba_tiles.tiled_product(a, W, c)
    np.testing.assert_array_equal(c, 1.0)  # (big - big) + 1, not big + (-big + 1) = 0


def test_nan_and_inf_propagate_like_the_product():
    n = numba_tiles.lanes(np.float64) + 2
    a, W = np.ones((7, 3)), np.ones((3, n))
    a[0, 1], a[6, 2], W[1, n - 1] = np.nan, np.inf, -np.inf
    c = np.empty((7, n))
    numba_tiles.tiled_product(a, W, c)
    with np.errstate(invalid="ignore"):
        want = a @ W
    np.testing.assert_array_equal(np.isnan(c), np.isnan(want))
    np.testing.assert_array_equal(c[np.isfinite(want)], want[np.isfinite(want)])
    assert np.isinf(c[6, : n - 1]).all() and np.isnan(c[6, n - 1])  # -inf + inf in its last column


def test_which_products_fit(monkeypatch):
    width = numba_tiles.lanes(np.float64)
    assert numba_tiles.fits(64, 64, np.float64) and numba_tiles.fits(2, numba_tiles.lanes(np.float32), np.float32)
    assert not numba_tiles.fits(64, width - 1, np.float64)  # narrower than one vector: BLAS's
    assert not numba_tiles.fits(64, 64, np.int64) and not numba_tiles.fits(64, 64, np.complex128)
    assert not numba_tiles.fits(1024, 1024, np.float64)  # W over TILE_MAX_WEIGHT_BYTES
    monkeypatch.setattr(numba_tiles, "TILED_PRODUCTS", False)  # the A/B switch
    assert not numba_tiles.fits(64, 64, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_numba_backend_product_takes_the_tiles_and_agrees_with_the_reference(dtype, monkeypatch):
    rng = np.random.default_rng(1)
    stack, W = rng.normal(size=(5, 301, 64)).astype(dtype), rng.normal(size=(64, 64)).astype(dtype)
    calls, tiled = [], numba_tiles.tiled_product
    monkeypatch.setattr(numba_tiles, "tiled_product", lambda *args: (calls.append(1), tiled(*args)))
    got = numba_backend.affine(stack, W)
    transposed = numba_backend.affine(stack, np.asfortranarray(W).T.T)  # any layout of W
    assert len(calls) == 2
    want = reference.affine(stack.astype(np.float64), W.astype(np.float64))
    bound = 64 * np.finfo(dtype).eps * reference.affine(np.abs(stack).astype(np.float64), np.abs(W).astype(np.float64))
    assert (np.abs(got - want) <= bound).all()
    np.testing.assert_array_equal(transposed, got)


def test_the_compiled_sweeps_plan_tiles_for_the_products_that_fit():
    model = nd.MLP([2, 64, 64, 1], activation="tanh", seed=0)
    sweep = numba_sweeps.dense_sweep(model, np.dtype(np.float64))
    blocks = sweep._blocks(4096, 2048)
    assert blocks.shape == (2, 3) and (blocks[:, :2] == 0).all()  # (2, 64), (64, 64): tiles
    assert (blocks[:, 2] > 0).all()  # (64, 1): one column, BLAS's gemv
    back = sweep._blocks(4096, 2048, transposed=True)  # W^T: (64, 2), (64, 64), (1, 64)
    width = numba_tiles.lanes(np.float64)
    assert (back[:, 0] > 0).all() == (width > 2) and (back[:, 1:] == 0).all()


def _gradient_bound(a, b):
    """``(B + M / B + 1) eps |a|^T |b|``: a sum of ``M`` rounded products in blocks of ``B``."""
    m, eps = len(a), np.finfo(a.dtype).eps
    blocks = -(-m // numba_tiles.GRADIENT_BLOCK_ROWS)
    terms = min(m, numba_tiles.GRADIENT_BLOCK_ROWS) + blocks + 1
    return terms * eps * (np.abs(a).astype(np.float64).T @ np.abs(b).astype(np.float64))


@settings(deadline=None, max_examples=60)
@given(
    m=st.integers(1, 1400),
    n_in=st.integers(1, 20),
    vectors=st.integers(1, 6),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_tiled_weight_gradient_is_the_sum_over_points_to_rounding(m, n_in, vectors, dtype, seed):
    """Every tail: ``a``'s columns past the last tile of 4, vectors past the last group, points
    past the last block of ``GRADIENT_BLOCK_ROWS``; ``c`` overwritten."""
    rng = np.random.default_rng(seed)
    n = vectors * numba_tiles.lanes(dtype)
    a, b = rng.normal(size=(m, n_in)).astype(dtype), rng.normal(size=(m, n)).astype(dtype)
    c = np.full((n_in, n), np.nan, dtype=dtype)
    numba_tiles.tiled_weight_grad(a, b, c)
    exact = a.astype(np.longdouble).T @ b.astype(np.longdouble)
    assert (np.abs(c - exact) <= _gradient_bound(a, b)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_weight_gradient_is_summed_in_blocks_as_accurately_as_blas(dtype):
    """A sum over 40960 points (a chunk's stacked rows): within ``(B + M / B) eps`` of the exact
    sum, and, measured as a fraction of ``eps |a|^T |b|``, no worse than 2x NumPy's BLAS (one chain
    of multiply-adds down all the points, ``M eps``, is 10x worse here)."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40960, 64)).astype(dtype), rng.normal(size=(40960, 67)).astype(dtype)
    got = numba_tiles.weight_grad(a, b)
    exact = a.astype(np.longdouble).T @ b.astype(np.longdouble)
    scale = np.finfo(dtype).eps * (np.abs(a).astype(np.float64).T @ np.abs(b).astype(np.float64))
    assert (np.abs(got - exact) <= _gradient_bound(a, b)).all()
    assert np.max(np.abs(got - exact) / scale) <= 2 * max(np.max(np.abs(a.T @ b - exact) / scale), 0.25)


def test_nan_and_inf_propagate_through_the_weight_gradient():
    n = numba_tiles.lanes(np.float64) + 3  # the last columns BLAS's
    m = 8000  # enough multiply-adds for the tiles with 256- and 512-bit vectors alike
    a, b = np.ones((m, 41)), np.ones((m, n))  # 41: a last column past the tiles of 4
    a[5, 1], a[m - 1, 40], b[7, n - 1], b[300, 0] = np.nan, np.inf, -np.inf, -np.inf
    got = numba_tiles.weight_grad(a, b)
    assert got is not None, "too small for the tiles: this test would check BLAS's product"
    with np.errstate(invalid="ignore"):
        want = a.T @ b
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isfinite(want)], want[np.isfinite(want)])
    assert np.isnan(got[1]).all() and np.isinf(got[40, 1 : n - 1]).all()


def test_which_weight_gradients_take_the_tiles():
    a, b = np.ones((4096, 64)), np.ones((4096, 64))
    assert numba_tiles.weight_grad(a, b) is not None
    assert numba_tiles.weight_grad(a[:100, :5], b[:100, :9]) is None  # small: BLAS's
    assert numba_tiles.weight_grad(a, b[:, :1]) is None  # narrower than a vector


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_numba_backend_weight_gradient_takes_the_tiles_and_agrees_with_the_reference(dtype, monkeypatch):
    rng = np.random.default_rng(5)
    stack, z_bar = rng.normal(size=(6, 700, 64)).astype(dtype), rng.normal(size=(6, 700, 37)).astype(dtype)
    calls, tiled = [], numba_tiles.tiled_weight_grad
    monkeypatch.setattr(numba_tiles, "tiled_weight_grad", lambda *args: (calls.append(1), tiled(*args)))
    got = numba_backend.affine_weight_grad(stack, z_bar)
    assert len(calls) == 1 and got.shape == (64, 37) and got.dtype == dtype
    want = reference.affine_weight_grad(stack.astype(np.float64), z_bar.astype(np.float64))
    flat_a, flat_b = stack.reshape(-1, 64), z_bar.reshape(-1, 37)
    assert (np.abs(got - want) <= _gradient_bound(flat_a, flat_b) + np.finfo(dtype).eps * np.abs(want)).all()
    strided = numba_backend.affine_weight_grad(stack[:, ::2], z_bar[:, ::2])  # not contiguous: BLAS's
    assert len(calls) == 1
    np.testing.assert_allclose(strided, reference.affine_weight_grad(stack[:, ::2], z_bar[:, ::2]), rtol=1e-4)


@pytest.mark.parametrize("tiles", [True, False])
def test_derivatives_agree_with_and_without_tiles(tiles, monkeypatch):
    """The switch changes the products' rounding only: every derivative to a few ulps of the reference."""
    monkeypatch.setattr(numba_tiles, "TILED_PRODUCTS", tiles)
    model = nd.MLP([3, 64, 64, 1], activation="tanh", seed=2)
    x = np.random.default_rng(3).uniform(-1, 1, (500, 3))
    with nd.use_backend("numpy"):
        want = nd.derivatives(model, x, order=3).coefficients
    with nd.use_backend("numba"):
        got = nd.derivatives(model, x, order=3).coefficients
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13 * np.abs(want).max())


def test_the_avx2_tiles_are_the_product_too(tmp_path):
    """The 256-bit layout (6 rows x 2 vectors), what a CPU with AVX2 and FMA but no AVX-512 runs,
    checked here by setting the width before anything compiles: in a child process with its own
    Numba cache (compiled code keeps the width it was compiled with)."""
    import subprocess
    import sys

    code = """
import numpy as np
from llvmlite import binding
features = binding.get_host_cpu_features()
if not (features.get("avx2") and features.get("fma")):
    print("skip"); raise SystemExit
from nnderiv.backends import numba_tiles as t
t.TILE_BITS, t.TILE_VECTORS = 256, 2  # read when the tiles compile, here for the first time
rng = np.random.default_rng(0)
for dtype in (np.float64, np.float32):
    for m, k, n in [(13, 5, 4), (6, 64, 64), (7, 2, 9), (20, 300, 37)]:
        a, W = rng.normal(size=(m, k)).astype(dtype), rng.normal(size=(k, n)).astype(dtype)
        c = np.full((m, n), np.nan, dtype)
        t.tiled_product(a, W, c)
        bound = k * np.finfo(dtype).eps * (np.abs(a).astype(float) @ np.abs(W).astype(float))
        assert (np.abs(c - a.astype(float) @ W.astype(float)) <= bound).all(), (dtype, m, k, n)
    for m, n_in, n in [(3000, 6, 64), (5000, 9, 37), (1100, 63, 20)]:  # each over GRADIENT_MIN_MULADDS
        a, b = rng.normal(size=(m, n_in)).astype(dtype), rng.normal(size=(m, n)).astype(dtype)
        c = t.weight_grad(a, b)
        bound = (300 + m / 256) * np.finfo(dtype).eps * (np.abs(a).astype(float).T @ np.abs(b).astype(float))
        assert (np.abs(c - a.astype(float).T @ b.astype(float)) <= bound).all(), (dtype, m, n_in, n)
print("ok")
"""
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    if child.stdout.strip() == "skip":
        pytest.skip("no AVX2 and FMA on this CPU")
    assert child.stdout.strip() == "ok"
