"""Hypothesis strategies shared by the tests: networks as plain descriptions, and points.

A network *description* ("spec") is a list of layers ``(W, b, activation)``: ``W`` of shape
``(n_in, n_out)``, ``b`` of shape ``(n_out,)``, float64 arrays, and ``activation`` a name from
:data:`ACTIVATIONS` or ``None`` for a linear layer. It means ``z = h @ W + b``,
``h' = activation(z)``, layer after layer. It is plain data, so the oracles
(:mod:`oracles`) read it without nnderiv; :func:`build_model` turns it into an nnderiv model.

Sizes are bounded so that every example runs in milliseconds, and scaled so that finite
differences stay accurate: weights ``N(0, 1) / sqrt(n_in)``, biases ``N(0, 0.5^2)`` (never zero,
so the bias paths are exercised), points in ``[-1, 1]``.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

#: activations with derivatives of every order everywhere (elu only away from 0, see FD_SMOOTH)
SMOOTH = ("identity", "tanh", "sigmoid", "softplus", "sin", "cos", "exp", "gaussian", "gelu", "silu", "elu")
#: smooth activations whose finite differences are accurate everywhere: elu is only C^1 at 0
#: (``elu''`` jumps from 1 to 0), so a stencil straddling its kink gives a wrong difference
FD_SMOOTH = tuple(name for name in SMOOTH if name != "elu")
#: derivatives above the first are zero almost everywhere
NONSMOOTH = ("relu", "leaky_relu")
ACTIVATIONS = SMOOTH + NONSMOOTH


def random_spec(rng: np.random.Generator, widths, activations, *, output_activation=None):
    """A network description with the given ``widths`` ``[d, ..., m]``, drawn from ``rng``.

    Hidden layer ``l`` gets ``activations[l % len(activations)]``; the last layer is linear unless
    ``output_activation`` is given.
    """
    spec = []
    n_layers = len(widths) - 1
    for layer, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        W = rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)
        b = rng.normal(scale=0.5, size=n_out)
        last = layer == n_layers - 1
        spec.append((W, b, output_activation if last else activations[layer % len(activations)]))
    return spec


def _at_most_one_exp(activations) -> bool:
    """exp of exp of exp overflows float64 (exp(exp(exp(2))) > 1e700): allow one exp per network."""
    return list(activations).count("exp") <= 1


@st.composite
def networks(
    draw,
    max_depth: int = 4,
    max_d: int = 5,
    max_m: int = 3,
    activations=SMOOTH,
    dtype="float64",
    *,
    min_depth: int = 1,
    max_width: int = 6,
    d=None,
    output_activation: bool = False,
):
    """A network description (see the module docstring).

    ``depth`` hidden layers (``min_depth .. max_depth``), each with its own width
    (``1 .. max_width``) and activation drawn from ``activations`` (``exp`` at most once: chains of
    exponentials overflow); ``d`` inputs (``1 .. max_d``, or
    fixed), ``m`` outputs (``1 .. max_m``); the output layer is linear, or (with
    ``output_activation``) may end with an activation too. The weights come from a drawn seed and
    are rounded to ``dtype`` (then held as float64, so oracles and models see the same numbers).
    Pass ``activations=FD_SMOOTH`` for finite-difference oracles.
    """
    d = draw(st.integers(1, max_d)) if d is None else d
    m = draw(st.integers(1, max_m))
    depth = draw(st.integers(min_depth, max_depth))
    widths = [d, *(draw(st.integers(1, max_width)) for _ in range(depth)), m]
    hidden = draw(st.lists(st.sampled_from(activations), min_size=depth, max_size=depth).filter(_at_most_one_exp))
    last = draw(st.sampled_from((None, *activations))) if output_activation else None
    if last == "exp" and "exp" in hidden:
        last = None
    seed = draw(st.integers(0, 2**32 - 1))
    spec = random_spec(np.random.default_rng(seed), widths, hidden or [None], output_activation=last)
    return [(W.astype(dtype).astype(np.float64), b.astype(dtype).astype(np.float64), act) for W, b, act in spec]


def points(d: int, n=None, *, bound: float = 1.0):
    """Points ``(n, d)`` in ``[-bound, bound]``, float64; ``n`` an int, a strategy of ints, or by
    default 1 to 3 points."""
    n = st.integers(1, 3) if n is None else st.just(n) if isinstance(n, int) else n
    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=64)
    return n.flatmap(lambda rows: hnp.arrays(np.float64, (rows, d), elements=elements))


def spec_inputs(spec) -> int:
    """``d``, the number of inputs of a description."""
    return spec[0][0].shape[0]


def spec_outputs(spec) -> int:
    """``m``, the number of outputs of a description."""
    return spec[-1][0].shape[1]


def param_names(spec) -> list[tuple[str, str]]:
    """``[(name of W, name of b)]`` per layer, as nnderiv's Sequential built by :func:`build_model` names them."""
    names, position = [], 0
    for _, _, activation in spec:
        names.append((f"{position}.W", f"{position}.b"))
        position += 1 if activation is None else 2
    return names


def spec_params(spec, dtype="float64") -> dict[str, np.ndarray]:
    """The parameters of a description, named as :func:`build_model`'s model names them."""
    params = {}
    for (W, b, _), (w_name, b_name) in zip(spec, param_names(spec)):
        params[w_name], params[b_name] = W.astype(dtype), b.astype(dtype)
    return params


def spec_with_params(spec, params) -> list:
    """The description with its arrays replaced by ``params`` (named as :func:`spec_params`)."""
    return [(params[w_name], params[b_name], act) for (_, _, act), (w_name, b_name) in zip(spec, param_names(spec))]


def build_model(spec, dtype="float64"):
    """The nnderiv ``Sequential`` of a description: ``Dense`` then ``Activation`` per layer."""
    import nnderiv as nd

    layers = []
    for W, _, activation in spec:
        layers.append(nd.Dense(*W.shape, dtype=dtype))
        if activation is not None:
            layers.append(nd.Activation(activation))
    model = nd.Sequential(*layers)
    model.set_params(spec_params(spec, dtype))
    return model
