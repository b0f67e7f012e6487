"""Backends against the NumPy reference, and the backend-selection API.

Oracle: the ``numpy`` backend (:mod:`nnderiv.backends.numpy_backend`). Every public derivative
function and its pullback must agree between ``numba`` and ``numpy`` on random networks, with and
without chunks; every kernel must agree on random stacks of every kind of table. The ``cupy``
backend is compared kernel by kernel, and skipped when CuPy is not installed or finds no CUDA device.

Tolerances, relative to the largest entry of the reference array: the Numba kernels add the same
products in the same order as the reference with exact IEEE arithmetic (``fastmath=False``), so
they agree to rounding (measured: bit for bit), except for the Taylor coefficients of tanh and
sigmoid, which Numba computes with its own vectorized formulas (within a few ulp:
``tests/test_numba_activations.py``); we allow 1e-12 in float64 and 1e-4 in float32 (those
coefficients are computed in float64 and rounded once, the reference's in float32 arithmetic:
the difference is the reference's own float32 error, which a pullback's sums can amplify tenfold).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from backend_checks import (
    assert_close,
    assert_public_calls_match,
    cotangent_for,
    gradient_scale,
    host,
    public_calls,
    run_on,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import SMOOTH, build_model, networks, random_spec

import nnderiv as nd
from nnderiv import backends
from nnderiv.activations import ACTIVATIONS
from nnderiv.backends import numpy_backend as reference
from nnderiv.combinatorics import (
    collapsed_second_order_table,
    directional_table,
    hessian_vector_table,
    multi_index_table,
)
from nnderiv.kernels import taylor_coefficients


@pytest.fixture(params=["numba", "cupy"])
def backend(request) -> str:
    """A backend other than the reference; cupy is skipped where it cannot run."""
    try:
        backends.load(request.param)
    except nd.BackendError as exc:
        pytest.skip(f"{request.param} backend unavailable: {exc}")
    return request.param


# --------------------------------------------------------------------------------------------
# selecting a backend


def test_default_backend_is_numba():
    assert backends._default_name() == "numba"


def test_set_get_and_use_backend_restore_the_previous_one():
    previous = nd.get_backend()
    try:
        nd.set_backend("NumPy ")  # case and spaces do not matter
        assert nd.get_backend() == "numpy"
        with nd.use_backend("numba"):
            assert nd.get_backend() == "numba"
            assert backends.active().__name__.endswith("numba_backend")
        assert nd.get_backend() == "numpy"
        with pytest.raises(ZeroDivisionError), nd.use_backend("numba"):
            1 / 0
        assert nd.get_backend() == "numpy"  # restored on an exception too
    finally:
        nd.set_backend(previous)


@pytest.mark.parametrize("name", ["torch", "", None, 3])
def test_unknown_backend_names_the_known_ones(name):
    previous = nd.get_backend()
    with pytest.raises(nd.BackendError, match="known backends: numpy, numba, cupy"):
        nd.set_backend(name)
    assert nd.get_backend() == previous


def test_cupy_missing_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    previous = nd.get_backend()
    with pytest.raises(nd.BackendError, match=r"pip install 'nnderiv\[gpu\]'"):
        nd.set_backend("cupy")
    with pytest.raises(nd.BackendError, match="not installed"), nd.use_backend("cupy"):
        pass  # pragma: no cover - never entered
    assert nd.get_backend() == previous


def test_cupy_without_a_device_says_so(monkeypatch):
    class Runtime:
        @staticmethod
        def getDeviceCount():  # noqa: N802 - CuPy's name
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = type(sys)("cupy")
    fake.cuda = type(sys)("cupy.cuda")
    fake.cuda.runtime = Runtime
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(nd.BackendError, match="no CUDA device"):
        nd.set_backend("cupy")


def test_telling_a_device_array_never_imports_cupy():
    was_imported = "cupy" in sys.modules
    assert not backends.is_device_array(np.zeros(3))
    assert backends.is_device_array(type("ndarray", (), {"__module__": "cupy._core.core"})())
    assert ("cupy" in sys.modules) == was_imported


# --------------------------------------------------------------------------------------------
# model.to and mismatched placement


def test_model_to_host_backends_keeps_numpy_arrays():
    inner = nd.MLP([3, 4, 4], seed=0)
    model = nd.Sequential(inner, nd.Tanh(), nd.Dense(4, 2, seed=1))
    before = {name: value.copy() for name, value in model.params.items()}
    for name in ("numpy", "numba"):
        assert model.to(name) is model
    for name, value in model.params.items():
        assert type(value) is np.ndarray
        np.testing.assert_array_equal(value, before[name])
    with pytest.raises(nd.BackendError, match="unknown backend"):
        model.to("gpu")


def test_parameters_on_the_wrong_device_name_both_fixes():
    class DeviceArray:  # stands in for a CuPy array: only its type's module is looked at
        __module__ = "cupy._core.core"

    model = nd.MLP([2, 4, 1], seed=0)
    model.layers[0].params["W"] = DeviceArray()
    with nd.use_backend("numba"), pytest.raises(nd.BackendError, match=r"set_backend\('cupy'\).*model.to\('numpy'\)"):
        nd.laplacian(model, np.zeros((3, 2)))


def test_model_to_cupy_moves_every_parameter(backend):
    if backend != "cupy":
        pytest.skip("only the cupy backend moves arrays")
    model = nd.MLP([2, 4, 1], seed=0)
    host_params = {name: value.copy() for name, value in model.params.items()}
    model.to("cupy")
    assert all(backends.is_device_array(value) for value in model.params.values())
    for name, value in model.to("numpy").params.items():
        np.testing.assert_array_equal(value, host_params[name])


# --------------------------------------------------------------------------------------------
# kernels, on random stacks of every kind of table

TABLES = {
    "full d=3 K=3": multi_index_table(3, 3),
    "full d=2 K=4": multi_index_table(2, 4),
    "full d=1 K=1": multi_index_table(1, 1),
    "full d=2 K=0": multi_index_table(2, 0),
    "directional n=3 K=4": directional_table(3, 4),
    "collapsed n=3, 1 negative": collapsed_second_order_table(3, 1),
    "hessian-vector d=3": hessian_vector_table(3),
}


@pytest.fixture(params=["serial", "parallel", "straight-line"])
def numba_path(request, monkeypatch):
    """Numba's generic kernels run small stacks on the calling thread, large ones on the thread
    pool; large stacks of small tables run straight-line kernels instead: force each."""
    from nnderiv.backends import numba_backend

    monkeypatch.setattr(numba_backend, "PARALLEL_MIN_ELEMENTS", 2**62 if request.param == "serial" else 0)
    monkeypatch.setattr(numba_backend, "STRAIGHT_LINE_MIN_ELEMENTS", 0 if request.param == "straight-line" else 2**62)
    return request.param


def recomputes_powers(backend: str, numba_path: str, table, order: int, dtype) -> bool:
    """Whether the composition keeps no powers for its pullback, which recomputes them: numba's
    straight-line kernels, and the cupy backend's fused kernels (:func:`cupy_backend._fused`)."""
    if backend == "cupy":
        from nnderiv.backends import cupy_backend

        return cupy_backend._fused(np.empty(0, dtype), table, order)
    return numba_path == "straight-line"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("table_name", sorted(TABLES))
def test_kernels_match_the_reference(backend, numba_path, table_name, dtype, rng):
    if backend != "numba" and numba_path != "serial":
        pytest.skip("one path only")
    table, module = TABLES[table_name], backends.load(backend)
    K, shape = table.order, (table.n_coef, 301, 7)  # several blocks of columns, the last one shorter
    stack = rng.normal(size=shape).astype(dtype)
    out_bar = rng.normal(size=shape).astype(dtype)
    a = taylor_coefficients(nd.get_activation("tanh"), stack[0], K + 1)
    out, powers = reference.compose_saving(stack, a, table, K)
    want_bar = reference.compose_vjp(out_bar, stack, powers, a, table, K)
    dev = module.asarray
    got_out, got_powers = module.compose_saving(dev(stack), dev(a), table, K)
    assert_close(module.compose(dev(stack), dev(a[: K + 1]), table, K), out, "compose")
    assert_close(got_out, out, "compose_saving")
    if K >= 1 and recomputes_powers(backend, numba_path, table, K, dtype):  # the pullback recomputes them
        assert len(got_powers) == 0
    else:
        assert_close(got_powers, powers, "powers")
    assert_close(module.compose_vjp(dev(out_bar), dev(stack), got_powers, dev(a), table, K), want_bar, "compose_vjp")
    for j in range(2, K + 1):
        for name in ("series_product", "adjoint_left", "adjoint_right"):
            product = table.series_product(j - 1)
            product = product if name == "series_product" else getattr(product, name)
            want = reference.bilinear(stack, out_bar, product)
            assert_close(module.bilinear(dev(stack), dev(out_bar), product), want, f"bilinear {name} {j}")
    tangents = 1 if K == 0 else min(table.n_coef, 4)  # a reverse sweep's h_bar and its tangents
    adjoint = rng.normal(size=(tangents, 2, *shape[1:])).astype(dtype)
    want = reference.activation_adjoint(adjoint, a, stack)
    assert_close(module.activation_adjoint(dev(adjoint), dev(a), dev(stack)), want, "activation_adjoint")
    W = rng.normal(size=(7, 3)).astype(dtype)
    assert_close(module.affine(dev(stack), dev(W)), reference.affine(stack, W), "affine")
    b, z = rng.normal(size=7).astype(dtype), dev(stack[0].copy())
    assert module.add_bias(z, dev(b)) is z  # in place, one addition per entry: exactly the reference's
    np.testing.assert_array_equal(host(z), reference.add_bias(stack[0].copy(), b))
    with pytest.raises(ValueError):  # a bias of the wrong width is never read past its end
        module.add_bias(z, dev(b[:3]))
    assert_close(
        module.affine_weight_grad(dev(stack), dev(out_bar)), reference.affine_weight_grad(stack, out_bar), "W_bar"
    )


@pytest.mark.parametrize("transposed", [False, True])
def test_numba_runs_a_stacked_product_as_blocks_of_rows_where_blas_is_faster_so(transposed, monkeypatch, rng):
    """Where OpenBLAS's small-matrix kernels apply, the numba backend hands BLAS a batch of blocks
    of rows (the remainder in one more call); the product is the reference's to rounding (measured:
    bit for bit), and a pullback's ``W.T`` gets the same path: where the register tiles do not
    take the product (``tests/test_numba_tiles.py``)."""
    from nnderiv.backends import numba_backend, numba_tiles

    monkeypatch.setattr(numba_tiles, "TILED_PRODUCTS", False)
    monkeypatch.setattr(numba_backend, "_blas_has_small_kernels", lambda: True)
    calls, matmul = [], np.matmul
    monkeypatch.setattr(np, "matmul", lambda a, b, **kw: calls.append(a.shape) or matmul(a, b, **kw))
    stack, W = rng.normal(size=(3, 1001, 64)), rng.normal(size=(64, 64))
    W = W.T if transposed else W
    got = numba_backend.affine(stack, W)
    assert calls == [(12, 240, 64), (123, 64)]  # 3003 rows: 12 blocks of 240, then 123
    assert_close(got, reference.affine(stack, W), "blocked product")
    few = np.ascontiguousarray(stack[:, :150])
    want, whole, one_call = reference.affine(few, W), [], reference.affine
    monkeypatch.setattr(reference, "affine", lambda a, b: whole.append(a.shape) or one_call(a, b))
    calls.clear()
    assert_close(numba_backend.affine(few, W), want, "few rows")
    assert calls == [] and whole == [(3, 150, 64)]  # under two blocks: the reference's one call
    monkeypatch.setattr(numba_backend, "SMALL_GEMM_MULADDS", 0)  # the switch: always one call
    numba_backend.affine(stack, W)
    assert calls == [] and whole == [(3, 150, 64), (3, 1001, 64)]


def test_numba_fills_values_and_slopes_and_adds_biases_in_its_own_kernels(monkeypatch, rng):
    """Values (order 0) and a reverse sweep's ``g, g'`` (order 1) of tanh and sigmoid go straight
    into their rows by ``fill_low``, not by NumPy's ufuncs; the bias by the compiled pass."""
    from nnderiv.backends import numba_backend

    calls = []
    for name in ("_fill_low_share", "_add_bias_share"):
        kernel = getattr(numba_backend, name)
        monkeypatch.setattr(numba_backend, name, lambda *args, k=kernel, n=name: calls.append(n) or k(*args))
    table, stack = multi_index_table(2, 0), rng.normal(size=(1, 50, 8))
    for name in ("tanh", "sigmoid"):
        activation = nd.get_activation(name)
        want = reference.activate(stack, activation, table, 0)
        assert_close(numba_backend.activate(stack, activation, table, 0), want, name)
        out, a, _ = numba_backend.activate_saving(stack, activation, table, 0)
        assert_close(out, want, f"{name} kept for a pullback")
        assert_close(a, reference.taylor_coefficients(activation, stack[0], 1), f"{name} g, g'")
    numba_backend.add_bias(stack[0], rng.normal(size=8))
    assert calls == ["_fill_low_share"] * 4 + ["_add_bias_share"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numba_products_of_one_input_are_outer_products_in_its_own_kernel(dtype, monkeypatch, rng):
    """One input (a network of ``d = 1``, an output's adjoint going back): ``stack * W[0]``, bit for
    bit, in the compiled pass."""
    from nnderiv.backends import numba_backend

    calls, kernel = [], numba_backend._outer_share
    monkeypatch.setattr(numba_backend, "_outer_share", lambda *args: calls.append(1) or kernel(*args))
    stack, W = rng.normal(size=(3, 333, 1)).astype(dtype), rng.normal(size=(5, 1)).T.astype(dtype)
    got = numba_backend.affine(stack, W)
    assert got.shape == (3, 333, 5) and got.dtype == dtype and calls == [1]
    assert np.array_equal(got, stack * W[0])


def test_numba_hands_blas_a_pullbacks_transposed_weights_contiguous(monkeypatch, rng):
    """``W.T`` of a narrow pullback product reaches BLAS as a C-contiguous copy (its NN kernel, 3x
    faster than the transposed one there); the product is the reference's to rounding."""
    from nnderiv.backends import numba_backend

    seen, one_call = [], reference.affine
    monkeypatch.setattr(reference, "affine", lambda a, b: seen.append(b.flags.c_contiguous) or one_call(a, b))
    monkeypatch.setattr(numba_backend, "SMALL_GEMM_MULADDS", 0)  # one BLAS call
    stack, W = rng.normal(size=(2, 300, 64)), rng.normal(size=(2, 64))
    got = numba_backend.affine(stack, W.T)
    assert seen == [True] and not W.T.flags.c_contiguous
    assert_close(got, one_call(stack, W.T), "transposed product")


@settings(deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 700), st.integers(1, 80), st.integers(1, 80)),
    transposed=st.booleans(),
    muladds=st.sampled_from([2**10, 2**14, 10**6]),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_blocked_products_of_any_shape_match_the_reference(shape, transposed, muladds, dtype, seed):
    """Any stack and weight shape, blocks forced on and made small: the blocks, the remainder and
    the fallbacks (one input, under two blocks) give the reference's product to rounding."""
    from nnderiv.backends import numba_backend

    rows, n, n_in, n_out = shape
    rng = np.random.default_rng(seed)
    stack = rng.normal(size=(rows, n, n_in)).astype(dtype)
    W = (rng.normal(size=(n_out, n_in)).T if transposed else rng.normal(size=(n_in, n_out))).astype(dtype)
    names = ("_blas_has_small_kernels", "SMALL_GEMM_MULADDS", "SMALL_GEMM_MIN_ROWS")
    saved = {name: getattr(numba_backend, name) for name in names}
    for name, value in zip(names, ((lambda: True), muladds, 16)):
        setattr(numba_backend, name, value)
    try:
        got = numba_backend.affine(stack, W)
    finally:
        for name, value in saved.items():
            setattr(numba_backend, name, value)
    assert_close(got, reference.affine(stack, W), f"product {shape}")


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_match_the_reference(backend, name, rng):
    module, activation = backends.load(backend), ACTIVATIONS[name]
    z = rng.normal(scale=3.0, size=(4, 6))
    want = reference.activation_derivatives(activation, z, 5)
    assert_close(module.activation_derivatives(activation, module.asarray(z), 5), want, name)
    for dtype in (np.float64, np.float32):  # numba: its own vectorized tanh and sigmoid
        z_t = z.astype(dtype)
        want = reference.taylor_coefficients(activation, z_t, 6)
        assert_close(module.taylor_coefficients(activation, module.asarray(z_t), 6), want, f"{name} coefficients")


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "silu", "softplus", "sin", "cos"])
@pytest.mark.parametrize("order", [0, 1, 2, 4])
def test_fused_activation_steps_match_the_reference(backend, numba_path, name, order, rng):
    """The activation step with its coefficients computed inside the kernel (numba: tanh, sigmoid)."""
    if backend != "numba" and numba_path != "serial":
        pytest.skip("one path only")
    module, activation, table = backends.load(backend), ACTIVATIONS[name], multi_index_table(2, order)
    stack = rng.normal(scale=2.0, size=(table.n_coef, 301, 7))
    stack[0, 0, :3] = [np.nan, np.inf, -np.inf]
    with np.errstate(invalid="ignore"):  # silu(-inf) = -inf * 0: NaN in both
        want = reference.activate(stack, activation, table, order)
    got = host(module.activate(module.asarray(stack), activation, table, order))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite], f"{name} order {order}")
    out, a, powers = module.activate_saving(module.asarray(stack), activation, table, order)
    with np.errstate(invalid="ignore"):
        want_out, want_a, want_powers = reference.activate_saving(stack, activation, table, order)
    parts = [(out, want_out, "out"), (a, want_a, "a"), (powers, want_powers, "powers")]
    if order >= 1 and recomputes_powers(backend, numba_path, table, order, stack.dtype):
        assert len(powers) == 0
        parts.pop()
    for got_part, want_part, label in parts:
        finite = np.isfinite(want_part)
        assert_close(host(got_part)[finite], want_part[finite], label)


# --------------------------------------------------------------------------------------------
# every public function and its pullback: numba against numpy


@settings(max_examples=max(6, settings.default.max_examples // 4))  # every public call per example: 6 in ci
@given(
    spec=networks(max_depth=3, max_d=3, max_m=3, max_width=5, activations=SMOOTH),
    dtype=st.sampled_from(["float64", "float32"]),
    chunk_size=st.sampled_from([None, 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_public_functions_and_pullbacks_match_numpy(spec, dtype, chunk_size, seed):
    """Numba against the NumPy reference; in float32 both are also measured against the same
    network evaluated in float64, and Numba passes if it is as accurate as the reference."""
    rng = np.random.default_rng(seed)
    model = build_model(spec, dtype)
    x = rng.uniform(-1, 1, (7, model.n_inputs)).astype(dtype)
    exact_model = build_model(spec, "float64")
    exact_model.set_params({name: p.astype(np.float64) for name, p in model.params.items()})
    for label, fn, kwargs in public_calls(model, x, rng):
        with nd.use_backend("numpy"):
            cotangent = cotangent_for(fn(model, x, **kwargs), rng)
        want = run_on("numpy", fn, model, x, kwargs, chunk_size, cotangent)
        got = run_on("numba", fn, model, x, kwargs, chunk_size, cotangent)
        exact = None
        if dtype == "float32":
            exact = run_on("numpy", fn, exact_model, x.astype(np.float64), kwargs, chunk_size, cotangent)
        assert list(got[1]) == list(want[1])
        pairs = [(label, got[0], want[0]), (f"{label}: x cotangent", got[2], want[2])]
        pairs += [(f"{label}: gradient of {name}", got[1][name], want[1][name]) for name in want[1]]
        exacts = [None, None] + [None] * len(want[1])
        if exact is not None:
            exacts = [exact[0], exact[2]] + [exact[1][name] for name in want[1]]
        scales = [None, None] + [gradient_scale(want[1])] * len(want[1])
        for (what, g, w), e, scale in zip(pairs, exacts, scales):
            assert_close(g, w, what, exact=e, scale=scale)


def test_a_pullback_may_run_on_another_cpu_backend_than_its_forward_sweep(rng):
    """Both CPU backends save the same things (the Taylor coefficients, the input stack, the powers)."""
    model = build_model(random_spec(rng, [2, 6, 6, 1], ["tanh", "sin"]))
    x, cotangent = rng.uniform(-1, 1, (9, 2)), rng.normal(size=(9, 1, 2, 4))
    results = {}
    for forward_backend, pullback_backend in [("numpy", "numpy"), ("numba", "numpy"), ("numpy", "numba")]:
        with nd.use_backend(forward_backend):
            _, pullback = nd.vjp(nd.pure_derivatives, model, x, order=3)
        with nd.use_backend(pullback_backend):
            results[forward_backend, pullback_backend] = pullback(cotangent)
    want = results["numpy", "numpy"]
    for grads in results.values():
        for name in want:
            assert_close(grads[name], want[name], name)


def test_divergence_and_wide_networks_match_numpy(numba_path, rng):
    """A square field (divergence) and a wider network than Hypothesis draws, in chunks; the Numba
    kernels on the calling thread and on the thread pool."""
    spec = random_spec(rng, [3, 16, 16, 3], ["tanh", "gelu"])
    model = build_model(spec)
    assert_public_calls_match(model, rng.uniform(-1, 1, (50, 3)), "numba", chunk_size=16, rng=rng)


@pytest.mark.parametrize("activation", ["tanh", "sin"])
def test_taylor_mode_in_many_directions_matches_numpy(activation, monkeypatch, rng):
    """Pure derivatives along 20 inputs (61 rows) and Taylor coefficients along 40 directions (121
    rows: beyond the straight-line kernels): the numba backend runs them one direction at a time
    (tanh: its fused step, sin: given coefficients), forward, the sweep kept for the pullback and the
    pullback, as the numpy backend."""
    from nnderiv.backends import numba_codegen

    calls = []
    for name in ("tanh_taylor_forward", "taylor_forward", "taylor_backward"):
        real = getattr(numba_codegen, name)
        monkeypatch.setattr(numba_codegen, name, lambda *args, real=real: calls.append(1) or real(*args))
    model = nd.MLP([20, 16, 16, 2], activation=activation, seed=3)
    x = rng.uniform(-1, 1, (120, 20))
    for fn, kwargs in [
        (nd.pure_derivatives, {"order": 3}),
        (nd.taylor, {"directions": rng.normal(size=(40, 20)), "order": 3}),
    ]:
        with nd.use_backend("numpy"):
            cotangent = cotangent_for(fn(model, x, **kwargs), rng)
        want = run_on("numpy", fn, model, x, kwargs, None, cotangent)
        calls.clear()
        got = run_on("numba", fn, model, x, kwargs, None, cotangent)
        # each hidden layer: the value, the sweep kept, the pullback; tanh's value is the compiled
        # series sweep, which calls the same driver from compiled code (test_numba_sweeps.py)
        assert len(calls) == 2 * (2 if activation == "tanh" else 3)
        assert_close(got[0], want[0], fn.__name__)
        assert_close(got[2], want[2], f"{fn.__name__}: x cotangent")
        for name in want[1]:
            assert_close(got[1][name], want[1][name], f"{fn.__name__}: {name}", scale=gradient_scale(want[1]))
