"""Reference computations that share no code with the nnderiv engine.

Everything here works on the plain network description of :mod:`strategies` -- a list of layers
``(W, b, activation)`` with ``z = h @ W + b`` and ``h' = activation(z)`` (``activation`` a name, or
``None`` for a linear layer) -- or on a black-box function ``f: (N, d) -> (N, m)``. Nothing imports
``nnderiv``: a bug in the engine cannot hide in its own reference.

- :func:`numpy_forward`: the network's value, written directly with NumPy.
- :func:`richardson_partial`: any mixed partial of a black box by central finite differences with
  Richardson extrapolation (Ridders' choice of step; accuracy per order: see :data:`FD_DEFAULTS`).
- :func:`sympy_network`, :func:`sympy_partials`: exact symbolic derivatives of a tiny network,
  evaluated with mpmath to about 30 digits.
- :func:`taylor_majorant`: the size of the terms summed into a directional derivative, cancellations
  undone: the scale of its float64 rounding error, for the tolerances of consistency checks.
- :func:`check_grads`: directional-derivative check of hand-written parameter gradients.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping

import mpmath
import numpy as np
import sympy as sp

# --------------------------------------------------------------------------------------------
# a plain forward pass

_erf = np.vectorize(math.erf, otypes=[np.float64])

NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda z: z,
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "softplus": lambda z: np.logaddexp(0, z),
    "sin": np.sin,
    "cos": np.cos,
    "exp": np.exp,
    "gaussian": lambda z: np.exp(-(z**2) / 2),
    "gelu": lambda z: z * (1 + _erf(z / math.sqrt(2)).astype(z.dtype)) / 2,
    "silu": lambda z: z / (1 + np.exp(-z)),
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
    "relu": lambda z: np.maximum(z, 0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
}


def numpy_forward(spec, x: np.ndarray) -> np.ndarray:
    """The network's outputs ``(N, m)`` at ``x (N, d)``, in the dtype of ``x``."""
    h = np.asarray(x)
    for W, b, activation in spec:
        z = h @ W.astype(h.dtype) + b.astype(h.dtype)
        h = z if activation is None else NUMPY_ACTIVATIONS[activation](z)
    return h


# --------------------------------------------------------------------------------------------
# finite differences with Richardson extrapolation

#: ``order k -> (h, levels)``: first step ``0.2 k``, then 6 halvings (smallest step ``h / 64``),
#: for networks of :func:`strategies.networks` at points in [-1, 1], float64. Rounding error grows
#: as the step shrinks (``~eps |f| 2^k / step^k``), truncation as it grows; Ridders' choice of the
#: tableau entry with the smallest error estimate balances the two per entry, so steep networks
#: (large weights: large high derivatives) do not need a smaller fixed step. Worst errors measured,
#: relative to ``max(|k-th derivatives|, |f|, 1)``, on 900 random networks (3 multi-indices per
#: order, leaving out the 0.2% whose error estimate exceeds the tolerance): order 1: 3e-13,
#: 2: 5e-11, 3: 4e-9, 4: 2e-7, 5: 7e-6 (medians 1.5e-14, 7e-13, 3e-11, 8e-10, 1e-8).
FD_DEFAULTS = {k: (0.2 * k, 7) for k in range(1, 9)}


def _stencil(multi_index: tuple[int, ...], h: float):
    """Offsets ``(S, d)`` and weights ``(S,)`` of the tensor-product central difference.

    Along input ``i`` the ``a``-th central difference is
    ``sum_j (-1)^j C(a, j) f(x + (a/2 - j) h e_i) / h^a = d^a f / dx_i^a + O(h^2)``, an expansion in
    even powers of ``h`` only (it is ``(2 sinh(h D / 2) / h)^a``), so the product over inputs is too.
    """
    per_axis = []
    for a in multi_index:
        per_axis.append([((a / 2 - j) * h, (-1) ** j * math.comb(a, j)) for j in range(a + 1)])
    offsets, weights = [], []
    for combo in itertools.product(*per_axis):
        offsets.append([offset for offset, _ in combo])
        weights.append(math.prod(weight for _, weight in combo))
    return np.array(offsets, dtype=np.float64), np.array(weights, dtype=np.float64)


def central_difference(f, x: np.ndarray, multi_index, h: float) -> np.ndarray:
    """One central-difference estimate ``(N, m)`` of ``d^alpha f`` with step ``h`` (one call of ``f``)."""
    alpha = tuple(int(a) for a in multi_index)
    offsets, weights = _stencil(alpha, h)
    n, d = x.shape
    shifted = (x[None, :, :] + offsets[:, None, :]).reshape(-1, d)
    values = np.asarray(f(shifted), dtype=np.float64).reshape(len(weights), n, -1)
    return np.tensordot(weights, values, axes=1) / h ** sum(alpha)


def richardson_partial(f, x, multi_index, h: float | None = None, levels: int | None = None, *, return_error=False):
    """``d^alpha f`` at ``x (N, d)`` for a black box ``f: (N, d) -> (N, m)``: an array ``(N, m)``.

    ``multi_index`` counts the differentiations per input (``(2, 1)`` is ``d^3 f / dx0^2 dx1``).
    Central differences at steps ``h, h/2, ..., h/2^(levels-1)`` fill Richardson's tableau (see
    :func:`richardson_tableau`); as in Ridders' method, each entry of the result is the tableau
    entry whose error estimate (its distance to its two neighbours) is smallest. Defaults per
    order: :data:`FD_DEFAULTS`. With ``return_error`` also returns that estimate.
    """
    x = np.asarray(x, dtype=np.float64)
    alpha = tuple(int(a) for a in multi_index)
    if len(alpha) != x.shape[1]:
        raise ValueError(f"multi_index {alpha} must have one count per input ({x.shape[1]})")
    order = sum(alpha)
    default_h, default_levels = FD_DEFAULTS.get(order, (0.2 * order, 7))
    h = default_h if h is None else h
    levels = default_levels if levels is None else levels
    if order == 0:
        result = np.asarray(f(x), dtype=np.float64)
        return (result, np.zeros_like(result)) if return_error else result
    best, error = _best_of_tableau([central_difference(f, x, alpha, h / 2**i) for i in range(levels)])
    return (best, error) if return_error else best


def richardson_tableau(estimates):
    """Rows of Richardson's tableau for estimates at steps ``h, h/2, h/4, ...`` whose error is a
    series in ``h^2``: ``T[i][j] = T[i][j-1] + (T[i][j-1] - T[i-1][j-1]) / (4^j - 1)`` removes the
    error term ``h^(2j)``; ``T[i][i]`` has error ``O(h^(2i+2))``."""
    rows = [[estimates[0]]]
    for i in range(1, len(estimates)):
        row = [estimates[i]]
        for j in range(1, i + 1):
            row.append(row[j - 1] + (row[j - 1] - rows[i - 1][j - 1]) / (4**j - 1))
        rows.append(row)
    return rows


def _best_of_tableau(estimates):
    """Per entry, the extrapolated value with the smallest error estimate
    ``max(|T[i][j] - T[i][j-1]|, |T[i][j] - T[i-1][j-1]|)``, and that estimate."""
    rows = richardson_tableau(estimates)
    if len(rows) == 1:
        return rows[0][0], np.full_like(rows[0][0], np.inf)
    values, errors = [], []
    for i in range(1, len(rows)):
        for j in range(1, i + 1):
            values.append(rows[i][j])
            errors.append(np.maximum(np.abs(rows[i][j] - rows[i][j - 1]), np.abs(rows[i][j] - rows[i - 1][j - 1])))
    values, errors = np.array(values), np.array(errors)
    choice = np.argmin(errors, axis=0)[None]
    return np.take_along_axis(values, choice, 0)[0], np.take_along_axis(errors, choice, 0)[0]


# --------------------------------------------------------------------------------------------
# exact derivatives of tiny networks with SymPy

SYMPY_ACTIVATIONS: dict[str, Callable] = {
    "identity": lambda z: z,
    "tanh": sp.tanh,
    "sigmoid": lambda z: 1 / (1 + sp.exp(-z)),
    "softplus": lambda z: sp.log(1 + sp.exp(z)),
    "sin": sp.sin,
    "cos": sp.cos,
    "exp": sp.exp,
    "gaussian": lambda z: sp.exp(-(z**2) / 2),
    "gelu": lambda z: z * (1 + sp.erf(z / sp.sqrt(2))) / 2,
    "silu": lambda z: z / (1 + sp.exp(-z)),
    "elu": lambda z: sp.Piecewise((z, z > 0), (sp.exp(z) - 1, True)),
}


def sympy_network(spec):
    """``(inputs, outputs, parameters)``: the network as SymPy expressions.

    ``inputs`` are the symbols ``x0 .. x{d-1}``, ``outputs`` a list of ``m`` expressions in them and
    in parameter symbols ``W<l>_<i>_<j>``, ``b<l>_<j>``; ``parameters`` maps each parameter symbol to
    its value, the float64 number of ``spec`` held exactly (symbols keep the expressions small:
    SymPy differentiates them much faster than 40-digit numbers).
    """
    n_inputs = spec[0][0].shape[0]
    inputs = sp.symbols(f"x0:{n_inputs}")
    h, parameters = list(inputs), {}
    for layer, (W, b, activation) in enumerate(spec):
        n_in, n_out = W.shape
        z = []
        for j in range(n_out):
            b_j = sp.Symbol(f"b{layer}_{j}")
            parameters[b_j] = float(b[j])
            terms = []
            for i in range(n_in):
                w_ij = sp.Symbol(f"W{layer}_{i}_{j}")
                parameters[w_ij] = float(W[i, j])
                terms.append(w_ij * h[i])
            z.append(sp.Add(*terms, b_j))
        h = z if activation is None else [SYMPY_ACTIVATIONS[activation](z_j) for z_j in z]
    return inputs, h, parameters


def multi_indices(d: int, order: int):
    """All multi-indices ``alpha`` in ``d`` inputs with ``|alpha| == order`` (independent of nnderiv)."""
    return [alpha for alpha in itertools.product(range(order + 1), repeat=d) if sum(alpha) == order]


def sympy_partials(spec, points, max_order: int, digits: int = 30) -> dict[tuple, np.ndarray]:
    """``{alpha: (N, m) array}`` of every exact partial ``d^alpha f`` with ``|alpha| <= max_order``.

    Each partial is differentiated symbolically from one of lower order (``d^alpha = d/dx_i
    d^(alpha - e_i)``), then all are compiled once to mpmath (common subexpressions shared) and
    evaluated at ``digits`` significant digits; the result is rounded to float64 (so it is exact to
    half an ulp). Affordable for tiny networks: ``d <= 2``, width ``<= 3``, two hidden layers.
    """
    inputs, outputs, parameters = sympy_network(spec)
    d = len(inputs)
    expressions = {(0,) * d: outputs}
    for order in range(1, max_order + 1):
        for alpha in multi_indices(d, order):
            i = next(i for i, a in enumerate(alpha) if a > 0)
            lower = alpha[:i] + (alpha[i] - 1,) + alpha[i + 1 :]
            expressions[alpha] = [sp.diff(e, inputs[i]) for e in expressions[lower]]
    alphas = list(expressions)
    flat = [e for alpha in alphas for e in expressions[alpha]]
    compiled = sp.lambdify([*inputs, *parameters], flat, modules="mpmath", cse=True)
    points = np.asarray(points, dtype=np.float64)
    m = len(outputs)
    results = {alpha: np.empty((len(points), m)) for alpha in alphas}
    with mpmath.workdps(digits):
        values = [mpmath.mpf(float(v)) for v in parameters.values()]
        for n, point in enumerate(points):
            exact = compiled(*(mpmath.mpf(float(c)) for c in point), *values)
            for a, alpha in enumerate(alphas):
                results[alpha][n] = [float(v) for v in exact[a * m : (a + 1) * m]]
    return results


def sympy_partial(spec, x_point, multi_index, digits: int = 30) -> np.ndarray:
    """One exact partial ``d^alpha f`` at one point ``x_point (d,)``: an array ``(m,)``."""
    alpha = tuple(int(a) for a in multi_index)
    partials = sympy_partials(spec, np.asarray(x_point, dtype=np.float64)[None, :], sum(alpha), digits)
    return partials[alpha][0]


# --------------------------------------------------------------------------------------------
# the size of the terms a Taylor coefficient sums (for tolerances)


@functools.cache
def _activation_derivatives(activation: str, order: int):
    """``z -> [act(z), act'(z), ..., act^(order)(z)]`` (floats), differentiated by SymPy."""
    z = sp.Symbol("z")
    expression = SYMPY_ACTIVATIONS[activation](z)
    derivatives = [expression]
    for _ in range(order):
        derivatives.append(sp.diff(derivatives[-1], z))
    compiled = sp.lambdify(z, derivatives, modules="mpmath")
    return lambda value: np.array([float(v) for v in compiled(mpmath.mpf(float(value)))])


def _series_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cauchy product of two truncated series stacked on axis 0 (coefficient ``k`` at ``[k]``)."""
    out = np.zeros_like(a)
    for k in range(len(a)):
        out[k] = sum(a[i] * b[k - i] for i in range(k + 1))
    return out


def taylor_majorant(spec, x: np.ndarray, V: np.ndarray, order: int, *, sensitivity: bool = True) -> np.ndarray:
    """``(N, m, R, order + 1)``: for each point, output and direction ``V[n, r]``, the size of the
    terms summed into ``d^k/dt^k f(x + t v)``, cancellations undone.

    A float64 engine computing that derivative adds up products of weights, activation derivatives
    and lower coefficients; its rounding error is a few ulp of the *sum of their absolute values*,
    which is much larger than the result where the terms cancel (a hidden unit's contribution
    cancelling another's, a fourth derivative crossing zero). This is that sum: the same series
    composition as the derivative itself (``z(t) = h(t) @ W + b``, then ``h = sum_j act^(j)(z_0)
    u(t)^j / j!`` with ``u = z - z_0``), with every weight, activation derivative and coefficient
    replaced by its absolute value. With ``sensitivity`` it also adds the first-order effect of the
    rounding of each pre-activation ``z_0`` (``|act^(j+1)(z_0)| |z_0|-terms u^j / j!``), which moves
    every coefficient of that layer. Activation derivatives come from SymPy, not from nnderiv.
    """
    x, V = np.asarray(x, dtype=np.float64), np.asarray(V, dtype=np.float64)
    N, R, _ = V.shape
    h = np.zeros((order + 1, N, R, x.shape[1]))  # the series along each direction, normalized (c_k = f^(k)/k!)
    size = np.zeros_like(h)
    h[0], size[0] = x[:, None, :], np.abs(x[:, None, :])
    if order >= 1:
        h[1], size[1] = V, np.abs(V)
    for W, b, activation in spec:
        z, z_size = h @ W, size @ np.abs(W)
        z[0] += b
        z_size[0] += np.abs(b)
        if activation is None or activation == "identity":
            h, size = z, z_size
            continue
        # z_0 is the same along every direction: the derivatives once per point and unit
        at_points = np.vectorize(_activation_derivatives(activation, order + 1), signature="()->(k)")(z[0][:, 0])
        derivatives = np.moveaxis(at_points, -1, 0)[:, :, None, :]  # (order + 2, N, 1, width)
        u, u_size = z.copy(), z_size.copy()
        u[0], u_size[0] = 0.0, 0.0
        h, size = np.zeros_like(z), np.zeros_like(z)
        power, power_size = np.zeros_like(z), np.zeros_like(z)
        power[0], power_size[0] = 1.0, 1.0  # u^0
        for j in range(order + 1):
            h += derivatives[j] / math.factorial(j) * power
            size += np.abs(derivatives[j]) / math.factorial(j) * power_size
            if sensitivity:
                size += np.abs(derivatives[j + 1]) / math.factorial(j) * z_size[0] * power_size
            power, power_size = _series_product(power, u), _series_product(power_size, u_size)
    factorials = np.array([math.factorial(k) for k in range(order + 1)], dtype=np.float64)
    return size.transpose(1, 3, 2, 0) * factorials  # (k, N, R, m) -> (N, m, R, k)


# --------------------------------------------------------------------------------------------
# gradient check


def _richardson_directional(loss, h: float, levels: int) -> float:
    """``d/dt loss(t)`` at ``t = 0`` by central differences at ``h / 2^i`` and Richardson."""
    steps = [h / 2**i for i in range(levels)]
    return richardson_tableau([(loss(step) - loss(-step)) / (2 * step) for step in steps])[-1][-1]


def _norm(arrays) -> float:
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(a, dtype=np.float64)))) for a in arrays))


def _directions(params: dict, n_directions: int, rng: np.random.Generator) -> list[dict]:
    """Unit directions: ``n_directions`` over all parameters, then one inside each array alone."""
    directions = [{k: rng.normal(size=np.shape(p)) for k, p in params.items()} for _ in range(n_directions)]
    for name in params:
        directions.append({k: rng.normal(size=np.shape(p)) * (k == name) for k, p in params.items()})
    return [{k: a / _norm(v.values()) for k, a in v.items()} for v in directions]


def check_grads(
    loss_of_params: Callable[[dict], float],
    params: Mapping[str, np.ndarray] | np.ndarray,
    grads: Mapping[str, np.ndarray] | np.ndarray,
    *,
    n_directions: int = 2,
    rtol: float = 1e-7,
    h: float = 1e-3,
    levels: int = 3,
    seed: int = 0,
) -> None:
    """Assert that ``grads`` is the gradient of the scalar ``loss_of_params`` at ``params``.

    Directional check, cheap for many parameters: for a random unit direction ``v`` the
    hand-written ``<grads, v>`` must match ``d/dt L(params + t v)`` by central differences with
    Richardson extrapolation (error ``O(h^(2 levels))`` plus rounding ``~eps |L| / h``), within
    ``rtol * (|<grads, v>| + |grads|) + 100 eps |L| / h_min``: relative to the largest value
    ``<grads, v>`` can take, so a cancelling direction does not make the test flaky, plus the
    rounding of the differences. Directions are ``n_directions`` over all parameters plus one inside
    each parameter array alone (so an error in a small array, e.g. a bias, is not hidden by a large
    one). ``params`` and ``grads`` are dicts of arrays with the same keys and shapes, or two arrays
    (e.g. for the gradient with respect to the points).
    """
    if isinstance(params, np.ndarray):  # one array (e.g. the points): wrap it as {"x": array}
        options = {"n_directions": n_directions, "rtol": rtol, "h": h, "levels": levels, "seed": seed}
        return check_grads(lambda p: loss_of_params(p["x"]), {"x": params}, {"x": grads}, **options)
    params, grads = dict(params), dict(grads)
    param_shapes = {k: np.shape(p) for k, p in params.items()}
    grad_shapes = {k: np.shape(g) for k, g in grads.items()}
    if grad_shapes != param_shapes:
        raise AssertionError(f"gradient shapes {grad_shapes} differ from parameter shapes {param_shapes}")
    rounding = 100 * np.finfo(np.float64).eps * abs(float(loss_of_params(params))) / (h / 2 ** (levels - 1))
    for v in _directions(params, n_directions, np.random.default_rng(seed)):

        def loss_along(t, v=v):
            return float(loss_of_params({k: params[k] + t * v[k] for k in params}))

        expected = _richardson_directional(loss_along, h, levels)
        claimed = sum(float(np.sum(np.asarray(grads[k], dtype=np.float64) * v[k])) for k in params)
        allowed = rtol * (abs(claimed) + _norm(grads.values())) + rounding
        if not abs(claimed - expected) <= allowed:
            moved = [k for k, a in v.items() if np.any(a)]
            raise AssertionError(
                f"gradient check failed along a direction in {moved}: <grads, v> = {claimed!r}, finite "
                f"differences give {expected!r} (difference {abs(claimed - expected):.3g}, allowed {allowed:.3g})"
            )
    return None


# --------------------------------------------------------------------------------------------
# comparison


def relative_error(actual, expected) -> float:
    """``max |actual - expected| / max |expected|`` (``max |actual - expected|`` when ``expected`` is 0)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shapes differ: {actual.shape} vs expected {expected.shape}")
    if actual.size == 0:
        return 0.0
    error = float(np.max(np.abs(actual - expected)))
    scale = float(np.max(np.abs(expected)))
    return error / scale if scale > 0 else error


def assert_relative_close(actual, expected, rtol: float, what: str = "result") -> None:
    """Assert ``relative_error(actual, expected) <= rtol``, naming ``what`` and the worst entry."""
    error = relative_error(actual, expected)
    if not error <= rtol:
        diff = np.abs(np.asarray(actual, dtype=np.float64) - np.asarray(expected, dtype=np.float64))
        worst = np.unravel_index(np.argmax(diff), diff.shape)
        raise AssertionError(
            f"{what}: relative error {error:.3g} > {rtol:.1g}; worst at index {tuple(int(i) for i in worst)}: "
            f"got {np.asarray(actual)[worst]!r}, expected {np.asarray(expected)[worst]!r}"
        )


# --------------------------------------------------------------------------------------------
# JAX (optional: the callers skip when it is missing)


def jax_activations(jax):
    """The activations of :data:`strategies.ACTIVATIONS` in JAX, by their textbook definitions."""
    jnp = jax.numpy
    return {
        "identity": lambda z: z,
        "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid,
        # jax.nn.softplus is a custom_jvp (logaddexp) that jet cannot trace; log1p(exp(z)) is the
        # same function, accurate for the |z| < 30 of these networks
        "softplus": lambda z: jnp.log1p(jnp.exp(z)),
        "sin": jnp.sin,
        "cos": jnp.cos,
        "exp": jnp.exp,
        "gaussian": lambda z: jnp.exp(-(z**2) / 2),
        "gelu": lambda z: jax.nn.gelu(z, approximate=False),
        "silu": jax.nn.silu,
        "elu": jax.nn.elu,
    }


def jax_network(jax, spec):
    """``(f, params)``: ``f(params, x) -> (..., m)`` for points ``x (..., d)`` (one point or a
    batch), and the description's parameters as a list of ``(W, b)`` JAX arrays."""
    activations = jax_activations(jax)

    def f(params, x):
        h = x
        for (W, b), (_, _, name) in zip(params, spec):
            h = h @ W + b
            h = h if name is None else activations[name](h)
        return h

    return f, [(jax.numpy.asarray(W), jax.numpy.asarray(b)) for W, b, _ in spec]
