"""Tests of nnderiv.activations: every table entry against exact SymPy derivatives, float32,
extreme arguments, consistency properties, finite differences, and name lookup."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from nnderiv.activations import ACTIVATIONS, ALIASES, Activation, get_activation
from nnderiv.errors import DTypeError, OrderError, UnknownActivationError

pytestmark = pytest.mark.filterwarnings("error")  # no RuntimeWarning may escape, even at |z| = 1e4

Z = sp.Symbol("z", real=True)
# The oracle: one exact expression per activation. Piecewise takes its "True" branch at z = 0,
# which is the left-hand value nnderiv documents (relu'(0) = 0, elu''(0) = 1), so 0 is tested too.
EXACT = {
    "identity": Z,
    "tanh": sp.tanh(Z),
    "sigmoid": 1 / (1 + sp.exp(-Z)),
    "softplus": sp.log(1 + sp.exp(Z)),
    "sin": sp.sin(Z),
    "cos": sp.cos(Z),
    "exp": sp.exp(Z),
    "gaussian": sp.exp(-(Z**2) / 2),
    "gelu": Z * sp.erfc(-Z / sp.sqrt(2)) / 2,  # = z (1 + erf(z/sqrt 2))/2; SymPy's evalf cancels in 1 + erf
    "silu": Z / (1 + sp.exp(-Z)),
    "elu": sp.Piecewise((Z, Z > 0), (sp.exp(Z) - 1, True)),
    "relu": sp.Piecewise((Z, Z > 0), (0, True)),
    "leaky_relu": sp.Piecewise((Z, Z > 0), (Z / 100, True)),
}
NAMES = sorted(ACTIVATIONS)
POINTS = np.array([-3.1, -0.7, 0.0, 0.4, 2.5])
ORDER = 8
EPS64 = np.finfo(np.float64).eps
EPS32 = np.finfo(np.float32).eps


@functools.cache
def exact_stack(name: str, points: tuple[float, ...] = tuple(POINTS), order: int = ORDER) -> np.ndarray:
    """``[f, f', ..., f^(order)]`` at ``points``, shape ``(order + 1, len(points))``, by SymPy to 30 digits."""
    rows, expr = [], EXACT[name]
    for _ in range(order + 1):
        # sp.Float(x, 40) is the exact binary value of the float64 point, so only nnderiv rounds.
        rows.append([float(expr.subs(Z, sp.Float(x, 40)).evalf(30)) for x in points])
        expr = sp.diff(expr, Z)
    return np.array(rows)


def assert_close_per_order(actual: np.ndarray, expected: np.ndarray, rtol: float, floor: float) -> None:
    """``|actual - expected| <= rtol (|expected| + floor * scale)``, row by row (one row per order),
    ``scale`` the row's largest ``|expected|``: near a zero of f^(n) only accuracy relative to the
    order's magnitude is meaningful, so a small absolute part scaled by that magnitude is added."""
    scale = np.abs(expected).max(axis=-1, keepdims=True)
    bad = np.abs(actual - expected) > rtol * (np.abs(expected) + floor * scale)
    assert not bad.any(), f"orders {np.nonzero(bad.any(axis=-1))[0].tolist()}:\nactual\n{actual}\nexpected\n{expected}"


def test_the_oracle_covers_the_whole_table():
    assert set(EXACT) == set(ACTIVATIONS)
    assert {name for name in NAMES if not ACTIVATIONS[name].smooth} == {"relu", "leaky_relu"}


@pytest.mark.parametrize("name", NAMES)
def test_orders_0_to_8_match_sympy_in_float64(name):
    # Each order is a few roundings of well-conditioned sums: measured <= 72 eps relative at these
    # points (silu), so 1e3 eps (2e-13) leaves margin and still catches any wrong coefficient.
    derivs = ACTIVATIONS[name].derivatives(POINTS, ORDER)
    assert derivs.shape == (ORDER + 1, len(POINTS)) and derivs.dtype == np.float64
    assert_close_per_order(derivs, exact_stack(name), rtol=1e3 * EPS64, floor=1e-3)


TAILS = (-30.0, -20.0, 20.0, 30.0)


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "softplus", "silu", "gelu", "gaussian", "elu", "exp"])
def test_tails_are_accurate_relative_to_their_tiny_values(name):
    # Far out, f^(n) is ~1e-26 (tanh'), ~1e-196 (gaussian): formulas like 1 - tanh^2 or
    # 1 - sigmoid would return 0 or noise there. Purely relative tolerance, no absolute part.
    derivs = ACTIVATIONS[name].derivatives(np.array(TAILS), 4)
    assert_close_per_order(derivs, exact_stack(name, TAILS, 4), rtol=1e3 * EPS64, floor=0.0)


@pytest.mark.parametrize("name", NAMES)
def test_float32_stays_float32_and_matches_float64(name):
    z32 = np.linspace(-5, 5, 41, dtype=np.float32).reshape(1, 41)  # any shape is accepted
    derivs32 = ACTIVATIONS[name].derivatives(z32, ORDER)
    derivs64 = ACTIVATIONS[name].derivatives(z32.astype(np.float64), ORDER)  # the same points
    assert derivs32.dtype == np.float32 and derivs32.shape == (ORDER + 1, 1, 41)
    # float32 transcendentals are good to ~1 ulp, and the recurrences amplify that to <= 35 ulp
    # (measured, relative to |f^(n)| + 1e-2 of the order's magnitude): 1e-5 is ~84 ulp.
    assert_close_per_order(derivs32[:, 0], derivs64[:, 0], rtol=1e-5, floor=1e-2)


# f, f', f'' ... at z = -1e4 and +1e4: (value, first derivative, every higher derivative).
LIMITS = {
    "identity": ((-1e4, 1, 0), (1e4, 1, 0)),
    "tanh": ((-1, 0, 0), (1, 0, 0)),
    "sigmoid": ((0, 0, 0), (1, 0, 0)),
    "softplus": ((0, 0, 0), (1e4, 1, 0)),
    "exp": ((0, 0, 0), (np.inf, np.inf, np.inf)),
    "gaussian": ((0, 0, 0), (0, 0, 0)),
    "gelu": ((0, 0, 0), (1e4, 1, 0)),
    "silu": ((0, 0, 0), (1e4, 1, 0)),
    "elu": ((-1, 0, 0), (1e4, 1, 0)),
    "relu": ((0, 0, 0), (1e4, 1, 0)),
    "leaky_relu": ((-100, 0.01, 0), (1e4, 1, 0)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_extreme_arguments_are_finite_and_have_the_right_limits(name, dtype):
    z = np.array([-1e4, -1e3, -1e2, 1e2, 1e3, 1e4], dtype=dtype)
    derivs = ACTIVATIONS[name].derivatives(z, 10)  # no warning: the module is run with -W error
    assert derivs.dtype == dtype
    if name == "exp":  # the one exception: exp(z) is not representable above ~88 / ~709
        assert np.isinf(derivs[:, z > np.log(np.finfo(dtype).max)]).all()
        assert np.isfinite(derivs[:, z < np.log(np.finfo(dtype).max)]).all()
    else:
        assert np.isfinite(derivs).all()
    if name in ("sin", "cos"):
        assert (np.abs(derivs) <= 1).all()
        return
    for column, (value, first, higher) in zip((0, -1), LIMITS[name], strict=True):
        expected = np.array([value, first] + [higher] * 9, dtype=dtype)
        np.testing.assert_allclose(derivs[:, column], expected, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_any_finite_z_is_safe(name, dtype):
    huge = np.finfo(dtype).max
    derivs = ACTIVATIONS[name].derivatives(np.array([-huge, huge], dtype=dtype), 6)  # no warning
    assert np.isfinite(derivs[:, 0]).all() and (name == "exp" or np.isfinite(derivs[:, 1]).all())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_is_not_clamped_and_tails_are_exact(dtype):
    z = np.array([-1e4, 1e4], dtype=dtype)
    assert ACTIVATIONS["softplus"](z)[1] == dtype(1e4)
    assert ACTIVATIONS["sigmoid"](z)[0] == 0
    assert ACTIVATIONS["gelu"](z)[0] == 0  # -0.0 == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_order_30_is_finite_at_moderate_z(name, dtype):
    derivs = ACTIVATIONS[name].derivatives(np.linspace(-4, 4, 33, dtype=dtype), 30)
    assert derivs.shape == (31, 33) and np.isfinite(derivs).all()


def test_high_orders_at_zero_match_series_coefficients():
    # Independent of any recurrence: tanh^(2m-1)(0) = 2^(2m) (2^(2m) - 1) B_(2m) / (2m),
    # sigmoid^(n)(0) = tanh^(n)(0) / 2^(n+1), and exp(-z^2/2)^(2m)(0) = (-1)^m (2m - 1)!!.
    orders = range(31)
    tanh_at_0 = [0.0] + [
        float(2 ** (n + 1) * (2 ** (n + 1) - 1) * sp.bernoulli(n + 1) / (n + 1)) if n % 2 else 0.0 for n in orders[1:]
    ]
    gaussian_at_0 = [(-1) ** (n // 2) * float(sp.factorial2(n - 1)) if n % 2 == 0 else 0.0 for n in orders]
    sigmoid_at_0 = [0.5] + [t / 2.0 ** (n + 1) for n, t in zip(orders[1:], tanh_at_0[1:], strict=True)]
    for name, expected in (("tanh", tanh_at_0), ("sigmoid", sigmoid_at_0), ("gaussian", gaussian_at_0)):
        np.testing.assert_allclose(ACTIVATIONS[name].derivatives(np.zeros(1), 30)[:, 0], expected, rtol=1e-13)


@pytest.mark.property
@given(
    name=st.sampled_from(NAMES),
    z=st.lists(st.floats(-60, 60, allow_nan=False), min_size=1, max_size=5),
    k=st.integers(0, 12),
    data=st.data(),
)
def test_a_lower_order_stack_is_a_prefix_of_a_higher_one(name, z, k, data):
    j = data.draw(st.integers(0, k), label="j")
    derivatives = ACTIVATIONS[name].derivatives
    np.testing.assert_array_equal(derivatives(np.array(z), k)[: j + 1], derivatives(np.array(z), j))


@pytest.mark.property
@given(name=st.sampled_from(NAMES), z=st.floats(-4, 4), n=st.integers(1, 8))
def test_each_order_is_the_central_difference_of_the_one_below(name, z, n):
    h = 1e-5
    if abs(z) < 2 * h:  # relu, leaky_relu and elu have a kink at 0
        z = 0.5
    points = np.array([z - h, z, z + h])
    derivs = ACTIVATIONS[name].derivatives(points, n)
    central = (derivs[n - 1, 2] - derivs[n - 1, 0]) / (2 * h)
    # Truncation ~ h^2 f^(n+2) / 6 and rounding ~ eps |f^(n-1)| / h, both well under 1e-5 here.
    assert math.isclose(central, derivs[n, 1], rel_tol=1e-5, abs_tol=1e-5 * (1 + abs(derivs[n - 1, 1])))


def test_value_is_order_zero_for_any_shape():
    z = np.linspace(-2, 2, 12).reshape(3, 4)
    for activation in ACTIVATIONS.values():
        assert activation(z).shape == (3, 4)
        np.testing.assert_array_equal(activation(z), activation.derivatives(z, 3)[0])
    assert ACTIVATIONS["tanh"].derivatives(0.5, 2).shape == (3,)  # a scalar gives one column


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2", None])
def test_a_bad_order_raises(bad):
    with pytest.raises(OrderError, match="non-negative integer"):
        ACTIVATIONS["tanh"].derivatives(np.zeros(2), bad)


def test_integer_input_is_computed_in_float64_and_complex_is_refused():
    assert ACTIVATIONS["tanh"].derivatives(np.arange(3), 1).dtype == np.float64
    with pytest.raises(DTypeError, match="complex"):
        ACTIVATIONS["tanh"].derivatives(np.zeros(2, dtype=complex), 1)


def test_get_activation_by_name_case_alias_or_instance():
    assert get_activation("tanh") is ACTIVATIONS["tanh"]
    assert get_activation("GELU") is ACTIVATIONS["gelu"]
    assert get_activation(" Leaky_ReLU ") is ACTIVATIONS["leaky_relu"]
    for alias, name in ALIASES.items():
        assert get_activation(alias.upper()) is ACTIVATIONS[name]
    custom = Activation("cube", lambda z, k: np.stack([z**3, 3 * z**2, 6 * z, 6 + 0 * z][: k + 1]), formula="z**3")
    assert get_activation(custom) is custom
    assert custom(np.array([2.0]))[0] == 8.0


@pytest.mark.parametrize("bad", ["tanhh", "", None, 3])
def test_get_activation_unknown_names_the_value_and_every_known_name(bad):
    with pytest.raises(UnknownActivationError) as info:
        get_activation(bad)
    message = str(info.value)
    assert repr(bad) in message
    assert all(name in message for name in NAMES) and "swish" in message
    assert isinstance(info.value, ValueError)
