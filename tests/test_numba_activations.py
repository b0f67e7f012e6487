"""The vectorizable tanh and sigmoid of the Numba backend against 40-digit references (mpmath).

Oracle: mpmath, independent of nnderiv and of NumPy's libm. Bars: ``exp(-y)`` within 1 ulp,
``tanh`` 1 ulp, ``sech^2``, sigmoid and ``sigmoid - 1/2`` within 4 ulp (the formulas round 3-4 times); higher Taylor
coefficients within a few ulp of the largest coefficient of their order. NaN in, NaN out; the
infinities give the limits.
"""

from __future__ import annotations

import platform
import re

import llvmlite.binding
import mpmath
import numba
import numpy as np
import pytest

from nnderiv.backends.numba_activations import (
    FILL_FASTMATH,
    KINDS,
    VECTOR_BITS,
    exp_neg,
    fill_block,
    fill_low,
    log1p_unit,
    sigmoid_parts,
    sin_cos,
    tanh_sech2,
)


@numba.njit(cache=False, fastmath=FILL_FASTMATH)  # the flags of the fills that call these functions
def _elementwise(kind, z, out):
    for i in range(len(z)):
        if kind == 0:
            out[0, i] = exp_neg(z[i])
        elif kind == 1:
            out[0, i], out[1, i] = tanh_sech2(z[i])
        else:
            out[0, i], out[1, i], out[2, i], _ = sigmoid_parts(z[i])


def _evaluate(kind, z):
    out = np.empty((3, len(z)))
    _elementwise(kind, np.asarray(z, dtype=np.float64), out)
    return out


def _ulps(got, exact) -> float:
    """Largest distance in units of the last place (subnormal results: in units of 2^-1074)."""
    exact = np.array([float(e) for e in exact])
    spacing = np.spacing(np.abs(exact))
    return float(np.max(np.abs(got - exact) / np.maximum(spacing, 5e-324)))


@pytest.fixture(scope="module")
def z():
    rng = np.random.default_rng(0)
    magnitudes = np.concatenate([rng.uniform(0, 1, 600), rng.uniform(0.6, 0.65, 200), 10 ** rng.uniform(-12, 2.8, 800)])
    return magnitudes * rng.choice([-1.0, 1.0], magnitudes.size)


def test_exp_neg_is_within_one_ulp(z):
    y = np.abs(z)
    with mpmath.workdps(40):
        exact = [mpmath.exp(-mpmath.mpf(float(v))) for v in y]
    assert _ulps(_evaluate(0, y)[0], exact) <= 1.0


def test_tanh_and_its_derivative(z):
    got = _evaluate(1, z)
    with mpmath.workdps(40):
        tanh = [mpmath.tanh(mpmath.mpf(float(v))) for v in z]
        sech2 = [mpmath.sech(mpmath.mpf(float(v))) ** 2 for v in z]
    assert _ulps(got[0], tanh) <= 1.0
    assert _ulps(got[1], sech2) <= 4.0


def test_sigmoid_its_derivative_and_centred_value(z):
    got = _evaluate(2, z)
    with mpmath.workdps(40):
        sigma = [1 / (1 + mpmath.exp(-mpmath.mpf(float(v)))) for v in z]
        far_side = [mpmath.exp(-abs(mpmath.mpf(float(v)))) for v in z]  # sigma' = e / (1 + e)^2, e = exp(-|z|)
        derivative = [e / (1 + e) ** 2 for e in far_side]
    assert _ulps(got[0], sigma) <= 2.0
    assert _ulps(got[1], derivative) <= 4.0
    assert _ulps(got[2], [s - mpmath.mpf(1) / 2 for s in sigma]) <= 4.0


@numba.njit(cache=False)
def _sin_cos_loop(z, out):
    for i in range(len(z)):
        out[0, i], out[1, i] = sin_cos(z[i])


def test_sin_and_cos_within_one_ulp_up_to_the_reduction_limit():
    rng = np.random.default_rng(3)
    near_quadrants = np.arange(-400, 400) * (np.pi / 2) + rng.normal(scale=1e-9, size=800)
    z = np.concatenate([rng.uniform(-10, 10, 1500), near_quadrants, 10 ** rng.uniform(-10, 5.9, 500)])
    out = np.empty((2, z.size))
    _sin_cos_loop(z, out)
    with mpmath.workdps(50):
        sine = [mpmath.sin(mpmath.mpf(float(v))) for v in z]
        cosine = [mpmath.cos(mpmath.mpf(float(v))) for v in z]
    assert _ulps(out[0], sine) <= 1.0 and _ulps(out[1], cosine) <= 1.0
    a = np.empty((3, 4))
    big = np.array([1e7, -3e10, 0.5, np.nan])  # beyond the reduction limit: the C library, per block
    fill_block(KINDS["sin"], big, a, 2, 4, np.empty(4))
    np.testing.assert_array_equal(a[0], np.sin(big))
    np.testing.assert_array_equal(a[1], np.cos(big))


def test_log1p_on_the_unit_interval():
    e = np.concatenate([np.linspace(0, 1, 1001), 10 ** np.random.default_rng(2).uniform(-300, 0, 500)])
    got = _log1p(e)
    with mpmath.workdps(40):
        exact = [mpmath.log1p(mpmath.mpf(float(v))) for v in e]
    assert _ulps(got, exact) <= 2.0


@numba.njit(cache=False)
def _log1p_loop(e, out):
    for i in range(len(e)):
        out[i] = log1p_unit(e[i])


def _log1p(e):
    out = np.empty_like(e)
    _log1p_loop(e, out)
    return out


def test_special_values():
    z = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e300, -1e300, 800.0]
    exp = _evaluate(0, np.abs(z))[0]
    np.testing.assert_array_equal(exp, [1, 1, 0, 0, np.nan, 0, 0, 0])
    tanh, sech2, _ = _evaluate(1, z)
    np.testing.assert_array_equal(tanh, [0, -0.0, 1, -1, np.nan, 1, -1, 1])
    assert np.signbit(tanh[1])
    np.testing.assert_array_equal(sech2, [1, 1, 0, 0, np.nan, 0, 0, 0])
    sigma, derivative, _ = _evaluate(2, z)
    np.testing.assert_array_equal(sigma, [0.5, 0.5, 1, 0, np.nan, 1, 0, 1])
    np.testing.assert_array_equal(derivative, [0.25, 0.25, 0, 0, np.nan, 0, 0, 0])


@pytest.mark.parametrize("name", sorted(KINDS))
def test_taylor_coefficients_of_every_order(name):
    rng = np.random.default_rng(1)
    z, order = rng.normal(scale=3.0, size=60), 8
    a = np.empty((order + 1, z.size))
    fill_block(KINDS[name], z, a, order, z.size, np.empty(z.size))
    function = {
        "tanh": mpmath.tanh,
        "sigmoid": lambda t: 1 / (1 + mpmath.exp(-t)),
        "silu": lambda t: t / (1 + mpmath.exp(-t)),
        "softplus": lambda t: mpmath.log(1 + mpmath.exp(t)),
        "sin": mpmath.sin,
        "cos": mpmath.cos,
    }[name]
    with mpmath.workdps(40):
        exact = np.array([[float(c) for c in mpmath.taylor(function, mpmath.mpf(float(v)), order)] for v in z]).T
    scale = np.abs(exact).max(axis=1, keepdims=True)
    assert float(np.max(np.abs(a - exact) / scale)) <= 8 * np.finfo(np.float64).eps


@numba.njit(cache=False, fastmath=FILL_FASTMATH, error_model="numpy")
def _tanh_default_width(z, value, slope):  # fill_low's tanh loop, without wide_vectors()
    for i in range(len(z)):
        value[i], slope[i] = tanh_sech2(z[i])


def test_wide_vectors_marks_the_kernels_and_changes_no_bit():
    """A kernel calling ``wide_vectors()`` carries LLVM's ``prefer-vector-width`` attribute (on an
    AVX-512 CPU: 512-bit instructions in its machine code) and computes the same bits as the loop
    compiled at LLVM's default width."""
    z = np.random.default_rng(2).normal(scale=4.0, size=1003)  # a remainder after any vector width
    value, slope, default = np.empty_like(z), np.empty_like(z), (np.empty_like(z), np.empty_like(z))
    fill_low(KINDS["tanh"], z, value, slope, 1)
    _tanh_default_width(z, *default)
    assert np.array_equal(value, default[0]) and np.array_equal(slope, default[1])
    fresh = numba.njit(cache=False, fastmath=FILL_FASTMATH, error_model="numpy")(fill_low.py_func)  # inspectable
    fresh(KINDS["tanh"], z, value, slope, 1)
    assert f'"prefer-vector-width"="{VECTOR_BITS}"' in "".join(fresh.inspect_llvm().values())
    # (only the marked kernel's width is asserted: LLVM's default depends on the CPU, 256 bits on
    # Intel's AVX-512 server parts, where the attribute matters, 512 on AMD's Zen 4 and 5)
    if "+avx512f" in llvmlite.binding.get_host_cpu_features().flatten():
        assert "zmm" in "".join(fresh.inspect_asm().values())


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or "+avx2" not in llvmlite.binding.get_host_cpu_features().flatten(),
    reason="checks x86-64 machine code with AVX2",
)
def test_the_tanh_fill_runs_in_simd_vectors():
    """The activation step's loops vectorize: their machine code divides whole vectors (``vdivpd`` on
    256- or 512-bit registers), not one number at a time. A loop that can raise (Numba's ``python``
    error model: a branch for division by zero) or calls libm's scalar ``tanh`` would not; measured
    on a Zen 1 CPU, such a loop runs 2.5x slower."""
    fresh = numba.njit(cache=False, fastmath=FILL_FASTMATH, error_model="numpy")(fill_low.py_func)
    z = np.linspace(-3.0, 3.0, 101)
    fresh(KINDS["tanh"], z, np.empty_like(z), np.empty_like(z), 1)
    assembly = "".join(fresh.inspect_asm().values())
    assert re.search(r"vdivpd\s[^\n]*%[yz]mm", assembly), "the tanh fill did not vectorize"
