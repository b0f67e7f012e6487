"""Cross-checking nnderiv against PyTorch, JAX, or arrays you trust: one call, one table.

:func:`crosscheck` evaluates one network with nnderiv and with a reference, and compares:

- ``value``, ``jacobian``, ``hessian``, ``tensor3``, ... ``tensorK`` (``K = order``), shapes
  ``(N, m) + (d,) * k``, and ``laplacian`` ``(N, m)`` (nnderiv's own Laplacian mode against the
  trace of the reference Hessian);
- with ``params=True``, the gradient of every parameter (``grad 0.W`` ...) of the scalar loss
  ``L = sum_{k <= order} <C_k, tensor(k)>``, its cotangents ``C_k`` standard normal from ``seed``:
  nnderiv's hand-written pullback against the reference's reverse mode.

References: ``"torch"`` nests ``torch.func`` (``jacrev`` once, then ``jacfwd``), vmapped over the
points, with ``torch.autograd.grad`` for the loss; ``"jax"`` does the same with ``jax.jacrev`` /
``jax.jacfwd`` and ``jax.grad`` (float64 inside ``jax.enable_x64``). Neither shares code with
nnderiv's Taylor-coefficient stacks. A dict of arrays keyed by quantity name is compared as it is.

Error measures per quantity: ``max abs`` = ``max |nnderiv - reference|``; ``max rel`` = ``max abs /
max |reference|``; the worst point is the index along the points axis where the abs error peaks.
A quantity agrees when ``max abs <= tolerance * max |reference| + 100 eps``. Default tolerances:

=========  =========================  ==========================================
dtype      derivatives of order k      parameter gradients (loss up to order K)
=========  =========================  ==========================================
float64    1e-10 * 10**max(0, k - 4)   as order K + 1
float32    1e-4 * 10**max(0, k - 4)    as order K + 1
=========  =========================  ==========================================

Measured against torch on ``[2, 32, 32, 32, 1]`` networks (tanh, gelu, sin, softplus), orders 0-6
and gradients: max rel <= 3e-15 in float64, <= 3e-6 in float32, with no growth with the order. The
margins (~1e5 and ~30) absorb deeper and wider networks; the factor 10 per order above 4 guards
the longer Faa di Bruno sums of high orders. Pass ``rtol=`` to impose one tolerance everywhere.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import _validation as check
from .derivatives import derivatives
from .errors import ConfigError, NnderivWarning
from .interop import _leaves, _require, from_onnx, from_torch, to_torch, torch_leaves
from .io import load
from .layers import Sequential, layer_from_config
from .modes.laplacian import laplacian
from .operators import vjp

_NAMES = {0: "value", 1: "jacobian", 2: "hessian"}
_BASE_TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def quantity_order(name: str) -> int | None:
    """The derivative order of a quantity name (``"hessian"`` -> 2, ``"tensor3"`` -> 3), None for others."""
    orders = {v: k for k, v in _NAMES.items()} | {"laplacian": 2}
    if name in orders:
        return orders[name]
    if name.startswith("tensor") and name[6:].isdigit():
        return int(name[6:])
    return None


def tolerance(dtype, order: int) -> float:
    """The default relative tolerance for a quantity of derivative ``order`` in ``dtype``.

    >>> tolerance("float64", 2), tolerance("float64", 6), tolerance("float32", 1)
    (1e-10, 1e-08, 0.0001)
    """
    return _BASE_TOLERANCE[check.float_dtype(dtype)] * 10.0 ** max(0, order - 4)


@dataclass(frozen=True)
class Comparison:
    """One row of a :class:`Report`: ``max_abs``, ``max_rel``, ``worst_point`` (None for gradients)."""

    quantity: str
    max_abs: float
    max_rel: float
    worst_point: int | None
    tolerance: float
    ok: bool


def compare(quantity: str, ours, reference, rtol: float, *, points_axis: bool = True) -> Comparison:
    """Compare two arrays of one quantity (see the module docstring for the measures and verdict).

    >>> compare("value", np.array([[1.0], [2.0]]), np.array([[1.0], [2.5]]), 1e-10)
    Comparison(quantity='value', max_abs=0.5, max_rel=0.2, worst_point=1, tolerance=1e-10, ok=False)
    """
    ours, reference = np.asarray(ours), np.asarray(reference, dtype=np.asarray(ours).dtype)
    check.same_shape(reference, ours.shape, f"the reference {quantity!r} (the shape nnderiv computes)")
    error = np.abs(ours - reference)
    max_abs, scale = float(error.max(initial=0.0)), float(np.abs(reference).max(initial=0.0))
    max_rel = max_abs / scale if scale else (0.0 if max_abs == 0 else float("inf"))
    worst = int(np.unravel_index(np.argmax(error), error.shape)[0]) if points_axis and error.size else None
    atol = 100 * float(np.finfo(ours.dtype).eps)
    return Comparison(quantity, max_abs, max_rel, worst, rtol, bool(max_abs <= rtol * scale + atol))


@dataclass
class Report:
    """The comparisons of one :func:`crosscheck`: ``report.ok``, ``report.failures``, ``str(report)``."""

    reference: str
    dtype: str
    n_points: int
    order: int
    rows: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every quantity agrees within its tolerance."""
        return all(row.ok for row in self.rows)

    @property
    def failures(self) -> list[Comparison]:
        return [row for row in self.rows if not row.ok]

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        header = ["quantity", "max abs err", "max rel err", "worst point", "tolerance", "verdict"]
        body = [
            [r.quantity, f"{r.max_abs:.3g}", f"{r.max_rel:.3g}", "-" if r.worst_point is None else str(r.worst_point)]
            + [f"{r.tolerance:.0e}", "ok" if r.ok else "DISAGREES"]
            for r in self.rows
        ]
        return header, body

    def _title(self) -> str:
        return f"nnderiv vs {self.reference}: {self.n_points} points, order {self.order}, {self.dtype}"

    def _summary(self) -> str:
        if self.ok:
            return f"all {len(self.rows)} quantities agree"
        names = ", ".join(r.quantity for r in self.failures)
        return f"{len(self.failures)} of {len(self.rows)} quantities DISAGREE: {names}"

    def __str__(self) -> str:
        header, body = self._cells()
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines = [self._title()] + [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *body]
        ]
        lines.insert(2, "  ".join("-" * w for w in widths))
        return "\n".join(lines + [f"note: {note}" for note in self.notes] + [self._summary()])

    def __rich__(self):
        """A ``rich`` table (``rich.print(report)``), when rich is installed."""
        from rich.table import Table

        header, body = self._cells()
        table = Table(*header, title=self._title(), caption=self._summary())
        for row in body:
            table.add_row(*row[:-1], row[-1] if row[-1] == "ok" else f"[bold red]{row[-1]}")
        return table


# --------------------------------------------------------------------------------------------
# the model under test


def load_model(model_or_path):
    """``(nnderiv model, torch module or None)`` of a model, a torch module, or an ``.onnx`` / ``.npz`` path."""
    if isinstance(model_or_path, Sequential):
        return model_or_path, None
    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        return (from_onnx(path) if path.lower().endswith(".onnx") else load(path)), None
    if type(model_or_path).__module__.startswith("torch") or hasattr(model_or_path, "named_parameters"):
        return from_torch(model_or_path), model_or_path
    raise ConfigError(
        f"crosscheck takes an nnderiv model, a torch.nn.Module or a path to an .onnx or .npz file, "
        f"got {type(model_or_path).__name__}"
    )


def with_dtype(model: Sequential, dtype) -> Sequential:
    """A copy of ``model`` with its parameters cast to ``dtype`` (float32 or float64)."""
    dtype = check.float_dtype(dtype)

    def recast(config):
        return {
            k: recast(v) if isinstance(v, dict) else [recast(c) for c in v] if isinstance(v, list) else v
            for k, v in config.items()
        } | ({"dtype": dtype.name} if "dtype" in config else {})

    copy = layer_from_config(recast(json.loads(json.dumps(model.config()))))
    copy.set_params({name: theta.astype(dtype) for name, theta in model.params.items()})
    return copy


def _nnderiv_quantities(model, x, order, names, cotangents):
    """``({quantity: array}, {param: gradient} or None)`` computed by nnderiv."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NnderivWarning)  # relu & co: the report carries the note
        if cotangents is None:
            D, grads = derivatives(model, x, order=order), None
        else:
            D, pullback = vjp(derivatives, model, x, order=order)
            grads = pullback(cotangents)
        values = {name: D.tensor(quantity_order(name)) for name in names if name != "laplacian"}
        if "laplacian" in names:
            values["laplacian"] = laplacian(model, x)
    return values, grads


def _random_cotangents(model, x, order, seed):
    rng = np.random.default_rng(seed)
    shape = (x.shape[0], model.n_outputs)
    return {k: rng.standard_normal(shape + (model.n_inputs,) * k).astype(model.dtype) for k in range(order + 1)}


def _reference_quantities(tensors, names):
    """Quantities from the reference's ``[tensor(0), ..., tensor(K)]``; laplacian = trace of the Hessian."""
    values = {name: tensors[quantity_order(name)] for name in names if name != "laplacian"}
    if "laplacian" in names:
        values["laplacian"] = np.trace(tensors[2], axis1=-2, axis2=-1)
    return values


# --------------------------------------------------------------------------------------------
# references


def _torch_reference(model, module, x, order, cotangents):
    """``([tensor(0..order)], {nnderiv param: gradient} or None)`` from torch.func and autograd."""
    torch = _require("torch")
    module = to_torch(model) if module is None else module
    params = {name: p.detach().clone().requires_grad_(cotangents is not None) for name, p in module.named_parameters()}

    def f(point):
        return torch.func.functional_call(module, params, (point.unsqueeze(0),)).squeeze(0)

    per_point, g = [f], torch.func.jacrev(f)
    for _ in range(order):
        per_point.append(g)
        g = torch.func.jacfwd(g)
    threads = torch.get_num_threads()
    try:  # small batched matmuls gain nothing from threads, and spinning OpenMP threads on a busy machine lose 100x
        torch.set_num_threads(1)
        with warnings.catch_warnings():  # torch.func's first forward-mode call imports a module that warns
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
            tensors = [torch.func.vmap(h)(torch.from_numpy(x)) for h in per_point]
        return _torch_results(torch, model, module, params, tensors, cotangents)
    finally:
        torch.set_num_threads(threads)


def _torch_results(torch, model, module, params, tensors, cotangents):
    """The tensors as arrays and, for the loss of ``cotangents``, the gradients under nnderiv's names."""
    if cotangents is None:
        return [t.detach().numpy() for t in tensors], None
    loss = sum((torch.from_numpy(cotangents[k]) * tensors[k]).sum() for k in cotangents)
    linears = [leaf for leaf in torch_leaves(module) if isinstance(leaf, torch.nn.Linear)]
    qualified = {id(m): f"{name}." if name else "" for name, m in module.named_modules()}
    names = [(f"{prefix}W", f"{prefix}b") for prefix, layer in _leaves(model) if hasattr(layer, "n_out")]
    wanted = {}
    for (w_name, b_name), linear in zip(names, linears):
        wanted[w_name] = (params[f"{qualified[id(linear)]}weight"], True)
        if linear.bias is not None:  # a Linear without bias has no gradient to compare with nnderiv's zeros
            wanted[b_name] = (params[f"{qualified[id(linear)]}bias"], False)
    grads = torch.autograd.grad(loss, [p for p, _ in wanted.values()], allow_unused=True, materialize_grads=True)
    gradients = {name: (g.T if transposed else g).numpy() for (name, (_, transposed)), g in zip(wanted.items(), grads)}
    return [t.detach().numpy() for t in tensors], gradients


_JAX_ACTIVATIONS = {
    "identity": lambda jax, z: z,
    "tanh": lambda jax, z: jax.numpy.tanh(z),
    "sigmoid": lambda jax, z: jax.nn.sigmoid(z),
    "softplus": lambda jax, z: jax.nn.softplus(z),
    "sin": lambda jax, z: jax.numpy.sin(z),
    "cos": lambda jax, z: jax.numpy.cos(z),
    "exp": lambda jax, z: jax.numpy.exp(z),
    "gaussian": lambda jax, z: jax.numpy.exp(-0.5 * (z * z)),
    "gelu": lambda jax, z: jax.nn.gelu(z, approximate=False),
    "silu": lambda jax, z: jax.nn.silu(z),
    "elu": lambda jax, z: jax.nn.elu(z),
    "relu": lambda jax, z: jax.nn.relu(z),
    "leaky_relu": lambda jax, z: jax.nn.leaky_relu(z, 0.01),
}


def _jax_reference(model, x, order, cotangents):
    """``([tensor(0..order)], {param: gradient} or None)`` from nested jacrev/jacfwd and jax.grad."""
    jax = _require("jax")
    enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else _require("jax.experimental").enable_x64
    layers = [layer for _, layer in _leaves(model)]

    def f(params, point):
        h, weights = point, iter(params)
        for layer in layers:
            h = (
                h @ next(weights) + next(weights)
                if hasattr(layer, "n_out")
                else _JAX_ACTIVATIONS[layer.activation.name](jax, h)
            )
        return h

    def tensors(params):
        per_point, g = [f], jax.jacrev(f, argnums=1)
        for _ in range(order):
            per_point.append(g)
            g = jax.jacfwd(g, argnums=1)
        return [jax.vmap(h, in_axes=(None, 0))(params, x) for h in per_point]

    def loss(params):
        out = tensors(params)
        return sum(jax.numpy.sum(cotangents[k] * out[k]) for k in cotangents)

    with enable_x64(model.dtype == np.float64):
        params = [jax.numpy.asarray(theta) for theta in model.params.values()]
        values = [np.asarray(t) for t in jax.jit(tensors)(params)]
        grads = None if cotangents is None else [np.asarray(g) for g in jax.jit(jax.grad(loss))(params)]
    return values, None if grads is None else dict(zip(model.params, grads))


# --------------------------------------------------------------------------------------------
# the cross-check


def crosscheck(
    model_or_path,
    x,
    reference="torch",
    order: int = 2,
    *,
    quantities=None,
    params: bool = True,
    seed: int = 0,
    rtol: float | None = None,
) -> Report:
    """Compare nnderiv's outputs, input derivatives and parameter gradients with a reference.

    ``model_or_path``: an nnderiv model, a ``torch.nn.Module`` (converted by
    :func:`~nnderiv.interop.from_torch`; the module itself is then the torch reference), or a path
    to an ``.onnx`` or nnderiv ``.npz`` file. ``x``: points ``(N, d)``, cast to the model's dtype.
    ``reference``: ``"torch"``, ``"jax"``, or a dict of arrays keyed ``"value"``, ``"jacobian"``,
    ``"hessian"``, ``"tensor3"``, ..., ``"laplacian"`` (a key ``"x"`` is ignored, so a saved
    ``.npz`` of points and references can be passed as it is; no gradients are compared then).
    ``order``: compare the tensors of orders 0..``order`` (and the Laplacian from order 2), unless
    ``quantities`` names the ones to compare; the gradients' loss runs over orders 0 to the highest
    compared. ``seed`` draws the loss's cotangents. Measures, verdict and tolerances: see the module
    docstring.

    >>> import numpy as np, nnderiv as nd
    >>> model = nd.MLP([2, 8, 1], activation="tanh", seed=0)
    >>> x = np.random.default_rng(0).uniform(-1, 1, (5, 2))
    >>> H = nd.hessian(model, x)
    >>> crosscheck(model, x, {"hessian": H}).ok
    True
    >>> report = crosscheck(model, x, {"hessian": H * (1 + 1e-6)})
    >>> report.ok, report.failures[0].quantity
    (False, 'hessian')
    """
    model, module = load_model(model_or_path)
    x = check.points(x, model)
    names = _quantity_names(reference, quantities, order)
    order = max(quantity_order(name) for name in names)  # also the highest order in the gradients' loss
    cotangents = _random_cotangents(model, x, order, seed) if params and isinstance(reference, str) else None
    ours, our_grads = _nnderiv_quantities(model, x, order, names, cotangents)
    if reference == "torch":
        tensors, their_grads = _torch_reference(model, module, x, order, cotangents)
    elif reference == "jax":
        tensors, their_grads = _jax_reference(model, x, order, cotangents)
    else:
        tensors, their_grads = None, None
    theirs = {name: reference[name] for name in names} if tensors is None else _reference_quantities(tensors, names)
    label = reference if isinstance(reference, str) else "the given arrays"
    report = Report(label, model.dtype.name, x.shape[0], order, notes=_notes(model, order, module))
    for name in names:
        rtol_k = rtol if rtol is not None else tolerance(model.dtype, quantity_order(name))
        report.rows.append(compare(name, ours[name], theirs[name], rtol_k))
    for name, gradient in (their_grads or {}).items():
        rtol_k = rtol if rtol is not None else tolerance(model.dtype, order + 1)
        report.rows.append(compare(f"grad {name}", our_grads[name], gradient, rtol_k, points_axis=False))
    return report


def _quantity_names(reference, quantities, order) -> list[str]:
    """The quantities to compare: the keys of user arrays, ``quantities``, or orders 0..order + laplacian."""
    if isinstance(reference, dict):
        names = [name for name in reference if name != "x"]
    elif reference not in ("torch", "jax"):
        raise ConfigError(f"reference must be 'torch', 'jax' or a dict of arrays, got {reference!r}")
    elif quantities is not None:
        names = list(quantities)
    else:
        order = check.order(order)
        names = [_NAMES.get(k, f"tensor{k}") for k in range(order + 1)] + (["laplacian"] if order >= 2 else [])
    unknown = [name for name in names if quantity_order(name) is None]
    if unknown or not names:
        raise ConfigError(f"unknown quantities {unknown}; known: value, jacobian, hessian, tensor<k>, laplacian")
    return names


def _notes(model, order, module) -> list[str]:
    activations = [layer.activation for _, layer in _leaves(model) if hasattr(layer, "activation")]
    rough = sorted({activation.name for activation in activations if not activation.smooth})
    notes = (
        [f"{', '.join(rough)}: derivatives of order >= 2 are zero almost everywhere"] if rough and order >= 2 else []
    )
    if module is not None and any(type(m).__name__ == "Softplus" for m in module.modules()):
        notes.append("torch's Softplus is linear above its threshold (20): differences there are < 1e-9")
    return notes
