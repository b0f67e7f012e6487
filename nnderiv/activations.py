"""Activation functions and all their derivatives, in closed form, as a table.

Convention: ``activation.derivatives(z, k)`` returns the stack

    ``[act(z), act'(z), act''(z), ..., act^(k)(z)]``,  shape ``(k + 1, *z.shape)``,

of plain derivatives (not Taylor coefficients: no ``1/n!``), elementwise, in the dtype of ``z``
(float32 stays float32), for any order ``k >= 0``. Each transcendental is evaluated once per
element; every higher derivative is pure arithmetic on those values:

- tanh and sigmoid solve Riccati equations ``y' = c - y^2`` (tanh: ``y = tanh z``, ``c = 1``;
  sigmoid: ``y = sigma - 1/2``, ``c = 1/4``), so by Leibniz, for ``n >= 1``,
  ``y^(n+1) = -sum_{j=0}^{n} C(n, j) y^(j) y^(n-j)``, seeded with an accurate first derivative:
  ``tanh' = 4e/(1+e)^2`` with ``e = exp(-2|z|)`` (``1 - tanh^2`` cancels at large ``|z|``) and
  ``sigma' = sigma(|z|) sigma(-|z|)`` with ``sigma(|z|) = 1/(1+e)``, ``sigma(-|z|) = e/(1+e)``,
  ``e = exp(-|z|)``. The sum has no cancellation, at ``z = 0`` nor at large ``|z|``: every order
  up to 30 is accurate to ~10 ulp of the local magnitude, in float32 too. (The classical
  ``tanh^(n) = sech^2 Q_n(tanh)`` by Horner, with integer coefficients up to 1e34 at order 30,
  loses up to 5 digits near ``z = 0`` at high orders when written in ``sech^2``, and all of them
  near ``|z| = 4`` when written in ``tanh``.)
- softplus ``= max(z, 0) + log1p(exp(-|z|))``, ``softplus^(n) = sigma^(n-1)``.
- silu ``= z sigma(z)`` and gelu ``= z Phi(z)``: ``(z F)^(n) = z F^(n) + n F^(n-1)``.
- gaussian ``g = exp(-z^2/2)``: ``g^(n) = (-1)^n He_n(z) g``, by the Hermite recurrence applied to
  the products themselves, ``g^(n+1) = -z g^(n) - n g^(n-1)``, which never overflows (where ``g``
  underflows to 0 so do all its derivatives, instead of ``inf * 0``).
- gelu: ``Phi(z) = erfc(-z/sqrt 2) / 2``, ``Phi^(n) = phi^(n-1)``, ``phi = g / sqrt(2 pi)``.
- sin, cos: the cycle ``sin, cos, -sin, -cos``; exp: ``exp(z)`` at every order (it overflows to
  ``inf`` above ~709 in float64, ~88 in float32, where the value itself is not representable).
- identity, relu, leaky_relu (slope 0.01), elu (``expm1(z)`` for ``z <= 0``): piecewise. At the
  kink ``z = 0`` the left-hand value is used (``relu'(0) = 0``, as in PyTorch). Derivatives of
  relu and leaky_relu above the first are zero almost everywhere (``smooth=False``): useless in a
  loss that contains second or higher input-derivatives.

Adding an activation is one row of ``_TABLE``: a name, a ``fill(z, out)`` that writes orders
``0 .. len(out) - 1`` into ``out``, a formula and the ``smooth`` flag.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field

import numba
import numpy as np

from .errors import DTypeError, OrderError, UnknownActivationError

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
#: Beyond these |z|, exp(-2|z|) and exp(-z**2/2) are exactly 0 in float32 and float64 (exp(-800) is):
#: capping |z| there changes nothing, and keeps 2|z| and z**2 finite for any finite z.
_TANH_CUTOFF = 400.0
_GAUSSIAN_CUTOFF = 40.0
_LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class Activation:
    """An elementwise activation with closed-form derivatives of every order.

    ``derivatives(z, k)`` returns ``[act(z), act'(z), ..., act^(k)(z)]``, shape ``(k + 1, *z.shape)``.

    >>> act = get_activation("sin")
    >>> act.derivatives(np.array([0.0, np.pi / 2]), 2).round(12)
    array([[ 0.,  1.],
           [ 1.,  0.],
           [-0., -1.]])
    """

    name: str
    derivatives: Callable[[np.ndarray, int], np.ndarray] = field(repr=False)
    smooth: bool = True
    formula: str = ""

    def __call__(self, z) -> np.ndarray:
        """The activation's value at ``z`` (any shape).

        >>> get_activation("relu")(np.array([-1.0, 2.0]))
        array([0., 2.])
        """
        return self.derivatives(z, 0)[0]


# --- fills: fill(z, out) writes orders 0 .. len(out) - 1 at the flat z into out (len(out), z.size) ---


def _fill_riccati(y, out):
    """Orders 2, 3, ... of a solution of ``y' = c - y^2``, given ``y`` and ``out[1] = y'``.

    By Leibniz, ``y^(n+1) = -(y^2)^(n) = -sum_{j=0}^{n} C(n, j) y^(j) y^(n-j)`` for ``n >= 1``.
    ``out[0]`` is not read: it may hold ``y`` plus a constant.
    """
    for n in range(1, len(out) - 1):
        square = 2.0 * y * out[n]  # the terms j = 0 and j = n
        for j in range(1, n // 2 + 1):  # the others, in symmetric pairs (j, n - j)
            square += (math.comb(n, j) * (1 if 2 * j == n else 2)) * (out[j] * out[n - j])
        np.negative(square, out=out[n + 1])


def _fill_tanh(z, out):
    """tanh solves ``y' = 1 - y^2``; ``sech^2 = 4e/(1+e)^2``, ``e = exp(-2|z|)``, does not cancel."""
    np.tanh(z, out=out[0])
    if len(out) == 1:
        return
    e = np.exp(-2.0 * np.minimum(np.abs(z), _TANH_CUTOFF))
    out[1:2] = 4.0 * e / np.square(1.0 + e)
    _fill_riccati(out[0], out)


def _fill_sigmoid_from(z, e, out):
    """sigmoid given ``e = exp(-|z|)``: ``sigma - 1/2`` solves ``y' = 1/4 - y^2``."""
    upper = 1.0 / (1.0 + e)  # sigma(|z|)
    lower = e * upper  # sigma(-|z|) = 1 - sigma(|z|), to full relative accuracy
    out[:1] = np.where(z >= 0, upper, lower)
    out[1:2] = upper * lower
    _fill_riccati(0.5 * np.tanh(0.5 * z), out)  # sigma - 1/2, without cancelling near 0


def _fill_sigmoid(z, out):
    _fill_sigmoid_from(z, np.exp(-np.abs(z)), out)


def _fill_softplus(z, out):
    """softplus ``= max(z, 0) + log1p(exp(-|z|))`` (never clamped), ``softplus^(n) = sigma^(n-1)``."""
    e = np.exp(-np.abs(z))
    out[0] = np.maximum(z, 0) + np.log1p(e)
    _fill_sigmoid_from(z, e, out[1:])


def _fill_times_z(z, out, factor_fill):
    """``(z F)^(n) = z F^(n) + n F^(n-1)`` where ``factor_fill`` fills the stack of ``F``."""
    factor = np.empty_like(out)
    factor_fill(z, factor)
    np.multiply(z, factor, out=out)
    orders = np.arange(1, len(out), dtype=out.dtype)[:, None]
    out[1:] += orders * factor[:-1]


def _fill_gaussian_from(z, g, out):
    """Derivatives of ``g`` with ``g' = -z g``: ``g^(n+1) = -z g^(n) - n g^(n-1)`` (Hermite)."""
    out[:1] = g
    out[1:2] = -z * g
    for n in range(1, len(out) - 1):
        out[n + 1] = -z * out[n] - n * out[n - 1]


def _gaussian(z):
    return np.exp(-0.5 * np.square(np.minimum(np.abs(z), _GAUSSIAN_CUTOFF)))


def _fill_gaussian(z, out):
    """``exp(-z^2/2)^(n) = (-1)^n He_n(z) exp(-z^2/2)``."""
    _fill_gaussian_from(z, _gaussian(z), out)


@numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)
def _erfc(x):  # numpy has no erf; scipy is not a dependency
    return math.erfc(x)


def _fill_normal_cdf(z, out):
    """``Phi(z) = erfc(-z/sqrt 2)/2`` (accurate for very negative z), ``Phi^(n) = phi^(n-1)``."""
    out[0] = 0.5 * _erfc(-_SQRT_HALF * z)
    _fill_gaussian_from(z, _INV_SQRT_2PI * _gaussian(z), out[1:])


def _fill_gelu(z, out):
    """gelu ``= z Phi(z)``."""
    _fill_times_z(z, out, _fill_normal_cdf)


def _fill_silu(z, out):
    """silu ``= z sigma(z)``."""
    _fill_times_z(z, out, _fill_sigmoid)


def _fill_cycle(out, cycle):
    for offset, value in enumerate(cycle):
        out[offset :: len(cycle)] = value


def _fill_sin(z, out):
    sin, cos = np.sin(z), np.cos(z)
    _fill_cycle(out, (sin, cos, -sin, -cos))


def _fill_cos(z, out):
    sin, cos = np.sin(z), np.cos(z)
    _fill_cycle(out, (cos, -sin, -cos, sin))


def _fill_exp(z, out):
    with np.errstate(over="ignore"):  # exp(z) itself is not representable there: inf is the answer
        out[:] = np.exp(z)


def _fill_identity(z, out):
    out[0] = z
    out[1:2] = 1
    out[2:] = 0


def _fill_relu(z, out):
    """``z`` for ``z > 0``, else 0; the left value at 0."""
    out[0] = np.maximum(z, 0)
    out[1:2] = z > 0
    out[2:] = 0


def _fill_leaky_relu(z, out):
    """``z`` for ``z > 0``, else ``0.01 z``; the left value at 0."""
    positive = z > 0
    out[0] = np.where(positive, z, _LEAKY_SLOPE * z)
    out[1:2] = np.where(positive, 1.0, _LEAKY_SLOPE)
    out[2:] = 0


def _fill_elu(z, out):
    """``z`` for ``z > 0``, else ``expm1(z)``, every derivative ``exp(z)``; the left value at 0."""
    positive = z > 0
    left = np.minimum(z, 0)  # exp on the positive side would overflow, and is not used
    out[0] = np.where(positive, z, np.expm1(left))
    if len(out) > 1:
        exp_left = np.exp(left)
        out[1] = np.where(positive, 1.0, exp_left)
        out[2:] = np.where(positive, 0.0, exp_left)


# --- the table ----------------------------------------------------------------------------------


def _float_array(z) -> np.ndarray:
    array = np.asarray(z)
    if array.dtype in (np.float32, np.float64):
        return array
    if array.dtype.kind in "biu":
        return array.astype(np.float64)
    raise DTypeError(f"activation input must be a float32 or float64 array, got dtype {array.dtype}")


def _closed_form(fill) -> Callable[[np.ndarray, int], np.ndarray]:
    """Turn ``fill(z, out)`` into ``derivatives(z, k)``: checks ``k``, allocates the stack."""

    @functools.wraps(fill)
    def derivatives(z, k: int) -> np.ndarray:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise OrderError(f"derivative order k must be a non-negative integer, got {k!r}")
        z = _float_array(z)
        out = np.empty((int(k) + 1, z.size), dtype=z.dtype)
        with np.errstate(under="ignore"):  # underflow to 0 is the exact limit (e.g. tanh' far out)
            fill(z.reshape(-1), out)  # elementwise: fills work on flat arrays
        return out.reshape(out.shape[0], *z.shape)

    return derivatives


_TABLE = (  # name, fill(z, out), formula, smooth
    ("identity", _fill_identity, "z", True),
    ("tanh", _fill_tanh, "tanh(z)", True),
    ("sigmoid", _fill_sigmoid, "1/(1 + exp(-z))", True),
    ("softplus", _fill_softplus, "log(1 + exp(z))", True),
    ("sin", _fill_sin, "sin(z)", True),
    ("cos", _fill_cos, "cos(z)", True),
    ("exp", _fill_exp, "exp(z)", True),
    ("gaussian", _fill_gaussian, "exp(-z**2/2)", True),
    ("gelu", _fill_gelu, "z*Phi(z), Phi the standard normal CDF", True),
    ("silu", _fill_silu, "z*sigmoid(z)", True),
    ("elu", _fill_elu, "z if z > 0 else exp(z) - 1", True),
    ("relu", _fill_relu, "max(z, 0)", False),
    ("leaky_relu", _fill_leaky_relu, "z if z > 0 else 0.01*z", False),
)

ACTIVATIONS: dict[str, Activation] = {
    name: Activation(name, _closed_form(fill), smooth, formula) for name, fill, formula, smooth in _TABLE
}
ALIASES: dict[str, str] = {"linear": "identity", "swish": "silu"}


def get_activation(spec: str | Activation) -> Activation:
    """The :class:`Activation` named ``spec`` (case-insensitive, aliases allowed), or ``spec`` itself.

    >>> get_activation("Tanh").derivatives(np.array([0.0]), 3)[:, 0]
    array([ 0.,  1., -0., -2.])
    >>> get_activation("swish").name
    'silu'
    """
    if isinstance(spec, Activation):
        return spec
    key = spec.strip().lower() if isinstance(spec, str) else None
    key = ALIASES.get(key, key)
    if key not in ACTIVATIONS:
        aliases = ", ".join(f"{alias} -> {name}" for alias, name in ALIASES.items())
        raise UnknownActivationError(
            f"unknown activation {spec!r}; known activations: {', '.join(ACTIVATIONS)} (aliases: {aliases})"
        )
    return ACTIVATIONS[key]
