"""Losses on a network's outputs and input derivatives: each returns ``(value, cotangent)``.

A loss is called on the :class:`~nnderiv.Derivatives` ``D`` of a model at a batch of points and on
the batch itself (a dict of arrays: ``"x"`` and the targets). It returns the loss value and its
cotangent: ``{k: dL/d tensor(k)}``, one array of the shape of ``D.tensor(k)`` for every order
``k`` the loss touches, which is exactly what the pullback of :func:`nnderiv.vjp` of
:func:`nnderiv.derivatives` takes. :meth:`Loss.value_and_grad` chains the two:

    L(theta) = loss(derivatives(model_theta, x)),   dL/dtheta = pullback(dL/dD).

Losses combine linearly, ``MSE("value", "y") + 0.1 * MSE("jacobian", "dy")``: the value and the
cotangent of a weighted sum are the weighted sums (the derivative order needed is the largest).

Two kinds of loss, and how a sum evaluates them:

- *derivative losses* implement ``__call__(D, batch)`` on the full-mode derivatives at
  ``batch["x"]`` (:class:`MSE`, or a subclass for a nonlinear residual); all such terms of a sum
  share ONE sweep of :func:`nnderiv.derivatives` of the largest ``order``;
- *model losses* override ``value_and_grad(model, batch)`` and run their own sweeps
  (:class:`OperatorMSE`: any nnderiv operator — the Laplacian, pure or mixed derivatives, a
  Hessian-vector product — at any points of the batch); a sum adds their values and gradients.

A physics-informed loss for ``-Delta u = f`` in the domain and ``u = g`` on its boundary:

    OperatorMSE(nd.laplacian, "f", scale=-1.0) + 10.0 * OperatorMSE(nd.value, "g", points="x_boundary")
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from . import _validation as check
from . import engine
from .derivatives import derivatives
from .errors import ConfigError, NonFiniteError, ShapeError
from .operators import PLANNERS, supported, vjp
from .parallel import map_chunks

_COMPONENT_ORDERS = {"value": 0, "jacobian": 1, "hessian": 2}


class Loss:
    """Base class: a scalar function of a model's derivatives at a batch, with its cotangent.

    A *derivative loss* sets ``order`` (the order of :func:`nnderiv.derivatives` it reads at
    ``batch["x"]``) and implements ``__call__(D, batch) -> (value, {k: cotangent of
    D.tensor(k)})``. A *model loss* overrides :meth:`value_and_grad` instead and sets ``order =
    None`` (it reads no shared ``D``). Losses add, and scale by real numbers.

    >>> import nnderiv as nd
    >>> loss = nd.MSE("value", "y") + 0.1 * nd.MSE("jacobian", "dy")
    >>> loss.order
    1
    >>> loss
    1.0 * MSE('value', 'y') + 0.1 * MSE('jacobian', 'dy')
    """

    order: int | None = 0

    def __call__(self, D, batch: Mapping) -> tuple[float, dict[int, np.ndarray]]:
        raise NotImplementedError  # pragma: no cover - abstract

    def value_and_grad(self, model, batch: Mapping) -> tuple[float, dict[str, np.ndarray]]:
        """The loss at ``batch`` and its gradient ``{param name: array}`` w.r.t. ``model.params``.

        One forward sweep of :func:`nnderiv.derivatives` up to ``self.order`` at ``batch["x"]``,
        then its hand-written pullback of the loss's cotangent.

        >>> import numpy as np, nnderiv as nd
        >>> model = nd.MLP([1, 8, 1], seed=0)
        >>> batch = {"x": np.linspace(-1, 1, 5)[:, None], "y": np.zeros((5, 1))}
        >>> value, grads = nd.MSE("value", "y").value_and_grad(model, batch)
        >>> value >= 0, sorted(grads) == sorted(model.params)
        (True, True)
        """
        if not isinstance(batch, Mapping) or "x" not in batch:
            raise ConfigError(f"batch must be a dict of arrays with the points under 'x', got {_describe(batch)}")
        D, pullback = vjp(derivatives, model, batch["x"], order=self.order)
        value, cotangent = self(D, batch)
        return value, pullback(cotangent)

    def _reads_derivatives(self) -> bool:
        """Whether this loss is evaluated on a shared ``D`` (True unless it overrides value_and_grad)."""
        return type(self).value_and_grad is Loss.value_and_grad

    def weighted_terms(self) -> list[tuple[float, Loss]]:
        """``[(weight, loss), ...]`` whose weighted sum is this loss.

        >>> import nnderiv as nd
        >>> (0.5 * nd.MSE("value")).weighted_terms()
        [(0.5, MSE('value', None))]
        """
        return [(1.0, self)]

    def __add__(self, other):
        if not isinstance(other, Loss):
            return NotImplemented
        return WeightedSum(self.weighted_terms() + other.weighted_terms())

    def __radd__(self, other):
        if isinstance(other, numbers.Number) and other == 0:  # so that sum([loss_a, loss_b]) works
            return self
        return NotImplemented

    def __mul__(self, weight):
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
            return NotImplemented
        if not np.isfinite(weight):
            raise NonFiniteError(f"a loss weight must be finite, got {weight!r}")
        return WeightedSum([(float(weight) * w, term) for w, term in self.weighted_terms()])

    __rmul__ = __mul__


class WeightedSum(Loss):
    """``sum_i w_i L_i``: value and gradient are the weighted sums of the terms'.

    Built by ``+`` and ``*`` on losses; rarely constructed directly. The derivative losses among
    the terms share one sweep of :func:`nnderiv.derivatives` at ``batch["x"]`` of their largest
    ``order`` (their cotangents are summed before the one pullback); every model loss
    (:class:`OperatorMSE`, ...) runs its own ``value_and_grad``. ``order`` is that of the shared
    sweep (``None`` when no term reads one).

    >>> import nnderiv as nd
    >>> loss = WeightedSum([(2.0, nd.MSE("value")), (1.0, nd.MSE((0, 0)))])
    >>> loss.order, len(loss.terms)
    (2, 2)
    >>> (loss + OperatorMSE(nd.laplacian)).order   # the Laplacian runs its own sweep
    2
    """

    def __init__(self, terms):
        self.terms = [(float(w), term) for w, term in terms]
        if not self.terms or not all(isinstance(term, Loss) for _, term in self.terms):
            raise ConfigError(f"WeightedSum needs a non-empty list of (weight, Loss) pairs, got {terms!r}")
        shared = [term.order for _, term in self.terms if term._reads_derivatives()]
        self.order = max(shared) if shared else None

    def value_and_grad(self, model, batch):
        """One shared sweep for the derivative losses, then each model loss's own; weighted sums."""
        shared = [(w, term) for w, term in self.terms if term._reads_derivatives()]
        if len(shared) == len(self.terms):
            return super().value_and_grad(model, batch)
        parts = [(w, term.value_and_grad(model, batch)) for w, term in self.terms if not term._reads_derivatives()]
        if shared:
            parts.append((1.0, WeightedSum(shared).value_and_grad(model, batch)))
        total, grads = 0.0, {}
        for w, (value, term_grads) in parts:
            total += w * value
            for name, grad in term_grads.items():
                grads[name] = grads[name] + w * grad if name in grads else w * grad
        return total, grads

    def _reads_derivatives(self):
        return all(term._reads_derivatives() for _, term in self.terms)

    def __call__(self, D, batch):
        for _, term in self.terms:
            if not term._reads_derivatives():
                raise ConfigError(
                    f"{term!r} is evaluated on the model, not on derivatives D: call "
                    "loss.value_and_grad(model, batch) for a sum that contains it"
                )
        total, cotangent = 0.0, {}
        for weight, term in self.terms:
            value, term_cotangent = term(D, batch)
            total += weight * value
            for k, cot in term_cotangent.items():
                cotangent[k] = cotangent[k] + weight * cot if k in cotangent else weight * cot
        return total, cotangent

    def weighted_terms(self):
        return list(self.terms)

    def __repr__(self):
        return " + ".join(f"{w!r} * {term!r}" for w, term in self.terms)


class MSE(Loss):
    """Mean squared error of one component of the derivatives against a target.

    ``L = mean((C - T)^2)`` over ALL entries of the component ``C`` (batch, outputs and input
    axes alike: the Deep Differential Network convention), so ``dL/dC = 2 (C - T) / C.size``.

    Parameters
    ----------
    component : "value" | "jacobian" | "hessian" | int | tuple of int
        ``D.value`` ``(N, m)``, ``D.jacobian`` ``(N, m, d)``, ``D.hessian`` ``(N, m, d, d)``,
        ``D.tensor(k)`` ``(N, m) + (d,) * k`` for an int ``k``, or one partial derivative
        ``D.partial(indices)`` ``(N, m)`` for a tuple of input indices, e.g. ``(0, 0)`` for
        ``d^2 f / dx_0^2``.
    target : str or None
        The key of the batch array holding the target, of exactly the component's shape (nothing
        is broadcast); ``None`` for a zero target (a residual that should vanish).

    Examples
    --------
    >>> import numpy as np, nnderiv as nd
    >>> model = nd.MLP([2, 8, 1], seed=0)
    >>> x = np.zeros((4, 2))
    >>> D = nd.derivatives(model, x, order=1)
    >>> value, cotangent = nd.MSE("jacobian")(D, {"x": x})
    >>> bool(np.isclose(value, np.mean(D.jacobian ** 2))), cotangent[1].shape
    (True, (4, 1, 2))
    """

    def __init__(self, component="value", target: str | None = None):
        self.component = component
        self.target = target
        self.k, self.indices = _parse_component(component)
        self.order = self.k
        if target is not None and not isinstance(target, str):
            raise ConfigError(f"target must be the name of a batch array or None, got {target!r}")

    def __call__(self, D, batch):
        component = self.component_of(D)
        residual = component if self.target is None else component - self._target(batch, component)
        value = float(np.mean(residual**2))
        d_component = (2.0 / residual.size) * residual
        return value, {self.k: self._as_tensor_cotangent(d_component, D)}

    def component_of(self, D) -> np.ndarray:
        """The component of ``D`` this loss reads: ``D.tensor(k)`` or ``D.partial(indices)``.

        >>> import numpy as np, nnderiv as nd
        >>> D = nd.derivatives(nd.MLP([2, 4, 1], seed=0), np.zeros((3, 2)), order=2)
        >>> nd.MSE("hessian").component_of(D).shape, nd.MSE((0, 1)).component_of(D).shape
        ((3, 1, 2, 2), (3, 1))
        """
        return D.tensor(self.k) if self.indices is None else D.partial(self.indices)

    def _target(self, batch, component):
        if not isinstance(batch, Mapping) or self.target not in batch:
            keys = sorted(batch) if isinstance(batch, Mapping) else _describe(batch)
            raise ConfigError(f"{self!r} needs the target batch[{self.target!r}], but the batch has {keys}")
        target = check.real_array(batch[self.target], f"target batch[{self.target!r}]", component.dtype)
        if target.shape != component.shape:
            raise ShapeError(
                f"target batch[{self.target!r}] must have the shape of {_component_name(self.component)} "
                f"{component.shape}, got {target.shape}"
            )
        return target

    def _as_tensor_cotangent(self, d_component, D):
        """Cotangent of ``D.tensor(k)``: the component itself, or zero but at the one partial."""
        if self.indices is None:
            return d_component
        cotangent = np.zeros(d_component.shape + (D.n_inputs,) * self.k, dtype=d_component.dtype)
        cotangent[(Ellipsis, *self.indices)] = d_component
        return cotangent

    def __repr__(self):
        return f"MSE({self.component!r}, {self.target!r})"


class OperatorMSE(Loss):
    """Mean squared error of any nnderiv operator of the model, at any points of the batch.

    ``L = mean((scale * fn(model, batch[points], **fn_kwargs)[select] - batch[target])^2)`` over
    all entries; its gradient is the hand-written pullback of ``nd.vjp(fn, ...)`` applied to
    ``dL/d out = 2 scale (residual) / residual.size`` (zero outside ``select``). One sweep of
    ``fn``'s own mode: ``d + 2`` rows for the Laplacian instead of the full Hessian's
    ``C(d + 2, 2)``.

    Parameters
    ----------
    fn : callable
        An nnderiv operator with a pullback whose output is an array: ``nd.value``,
        ``nd.jacobian``, ``nd.hessian``, ``nd.laplacian``, ``nd.hvp``, ``nd.taylor``,
        ``nd.pure_derivatives``, ``nd.mixed_partial``, ``nd.divergence``, ``nd.biharmonic``
        (``nd.vjp.supported()``); for components of ``nd.derivatives`` use :class:`MSE`.
    target : str or None
        The key of the batch array with the target, of exactly the (selected) output's shape;
        ``None`` for a residual that should vanish.
    points : str
        The key of the batch array with the points ``(N, d)`` where ``fn`` is evaluated, e.g.
        ``"x_boundary"`` for a boundary condition (in :func:`nnderiv.fit`, pass arrays with
        another number of rows than ``data["x"]`` as ``fixed=``).
    scale : real
        Multiplies the output: ``scale=-1.0`` with ``nd.laplacian`` is ``-Delta u``.
    select : index or None
        Applied to the output before the comparison, e.g. ``(..., 3)`` keeps the third
        derivatives of ``nd.pure_derivatives(..., order=3)``, ``(..., 0)`` the first column.
    **fn_kwargs
        Passed to ``fn``: ``order=``, ``weights=``, ``v=``, ``indices=``, ``chunk_size=``, ...
        (the same for every batch).

    Examples
    --------
    >>> import numpy as np, nnderiv as nd
    >>> model = nd.MLP([2, 16, 1], activation="tanh", seed=0)
    >>> rng = np.random.default_rng(0)
    >>> x, x_boundary = rng.uniform(0, 1, (8, 2)), rng.uniform(0, 1, (8, 2)).round()
    >>> batch = {"x": x, "f": np.ones((8, 1)), "x_boundary": x_boundary, "g": np.zeros((8, 1))}
    >>> poisson = OperatorMSE(nd.laplacian, "f", scale=-1.0) + 10.0 * OperatorMSE(nd.value, "g", points="x_boundary")
    >>> value, grads = poisson.value_and_grad(model, batch)
    >>> expected = np.mean((-nd.laplacian(model, x) - 1.0) ** 2) + 10.0 * np.mean(model(x_boundary) ** 2)
    >>> bool(np.isclose(value, expected)), sorted(grads) == sorted(model.params)
    (True, True)
    >>> third = OperatorMSE(nd.pure_derivatives, order=3, select=(..., 3))   # d^3 u / dx_i^3 -> 0
    >>> third
    OperatorMSE(nd.pure_derivatives, None, points='x', scale=1.0, select=(Ellipsis, 3), order=3)
    """

    order = None  # reads no shared derivatives: it runs its own sweep of fn

    def __init__(self, fn, target: str | None = None, *, points="x", scale: float = 1.0, select=None, **fn_kwargs):
        if fn is derivatives:
            raise ConfigError("nd.derivatives returns a Derivatives, not an array: use nd.MSE(component, target)")
        if fn not in PLANNERS:
            raise ConfigError(f"fn must be an nnderiv operator with a pullback ({', '.join(supported())}), got {fn!r}")
        if target is not None and not isinstance(target, str):
            raise ConfigError(f"target must be the name of a batch array or None, got {target!r}")
        if not isinstance(points, str):
            raise ConfigError(f"points must be the name of a batch array, got {points!r}")
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not np.isfinite(scale):
            raise ConfigError(f"scale must be a finite real number, got {scale!r}")
        if "wrt" in fn_kwargs:
            raise ConfigError("OperatorMSE differentiates with respect to the parameters; wrt cannot be set")
        self.fn, self.target, self.points, self.scale = fn, target, points, float(scale)
        self.select, self.fn_kwargs = select, fn_kwargs

    def value_and_grad(self, model, batch: Mapping) -> tuple[float, dict[str, np.ndarray]]:
        """The loss at ``batch`` and its gradient ``{param name: array}`` w.r.t. ``model.params``.

        The mean is over points, so each point's cotangent needs only its own output: the points
        are taken in cache-sized chunks, one per worker at a time (:mod:`nnderiv.parallel`), each
        swept forward and pulled back at once (:func:`nnderiv.engine.pullback_chunk_size`), and the
        gradients summed in the order of the chunks. A ``chunk_size`` given to ``fn`` is that chunk;
        the chunks that run at once, one per worker, must fit the memory limit together
        (:func:`nnderiv.engine.checked_pullback_chunk_size` says which size does, if not).
        """
        x = check.points(_batch_array(batch, self.points, self), model)
        target = None if self.target is None else _batch_array(batch, self.target, self)
        parts = engine.chunks(len(x), self._chunk_size(model, x))
        if target is not None and len(parts) > 1:  # sliced per chunk: its rows must be the points'
            target = check.real_array(target, f"target batch[{self.target!r}]", model.dtype)
            if target.ndim == 0 or len(target) != len(x):
                raise ShapeError(
                    f"target batch[{self.target!r}] must have one row per point of batch[{self.points!r}] "
                    f"({len(x)}), got shape {target.shape}"
                )

        def value_and_grad_of(part):  # the sum of squares and its gradient on one chunk
            out, pullback = vjp(self.fn, model, x[part], **self.fn_kwargs)
            residual = self._residual(out, target if target is None or len(parts) == 1 else target[part])
            out_bar = (2.0 * self.scale) * residual
            if self.select is not None:  # the adjoint of indexing: scatter, adding where an index repeats
                out_bar, selected_bar = np.zeros_like(out), out_bar
                np.add.at(out_bar, self.select, selected_bar)
            return float(np.sum(residual**2)), residual.size, pullback(out_bar)

        total, entries, grads = 0.0, 0, None
        for part_total, part_entries, part_grads in map_chunks(value_and_grad_of, parts):  # summed in order
            total, entries = total + part_total, entries + part_entries
            grads = part_grads if grads is None else {k: grads[k] + g for k, g in part_grads.items()}
        if not entries:
            return float("nan"), grads
        return total / entries, {name: grad * (1.0 / entries) for name, grad in grads.items()}  # the mean

    def _residual(self, out, target) -> np.ndarray:
        residual = self.scale * self._selected(out)
        if target is None:
            return residual
        target = check.real_array(target, f"target batch[{self.target!r}]", out.dtype)
        if target.shape != residual.shape:
            raise ShapeError(
                f"target batch[{self.target!r}] must have the shape of the output of {self._name()}"
                f"{'' if self.select is None else '[select]'} {residual.shape}, got {target.shape}"
            )
        return residual - target

    def _chunk_size(self, model, x) -> int:
        """Chunks of ``chunk_size`` points (given to ``fn``) or cache-sized chunks when the output is
        per point and no argument is: each chunk is swept and pulled back at once, nothing is kept
        for all points. Else all points in one call (which chunks by ``chunk_size`` itself)."""
        n = len(x)
        per_point_select = self.select is None or (isinstance(self.select, tuple) and self.select[:1] == (Ellipsis,))
        per_point_argument = any(np.ndim(value) >= 1 and len(value) == n for value in self.fn_kwargs.values())
        if not per_point_select or per_point_argument:
            return max(n, 1)
        kwargs = {k: v for k, v in self.fn_kwargs.items() if k != "chunk_size"}
        mode = PLANNERS[self.fn](model, x[:1], for_vjp=True, **kwargs).mode
        if self.fn_kwargs.get("chunk_size") is not None:  # the chunks that run at once must fit together
            return engine.checked_pullback_chunk_size(model, mode, n, self.fn_kwargs["chunk_size"])
        return engine.chosen_chunk_size(model, mode.n_rows, n, engine.pullback_chunk_size(model, mode))

    def __call__(self, D, batch):
        raise ConfigError(
            f"{self!r} is evaluated on the model, not on derivatives D: call value_and_grad(model, batch)"
        )

    def _selected(self, out) -> np.ndarray:
        if not isinstance(out, np.ndarray):
            raise ConfigError(f"{self._name()} does not return an array; OperatorMSE cannot compare it")
        if self.select is None:
            return out
        try:
            return out[self.select]
        except (IndexError, TypeError) as error:
            raise ShapeError(
                f"select={self.select!r} does not index the output of {self._name()} of shape {out.shape}: {error}"
            ) from None

    def _name(self) -> str:
        return f"nd.{getattr(self.fn, '__name__', repr(self.fn))}"

    def __repr__(self):
        options = f", select={self.select!r}" if self.select is not None else ""
        options += "".join(f", {key}={value!r}" for key, value in self.fn_kwargs.items())
        return f"OperatorMSE({self._name()}, {self.target!r}, points={self.points!r}, scale={self.scale!r}{options})"


def _batch_array(batch, key: str, loss):
    if not isinstance(batch, Mapping) or key not in batch:
        keys = sorted(batch) if isinstance(batch, Mapping) else _describe(batch)
        raise ConfigError(f"{loss!r} needs batch[{key!r}], but the batch has {keys}")
    return batch[key]


def _parse_component(component) -> tuple[int, tuple[int, ...] | None]:
    """``(order k, input indices or None)`` of a component name, order or partial."""
    if isinstance(component, str):
        if component not in _COMPONENT_ORDERS:
            raise ConfigError(
                f"component must be 'value', 'jacobian', 'hessian', an order k or a tuple of input "
                f"indices, got {component!r}"
            )
        return _COMPONENT_ORDERS[component], None
    if isinstance(component, tuple):
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in component):
            raise ConfigError(f"a partial derivative component is a tuple of input indices >= 0, got {component!r}")
        return check.order(len(component), "the number of indices of component"), tuple(int(i) for i in component)
    return check.order(component, "component"), None


def _component_name(component) -> str:
    if isinstance(component, tuple):
        return f"D.partial({component})"
    return f"D.{component}" if isinstance(component, str) else f"D.tensor({component})"


def _describe(obj) -> str:
    return f"an object of type {type(obj).__name__}"
