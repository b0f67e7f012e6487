"""The compiled whole sweeps of a dense chain (nnderiv.backends.numba_sweeps).

Oracle: the generic numba path, layer by layer (itself checked against the NumPy reference in
test_backends.py and against independent oracles everywhere else). The compiled sweep makes the
same BLAS calls on the same blocks of rows and applies the same activation functions, so the
results must agree bit for bit, not merely to rounding; its BLAS calls are checked bit for bit
against NumPy's ``matmul``, the call they replace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import build_model, networks

import nnderiv as nd
from nnderiv.backends import numba_backend, numba_sweeps

pytestmark = pytest.mark.skipif(numba_sweeps.numpy_blas() is None, reason="NumPy's BLAS is not an OpenBLAS")

COMPILED = numba_sweeps.COMPILED  # the activations the compiled sweep takes


def _generic(monkeypatch):
    """Switch the compiled sweeps off: the engine's layer-by-layer sweep."""
    monkeypatch.setattr(numba_backend, "dense_sweep", lambda *args: None)


def _generic_results(model, x, chunk_size=None):
    with pytest.MonkeyPatch.context() as patch:
        _generic(patch)
        return _both(model, x, chunk_size)


def _both(model, x, chunk_size=None):
    kw = {"chunk_size": chunk_size}
    return nd.value(model, x, **kw), nd.jacobian(model, x, strategy="reverse", **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(
    a=st.integers(1, 70),
    k=st.integers(1, 70),
    b=st.sampled_from([1, 2, 3, 64]),
    seed=st.integers(0, 2**16),
)
def test_matmul_is_numpys_bit_for_bit(dtype, a, k, b, seed):
    """dot, gemv (a row or a column) and gemm, as NumPy's matmul chooses them."""
    rng = np.random.default_rng(seed)
    for m, n in ((a, b), (1, b), (a, 1), (1, 1)):
        left, right = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        out = np.empty((m, n), dtype=dtype)
        blas = numba_sweeps.numpy_blas()
        numba_sweeps._matmul(blas.addresses[np.dtype(dtype)], blas.int_type(1), left, right, out)
        np.testing.assert_array_equal(out, left @ right, err_msg=f"({m}, {k}) x ({k}, {n})")


_LP64_CHECK = """
import ctypes, sys
from pathlib import Path
import numpy as np
import scipy_openblas32 as lp64
from nnderiv.backends import numba_sweeps

files = sorted(Path(lp64.get_lib_dir()).glob(f"lib{lp64.get_library()}.*"))
blas = numba_sweeps.openblas_cblas(ctypes.CDLL(str(files[0])))
assert blas is not None and blas.int_type is np.int32, blas
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    for m, k, n in ((70, 33, 64), (1, 33, 5), (70, 33, 1), (1, 33, 1)):
        left, right = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
        out = np.full((m, n), np.nan, dtype=dtype)
        numba_sweeps._matmul(blas.addresses[np.dtype(dtype)], blas.int_type(1), left, right, out)
        want = left @ right
        assert np.abs(out - want).max() <= 4 * k * np.finfo(dtype).eps * np.abs(want).max(), (dtype, m, k, n)
print("ok")
"""


def test_matmul_through_a_32_bit_integer_openblas():
    """An LP64 OpenBLAS (SciPy's ``scipy-openblas32``, in the test extra): the integers passed as
    int32. Another OpenBLAS build than NumPy's, so agreement to rounding, not bits. In a process
    of its own: a second BLAS loaded here would escape the workers' one-thread BLAS setting of the
    other tests (nnderiv.parallel finds the BLAS libraries once)."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("scipy_openblas32") is None:  # not imported here: that loads the library
        pytest.skip("scipy-openblas32 is not installed (the test extra has it)")
    done = subprocess.run([sys.executable, "-c", _LP64_CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@given(spec=networks(max_depth=3, max_d=4, activations=COMPILED, max_width=9, output_activation=True), data=st.data())
def test_compiled_sweeps_equal_the_generic_path_bit_for_bit(dtype, spec, data):
    model = build_model(spec, dtype)
    n = data.draw(st.sampled_from([0, 1, 2, 63, 300]), label="N")
    chunk_size = data.draw(st.sampled_from([None, 1, 7, 64]), label="chunk_size")  # chunks on both workers
    x = np.random.default_rng(n).uniform(-2, 2, (n, model.n_inputs)).astype(dtype)
    assert numba_backend.dense_sweep(model, x.dtype) is not None
    compiled, generic = _both(model, x, chunk_size), _generic_results(model, x, chunk_size)
    for got, want, name in zip(compiled, generic, ("value", "jacobian")):
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize("d", [2, 8])
def test_benchmark_network_on_two_workers_takes_the_compiled_sweep(d, monkeypatch):
    """The workloads W0 and W1: one compiled call per worker, each taking its chunks, with BLAS on
    one thread per worker while they run; the same bits as layer by layer."""
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    model = nd.MLP([d, 64, 64, 64, 1], seed=0)
    x = np.random.default_rng(0).uniform(-1, 1, (4096, d))
    seen = []
    for name in ("_value_share", "_jacobian_share"):
        share = getattr(numba_sweeps, name)

        def spy(*args, share=share, name=name):
            seen.append((name, args[-2], args[-1], parallel_blas_threads()))  # worker, workers
            return share(*args)

        monkeypatch.setattr(numba_sweeps, name, spy)
    previous = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        compiled = _both(model, x)
        assert sorted(seen) == [
            (name, worker, 2, 1) for name in ("_jacobian_share", "_value_share") for worker in (0, 1)
        ]
        generic = _generic_results(model, x)
    finally:
        numba.set_num_threads(previous)
    for got, want in zip(compiled, generic):
        np.testing.assert_array_equal(got, want)


def parallel_blas_threads() -> int:
    """The thread count of NumPy's OpenBLAS now."""
    from threadpoolctl import threadpool_info

    library = numba_backend.numpy_openblas()
    return next(info["num_threads"] for info in threadpool_info() if info["filepath"] == library["filepath"])


@pytest.mark.parametrize(
    "layers",
    [
        pytest.param(lambda: [nd.Activation("tanh"), nd.Dense(3, 2)], id="activation first"),
        pytest.param(
            lambda: [nd.Dense(3, 4), nd.Activation("tanh"), nd.Activation("sin"), nd.Dense(4, 1)], id="two in a row"
        ),
        pytest.param(lambda: [nd.Dense(3, 4), nd.Activation("gelu"), nd.Dense(4, 1)], id="not compiled: gelu"),
        pytest.param(lambda: [nd.Dense(3, 4), nd.Activation("silu"), nd.Dense(4, 1)], id="not compiled: silu"),
    ],
)
def test_other_models_take_the_generic_sweep(layers):
    model = nd.Sequential(*layers())
    assert numba_sweeps.dense_sweep(model, np.float64) is None
    x = np.random.default_rng(0).uniform(-1, 1, (5, 3))
    with nd.use_backend("numpy"):
        want = nd.value(model, x), nd.jacobian(model, x)
    with nd.use_backend("numba"):
        got = nd.value(model, x), nd.jacobian(model, x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


def test_nested_models_and_float32_are_compiled():
    inner = nd.Sequential(nd.Dense(3, 5, seed=1), nd.Activation("sigmoid"))
    model = nd.Sequential(inner, nd.Dense(5, 2, seed=2), nd.Activation("tanh"))
    assert numba_sweeps.dense_sweep(model, np.float64) is not None
    assert numba_sweeps.dense_sweep(nd.MLP([2, 4, 1], dtype="float32"), np.float32) is not None
    assert numba_sweeps.dense_sweep(nd.MLP([2, 4, 1]), np.float32) is None  # the weights' dtype decides


def test_another_blas_takes_the_generic_sweep(monkeypatch):
    monkeypatch.setattr(numba_backend, "numpy_openblas", lambda: None)
    numba_sweeps.numpy_blas.cache_clear()
    try:
        assert numba_sweeps.numpy_blas() is None
        assert numba_sweeps.dense_sweep(nd.MLP([2, 4, 1]), np.float64) is None
        model, x = nd.MLP([2, 4, 1], seed=0), np.ones((3, 2))
        with nd.use_backend("numba"):
            value = nd.value(model, x)
        with nd.use_backend("numpy"):
            np.testing.assert_allclose(value, nd.value(model, x), rtol=1e-12)
    finally:
        numba_sweeps.numpy_blas.cache_clear()


def test_the_switch_turns_the_compiled_sweeps_off(monkeypatch):
    model = nd.MLP([2, 4, 1])
    assert numba_backend.dense_sweep(model, np.float64) is not None
    monkeypatch.setattr(numba_backend, "COMPILED_SWEEPS", False)
    assert numba_backend.dense_sweep(model, np.float64) is None


# --- series modes (DenseSweep.series) ------------------------------------------------------------
# Oracle: the generic numba path again, which calls the same generated kernels layer by layer. Equal
# to rounding, not bit for bit: where LLVM inlines a generated kernel into the compiled loop, it may
# contract other multiply-adds (the kernels are compiled with ``contract``; measured: one ulp).

#: the series modes at d inputs: (name, call, rows of the stack)
SERIES = {
    "full, order 2": lambda model, x, c: nd.hessian(model, x, strategy="forward", chunk_size=c),
    "full, order 3": lambda model, x, c: nd.derivatives(model, x, order=3, strategy="forward", chunk_size=c).tensor(3),
    "collapsed": lambda model, x, c: nd.laplacian(model, x, chunk_size=c),
    "collapsed, indefinite": lambda model, x, c: nd.laplacian(model, x, _indefinite(model.n_inputs), chunk_size=c),
    "collapsed, per point": lambda model, x, c: nd.laplacian(model, x, _per_point(model, len(x)), chunk_size=c),
    "taylor": lambda model, x, c: nd.taylor(model, x, _directions(model.n_inputs), order=3, chunk_size=c),
    "taylor by direction": lambda model, x, c: nd.pure_derivatives(model, x, order=4, chunk_size=c),
}


def _indefinite(d):
    return np.diag(np.linspace(-1.0, 2.0, d))


def _per_point(model, n):
    rng = np.random.default_rng(n)
    B = rng.standard_normal((n, model.n_inputs, model.n_inputs))
    return (B + np.swapaxes(B, 1, 2)).astype(model.dtype)


def _directions(d):
    return np.random.default_rng(d).standard_normal((3, d))


def _close(got, want, dtype):
    """Agreement to a few ulps of the result's scale (float32's, float64's)."""
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, want, rtol=64 * eps, atol=64 * eps * scale)


def _series_spy(monkeypatch) -> list:
    """Records, per call of ``DenseSweep.series``, whether it ran (``False``: the engine swept)."""
    taken, series = [], numba_sweeps.DenseSweep.series

    def spy(self, *args):
        out = series(self, *args)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(numba_sweeps.DenseSweep, "series", spy)
    return taken


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(SERIES))
@given(spec=networks(max_depth=3, d=2, activations=("tanh",), max_width=9, output_activation=True), data=st.data())
def test_compiled_series_equal_the_generic_path(name, dtype, spec, data):
    """Every table kind through random tanh chains, any number of points and chunks. The stacks of
    these sizes are below the generated kernels' threshold, lowered here for both paths alike."""
    model = build_model(spec, dtype)
    if name == "taylor by direction":  # 1 + 5 * 4 = 21 rows: one direction at a time
        model = build_model(data.draw(networks(max_depth=2, d=5, activations=("tanh",), max_width=6)), dtype)
    n = data.draw(st.sampled_from([1, 2, 63, 300]), label="N")
    chunk_size = data.draw(st.sampled_from([None, 1, 7, 64]), label="chunk_size")
    x = np.random.default_rng(n).uniform(-2, 2, (n, model.n_inputs)).astype(dtype)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(numba_backend, "STRAIGHT_LINE_MIN_ELEMENTS", 1)
        taken = _series_spy(patch)
        got = SERIES[name](model, x, chunk_size)
        assert taken == [True]
        _generic(patch)
        want = SERIES[name](model, x, chunk_size)
    _close(got, want, dtype)


@pytest.mark.parametrize("d", [2, 8])
def test_benchmark_network_series_take_the_compiled_sweep(d, monkeypatch):
    """W2 (forward), W3, W4 and W5 on the benchmark's network: one compiled call per worker, at the
    generated kernels' own threshold, equal to the layer-by-layer path to rounding."""
    numba = pytest.importorskip("numba")
    model = nd.MLP([d, 64, 64, 64, 1], seed=0)
    x = np.random.default_rng(0).uniform(-1, 1, (4096, d))
    calls = [SERIES["full, order 2"], SERIES["collapsed"]]
    calls += [lambda model, x, c, k=k: nd.pure_derivatives(model, x, order=k, chunk_size=c) for k in (3, 4)]
    previous = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        taken = _series_spy(monkeypatch)
        got = [call(model, x, None) for call in calls]
        assert taken == [True] * len(calls)
        _generic(monkeypatch)
        want = [call(model, x, None) for call in calls]
    finally:
        numba.set_num_threads(previous)
    for g, w in zip(got, want):
        _close(g, w, np.float64)


def test_series_of_other_chains_and_small_stacks_take_the_engines_sweep(monkeypatch):
    """A sigmoid in the chain, or a chunk's stack below the generated kernels' threshold: the
    layer-by-layer path (itself checked against the NumPy reference), the same results."""
    x = np.random.default_rng(0).uniform(-1, 1, (2048, 2))
    sigmoid = nd.Sequential(nd.Dense(2, 64, seed=1), nd.Activation("sigmoid"), nd.Dense(64, 1, seed=2))
    tanh = nd.MLP([2, 64, 1], seed=0)
    taken = _series_spy(monkeypatch)
    for model, points in ((sigmoid, x), (tanh, x[:16])):
        got = nd.laplacian(model, points)
        with nd.use_backend("numpy"):
            np.testing.assert_allclose(got, nd.laplacian(model, points), rtol=1e-12, atol=1e-13)
    nd.laplacian(tanh, x)
    assert taken == [False, False, True]


def test_generated_modules_change_with_the_helpers_they_compile_in(tmp_path, monkeypatch):
    """Numba's cache of a generated kernel holds the machine code of the helpers it calls
    (numba_sweeps, numba_activations) and does not notice when those change: their sources' hash
    is part of the generated source, hence of the module's name, so a changed helper compiles anew."""
    from nnderiv.backends import numba_activations, numba_codegen
    from nnderiv.combinatorics import multi_index_table

    table = multi_index_table(2, 2)
    assert numba_codegen.helpers_fingerprint() in numba_codegen.module_source(table, 2)
    before = numba_codegen.module_source(table, 2)
    edited = tmp_path / "numba_activations.py"
    edited.write_bytes(Path(numba_activations.__file__).read_bytes() + b"\n# edited\n")
    monkeypatch.setattr(numba_activations, "__file__", str(edited))
    numba_codegen.helpers_fingerprint.cache_clear()
    try:
        assert numba_codegen.module_source(table, 2) != before
    finally:
        monkeypatch.undo()
        numba_codegen.helpers_fingerprint.cache_clear()
    assert numba_codegen.module_source(table, 2) == before


def _over_reverse_spy(monkeypatch) -> list:
    """Records the workers of every compiled forward-over-reverse call."""
    seen, share = [], numba_sweeps._over_reverse_share

    def spy(*args):
        seen.append((args[-2], args[-1]))  # worker, workers
        return share(*args)

    monkeypatch.setattr(numba_sweeps, "_over_reverse_share", spy)
    return seen


def _by_reverse_sweep(model, x, chunk_size):
    """Value, Jacobian and Hessian by forward-over-reverse, as ``nd.hessian(strategy="reverse")``."""
    from nnderiv.modes import reverse

    result = reverse.evaluate(model, x, 2, chunk_size)
    return result.value, result.jacobian, result.hessian


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@given(spec=networks(max_depth=3, max_d=4, activations=COMPILED, max_width=9, output_activation=True), data=st.data())
def test_the_compiled_hessian_equals_the_layer_by_layer_sweep(dtype, spec, data):
    """Random tanh and sigmoid chains (several outputs, an activation on the output or not), any
    number of points and chunks: value, Jacobian and Hessian to a few ulps of the generic path
    (the activation coefficients and the products' blocking may round differently)."""
    model = build_model(spec, dtype)
    n = data.draw(st.sampled_from([1, 2, 63, 300]), label="N")
    chunk_size = data.draw(st.sampled_from([None, 1, 7, 64]), label="chunk_size")
    x = np.random.default_rng(n).uniform(-2, 2, (n, model.n_inputs)).astype(dtype)
    with pytest.MonkeyPatch.context() as patch:
        seen = _over_reverse_spy(patch)
        got = _by_reverse_sweep(model, x, chunk_size)
        assert seen, "the compiled Hessian did not run"
        patch.setattr(numba_sweeps, "COMPILED_HESSIAN", False)
        want = _by_reverse_sweep(model, x, chunk_size)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        _close(g, w, dtype)


@pytest.mark.parametrize("d", [2, 8])
def test_benchmark_network_hessian_takes_the_compiled_sweep_on_two_workers(d, monkeypatch):
    """W2 by forward-over-reverse: one compiled call per worker; against the NumPy reference's
    Hessian (an independent path, layer by layer) to rounding."""
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two Numba threads")
    model = nd.MLP([d, 64, 64, 64, 1], seed=0)
    x = np.random.default_rng(0).uniform(-1, 1, (4096, d))
    previous = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        seen = _over_reverse_spy(monkeypatch)
        got = nd.hessian(model, x, strategy="reverse")
        assert sorted(seen) == [(0, 2), (1, 2)]
    finally:
        numba.set_num_threads(previous)
    with nd.use_backend("numpy"):
        want = nd.hessian(model, x, strategy="reverse")
    _close(got, want, np.float64)
    np.testing.assert_array_equal(got, np.swapaxes(got, -1, -2))  # symmetrized


def test_the_hessian_of_other_chains_and_the_switch_take_the_layer_by_layer_sweep(monkeypatch):
    seen = _over_reverse_spy(monkeypatch)
    x = np.random.default_rng(1).uniform(-1, 1, (50, 3))
    nd.hessian(nd.MLP([3, 8, 1], activation="sin", seed=0), x, strategy="reverse")
    assert seen == []
    monkeypatch.setattr(numba_sweeps, "COMPILED_HESSIAN", False)
    nd.hessian(nd.MLP([3, 8, 1], activation="tanh", seed=0), x, strategy="reverse")
    assert seen == []
    monkeypatch.setattr(numba_sweeps, "COMPILED_HESSIAN", True)
    nd.hessian(nd.MLP([3, 8, 1], activation="tanh", seed=0), x, strategy="reverse")
    assert len(seen) >= 1


@given(spec=networks(max_depth=3, max_d=4, activations=COMPILED, max_width=9, output_activation=True), data=st.data())
def test_the_compiled_hvp_equals_the_layer_by_layer_sweep(spec, data):
    """``nd.hvp`` by forward-over-reverse along ``v``, shared or one per point: the same compiled
    sweep with one tangent row, to a few ulps of the generic path."""
    model = build_model(spec, "float64")
    n = data.draw(st.sampled_from([1, 2, 63, 300]), label="N")
    chunk_size = data.draw(st.sampled_from([None, 1, 7, 64]), label="chunk_size")
    rng = np.random.default_rng(n)
    x = rng.uniform(-2, 2, (n, model.n_inputs))
    v = rng.standard_normal((n, model.n_inputs) if data.draw(st.booleans(), label="per point") else model.n_inputs)
    with pytest.MonkeyPatch.context() as patch:
        seen = _over_reverse_spy(patch)
        got = nd.hvp(model, x, v, strategy="reverse", chunk_size=chunk_size)
        assert seen, "the compiled sweep did not run"
        patch.setattr(numba_sweeps, "COMPILED_HESSIAN", False)
        want = nd.hvp(model, x, v, strategy="reverse", chunk_size=chunk_size)
    _close(got, want, np.float64)
