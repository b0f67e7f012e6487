"""The fused CUDA kernels of :mod:`nnderiv.backends.cuda_codegen`, checked with and without a GPU.

Oracle: the NumPy reference's ``compose``, ``compose_vjp`` and tanh coefficients. Without a GPU
the kernels' statements are compiled for the host (the same statements, written as C loops over
the points) with the system's C compiler and no contraction of multiply-adds: the composition and
its pullback must equal the reference bit for bit, the tanh coefficients agree within a few ulp
(the C library's tanh and exp against NumPy's), and the fused tanh step must equal the
composition of its own coefficients bit for bit. The device sources must compile with ``nvcc``
where it is installed. With a GPU, the CuPy backend's fused steps are checked the same way, and
the whole backend against the reference in ``tests/test_backends.py``.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
from backend_checks import CODEGEN_TABLES as TABLES
from backend_checks import assert_public_calls_match
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import build_model, networks

import nnderiv as nd
from nnderiv import backends
from nnderiv.backends import cuda_codegen
from nnderiv.backends import numpy_backend as reference
from nnderiv.combinatorics import multi_index_table

DTYPES = [np.float64, np.float32]
#: the host's tanh and exp against NumPy's: within this many ulp of the larger, per coefficient
COEFFICIENT_ULPS = 8

COMPILER = shutil.which("cc") or shutil.which("gcc")
needs_compiler = pytest.mark.skipif(COMPILER is None, reason="no C compiler to build the host kernels")


class HostKernels:
    """The kernels of one module (``key``: a table and order, or ``None`` for the activation
    adjoint) in one dtype, compiled for this CPU and called like on the GPU."""

    def __init__(self, key, dtype, directory):
        source = directory / "kernels.c"
        library = directory / "kernels.so"
        source.write_text(cuda_codegen.module_source(key, dtype, host=True))
        command = [COMPILER, "-O1", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC"]
        subprocess.run([*command, str(source), "-o", str(library), "-lm"], check=True, capture_output=True)
        self.library, self.dtype = ctypes.CDLL(str(library)), np.dtype(dtype)

    def launch(self, name: str, m: int, *args) -> None:
        """``nnderiv_<name>(m, *args)``: integers as ``long long``, arrays as pointers."""
        for arg in args:
            assert isinstance(arg, (int, np.integer)) or (arg.dtype == self.dtype and arg.flags.c_contiguous)
        function = getattr(self.library, f"nnderiv_{name}")
        function.argtypes = [ctypes.c_longlong] * (1 + sum(isinstance(arg, (int, np.integer)) for arg in args))
        function.argtypes += [ctypes.c_void_p] * sum(not isinstance(arg, (int, np.integer)) for arg in args)
        function(int(m), *(int(arg) if isinstance(arg, (int, np.integer)) else arg.ctypes.data for arg in args))

    def __call__(self, name: str, *arrays) -> None:
        """A table's kernel on ``(rows, ...)`` arrays: ``m`` is the size of one row."""
        self.launch(name, arrays[0][0].size, *arrays)


@pytest.fixture
def compiled(tmp_path):
    def build(key, dtype):
        return HostKernels(key, dtype, Path(tempfile.mkdtemp(dir=tmp_path)))

    return build


def _problem(table, dtype, rng, n=97, width=3):
    stack = rng.normal(size=(table.n_coef, n, width)).astype(dtype)
    stack[0] *= 3.0  # values over tanh's whole range, saturated ones too
    out_bar = rng.normal(size=stack.shape).astype(dtype)
    a = reference.taylor_coefficients(nd.get_activation("tanh"), stack[0], table.order + 1)
    return stack, out_bar, a


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("table_name", sorted(TABLES))
def test_the_composition_and_its_pullback_equal_the_reference_bit_for_bit(table_name, dtype, compiled, rng):
    table = TABLES[table_name]
    K = table.order
    stack, out_bar, a = _problem(table, dtype, rng)
    kernels = compiled((table, K), dtype)
    want, powers = reference.compose_saving(stack, a, table, K)
    got = np.empty_like(stack)
    kernels("forward", a[: K + 1].copy(), stack, got)
    np.testing.assert_array_equal(got, want)
    got_bar = np.empty_like(stack)
    kernels("backward", a, stack, out_bar, got_bar)
    np.testing.assert_array_equal(got_bar, reference.compose_vjp(out_bar, stack, powers, a, table, K))


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("table_name", ["full d=3 K=3", "directional n=3 K=4", "full d=1 K=1", "full d=2 K=0"])
def test_the_fused_tanh_step_composes_its_own_coefficients_which_are_the_references(table_name, dtype, compiled, rng):
    table = TABLES[table_name]
    K = table.order
    stack, _, want_a = _problem(table, dtype, rng)
    stack[0, :3, 0] = [0.0, 30.0, -500.0]  # tanh' underflows far out: the cutoff keeps exp finite
    want_a = reference.taylor_coefficients(nd.get_activation("tanh"), stack[0], K + 1)
    kernels = compiled((table, K), dtype)
    out, a = np.empty_like(stack), np.empty_like(want_a)
    kernels("tanh_forward_saving", stack, out, a)
    assert np.isfinite(a).all()
    ulp = np.spacing(np.maximum(np.abs(a), np.abs(want_a)).max(axis=(1, 2), keepdims=True))
    assert (np.abs(a - want_a) <= COEFFICIENT_ULPS * ulp).all(), np.abs(a - want_a).max(axis=(1, 2))
    np.testing.assert_array_equal(out, reference.compose(stack, a, table, K))
    alone = np.empty_like(stack)
    kernels("tanh_forward", stack, alone)
    np.testing.assert_array_equal(alone, out)


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tangents", [1, 3])
def test_the_activation_adjoint_equals_the_reference_bit_for_bit(tangents, dtype, compiled, rng):
    stack = rng.normal(size=(4, 97, 3)).astype(dtype)
    a = reference.taylor_coefficients(nd.get_activation("tanh"), stack[0], 2)
    adjoint = rng.normal(size=(tangents, 2, 97, 3)).astype(dtype)
    out = np.empty_like(adjoint)
    flat = np.ascontiguousarray
    compiled(None, dtype).launch(
        "activation_adjoint", 97 * 3, tangents, 2, adjoint, flat(a[: 3 if tangents > 1 else 2]), stack, out
    )
    np.testing.assert_array_equal(out, reference.activation_adjoint(adjoint, a, stack))


def test_the_source_declares_one_pointer_per_array_and_reads_each_row_once():
    table = multi_index_table(2, 2)
    source = cuda_codegen.source(table, 2, np.float32)
    assert "typedef float real;" in source and "#define TANH tanhf" in source
    assert 'extern "C" __global__ void nnderiv_backward(const long long m, const real* __restrict__ A,' in source
    forward = source.split("nnderiv_forward(", 1)[1].split("}\n}", 1)[0]
    for row in range(1, table.n_coef):
        assert forward.count(f"Z[{row} * m + i]") == 1 and forward.count(f"OUT[{row} * m + i] =") == 1
    assert "#include" not in source  # NVRTC compiles it without headers
    assert "#include <math.h>" in cuda_codegen.source(table, 2, np.float32, host=True)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d, K", [(3, 3), (2, 0)])
def test_the_device_source_compiles_with_nvcc_without_warnings(d, K, dtype, tmp_path):
    source = tmp_path / "kernels.cu"
    source.write_text(cuda_codegen.source(multi_index_table(d, K), K, dtype))
    options = ["-ptx", *cuda_codegen.NVRTC_OPTIONS, "--Werror", "all-warnings"]
    result = subprocess.run(["nvcc", *options, str(source), "-o", str(tmp_path / "k.ptx")], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    ptx = (tmp_path / "k.ptx").read_text()
    for name in ("forward", "tanh_forward", "tanh_forward_saving", "backward"):
        assert f".entry nnderiv_{name}(" in ptx
    source.write_text(cuda_codegen.adjoint_source(dtype))
    result = subprocess.run(["nvcc", *options, str(source), "-o", str(tmp_path / "k.ptx")], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    assert ".entry nnderiv_activation_adjoint(" in (tmp_path / "k.ptx").read_text()


# --- the CuPy backend's glue, on the host ----------------------------------------------------


class HostModule:
    """Stands in for a compiled ``cupy.RawModule``: ``get_function(name)(grid, block, args)``."""

    def __init__(self, kernels: HostKernels):
        self.kernels = kernels

    def get_function(self, name: str):
        def launch(grid, block, args):
            self.kernels.launch(name.removeprefix("nnderiv_"), *args)

        return launch


class DeviceArray(np.ndarray):
    """A NumPy array that says it is a CuPy one (by its type's module, all nnderiv looks at)."""

    __module__ = "cupy._core.core"

    def get(self) -> np.ndarray:
        return np.array(self.view(np.ndarray))


def _fake_cupy() -> types.ModuleType:
    """NumPy dressed as CuPy: every function is NumPy's, arrays moved "to the device" become
    :class:`DeviceArray` (results of operations on them stay so)."""
    fake = types.ModuleType("cupy")
    fake.__getattr__ = lambda name: getattr(np, name)

    def on_device(make):
        return lambda *args, **kwargs: make(*args, **kwargs).view(DeviceArray)

    for name in ("asarray", "ascontiguousarray", "empty", "empty_like", "zeros", "zeros_like"):
        setattr(fake, name, on_device(getattr(np, name)))
    fake.asnumpy = lambda array: np.asarray(array).view(np.ndarray)
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    return fake


@pytest.fixture
def host_cupy(monkeypatch, compiled):
    """The cupy backend with NumPy standing in for CuPy and the host build of each kernel for its
    compiled CUDA: everything the backend does around the kernels runs as on a GPU."""
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    built = {}

    def module(key, dtype):
        if (key, dtype) not in built:
            built[key, dtype] = HostModule(compiled(key, dtype))
        return built[key, dtype]

    monkeypatch.setattr(cuda_codegen, "_module", module)
    return built


@needs_compiler
@settings(  # every public call per example: 3 in ci; the fixture's compiled kernels are kept across examples
    max_examples=max(3, settings.default.max_examples // 8),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    spec=networks(max_depth=2, max_d=3, max_m=2, max_width=4, activations=["tanh", "sin"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_public_function_on_the_cupy_backend_matches_numpy(host_cupy, spec, seed):
    """Through the fused kernels (tanh: coefficients within ulps, so 1e-12 relative), with chunks."""
    rng = np.random.default_rng(seed)
    model = build_model(spec)
    on_device = build_model(spec).to("cupy")
    assert all(backends.is_device_array(value) for value in on_device.params.values())
    x = rng.uniform(-1, 1, (7, model.n_inputs))
    assert_public_calls_match(model, x, "cupy", chunk_size=3, rng=rng, model_there=on_device)
    assert host_cupy, "no fused kernel ran"


def test_a_kernel_nvrtc_refuses_is_a_backend_error_naming_the_switch(monkeypatch, rng):
    from nnderiv.backends import cupy_backend

    class CompileException(Exception):
        pass

    class RawModule:  # NVRTC refusing the source
        def __init__(self, code, options):
            assert "--fmad=false" in options and "nnderiv_forward" in code

        def get_function(self, name):
            raise CompileException("kernel.cu(12): error: identifier 'TANH' is undefined")

    fake = _fake_cupy()
    fake.RawModule, fake.cuda.compiler = RawModule, types.SimpleNamespace(CompileException=CompileException)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    table = TABLES["full d=2 K=2"]
    stack, _, a = _problem(table, np.float64, rng)
    cuda_codegen._module.cache_clear()
    try:
        with pytest.raises(nd.BackendError, match=r"could not compile .* 'TANH' is undefined.*FUSED = False"):
            cupy_backend.compose(fake.asarray(stack), fake.asarray(a), table, 2)
        monkeypatch.setattr(cupy_backend, "FUSED", False)  # the way out it names: the reference's operations
        got = cupy_backend.compose(fake.asarray(stack), fake.asarray(a), table, 2)
        np.testing.assert_array_equal(reference.asarray(got), reference.compose(stack, a, table, 2))
    finally:
        cuda_codegen._module.cache_clear()  # no fake module left for a real GPU's tests


# --- the fused steps of the CuPy backend, on a GPU and on the host ----------------------------


@pytest.fixture(params=["host", "gpu"])
def cupy(request):
    """CuPy on a GPU (skipped without one), or NumPy standing in for it with the host kernels."""
    if request.param == "host":
        if COMPILER is None:
            pytest.skip("no C compiler to build the host kernels")
        request.getfixturevalue("host_cupy")
        return sys.modules["cupy"]
    try:
        backends.load("cupy")
    except nd.BackendError as exc:
        pytest.skip(f"cupy backend unavailable: {exc}")
    import cupy

    return cupy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("table_name", sorted(TABLES))
def test_the_cupy_backend_runs_the_fused_kernels(table_name, dtype, cupy, rng):
    from nnderiv.backends import cupy_backend

    host = reference.asarray
    table = TABLES[table_name]
    K = table.order
    stack, out_bar, a = _problem(table, dtype, rng, n=1000)
    want, powers = reference.compose_saving(stack, a, table, K)
    out, kept = cupy_backend.compose_saving(cupy.asarray(stack), cupy.asarray(a), table, K)
    assert kept.shape[0] == 0  # the pullback recomputes the powers
    np.testing.assert_array_equal(host(out), want)
    got_bar = cupy_backend.compose_vjp(cupy.asarray(out_bar), cupy.asarray(stack), kept, cupy.asarray(a), table, K)
    np.testing.assert_array_equal(host(got_bar), reference.compose_vjp(out_bar, stack, powers, a, table, K))
    tanh = nd.get_activation("tanh")
    out, device_a, kept = cupy_backend.activate_saving(cupy.asarray(stack), tanh, table, K)
    device_a = host(device_a)
    ulp = np.spacing(np.maximum(np.abs(a), np.abs(device_a)).max(axis=(1, 2), keepdims=True))
    assert (np.abs(device_a - a) <= COEFFICIENT_ULPS * ulp).all()
    np.testing.assert_array_equal(host(out), reference.compose(stack, device_a, table, K))
    np.testing.assert_array_equal(host(cupy_backend.activate(cupy.asarray(stack), tanh, table, K)), host(out))
    tangents = min(table.n_coef, 3) if K >= 1 else 1  # a reverse sweep's h_bar and its tangents
    adjoint = rng.normal(size=(tangents, 2, *stack.shape[1:])).astype(dtype)
    got = cupy_backend.activation_adjoint(cupy.asarray(adjoint), cupy.asarray(a), cupy.asarray(stack))
    np.testing.assert_array_equal(host(got), reference.activation_adjoint(adjoint, a, stack))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", [1, 2, 4])
def test_the_fused_tanh_step_keeps_nan_and_inf_where_the_reference_does(order, dtype, cupy, rng):
    """NaN in, NaN out, in every row: the cap on ``|z|`` in ``exp(-2 min(|z|, cutoff))`` is
    ``np.minimum`` (a NaN stays), not C's ``fmin`` (which returns the other operand); +-inf give
    the limits ``tanh = +-1``, every derivative 0."""
    from nnderiv.backends import cupy_backend

    table = multi_index_table(2, order)
    stack = rng.normal(scale=2.0, size=(table.n_coef, 50, 3)).astype(dtype)
    stack[0, 0, :] = [np.nan, np.inf, -np.inf]
    tanh = nd.get_activation("tanh")
    want = reference.activate(stack, tanh, table, order)
    got = reference.asarray(cupy_backend.activate(cupy.asarray(stack), tanh, table, order))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[:, 0, 0]).all()
    np.testing.assert_array_equal(got[:, 0, 1:], want[:, 0, 1:])  # the limits, exactly
