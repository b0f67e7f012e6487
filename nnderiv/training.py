"""Training loop: mini-batches, optimiser steps committed atomically, a progress bar.

Each step computes ``(loss, grads) = loss.value_and_grad(model, batch)``, the optimiser's new
parameters, and only then replaces all of them at once with ``model.set_params``. Ctrl-C
(SIGINT) arriving during that commit is held back until the commit is done, so an interrupted
:func:`fit` leaves the model exactly at its last finished step and returns what it has so far.
"""

from __future__ import annotations

import os
import signal
import threading
import warnings
from collections.abc import Mapping

import numpy as np
from tqdm.auto import tqdm

from . import _validation as check
from .errors import ConfigError, NnderivWarning, NonFiniteError, ShapeError
from .io import save
from .optim import Adam


class StopTraining(Exception):
    """Raise from a callback to end :func:`fit` cleanly after the current epoch.

    >>> import numpy as np, nnderiv as nd
    >>> def early_stopping(epoch, logs, model):
    ...     if logs["loss"] < 1e-2:
    ...         raise nd.StopTraining
    >>> data = {"x": np.zeros((4, 1)), "y": np.zeros((4, 1))}
    >>> history = nd.fit(nd.MLP([1, 1], seed=0), nd.MSE("value", "y"), data, optimizer=nd.SGD(0.5),
    ...                  epochs=100, callbacks=[early_stopping], progress=False)
    >>> history.stopped, history.epochs < 100
    (True, True)
    """


class History:
    """What :func:`fit` did: ``loss`` (mean batch loss per finished epoch), ``epochs`` (finished),
    ``steps`` (optimiser steps committed), ``interrupted`` (Ctrl-C), ``stopped`` (StopTraining).

    Attributes are also readable as items: ``history["loss"]``.

    >>> h = History()
    >>> h["loss"], h.epochs, h.interrupted
    ([], 0, False)
    """

    def __init__(self):
        self.loss: list[float] = []
        self.steps = 0
        self.interrupted = False
        self.stopped = False

    @property
    def epochs(self) -> int:
        return len(self.loss)

    def __getitem__(self, key: str):
        if key not in ("loss", "epochs", "steps", "interrupted", "stopped"):
            raise KeyError(key)
        return getattr(self, key)

    def __repr__(self):
        last = f", last loss {self.loss[-1]:.6g}" if self.loss else ""
        flags = ", interrupted" if self.interrupted else ", stopped" if self.stopped else ""
        return f"History({self.epochs} epochs, {self.steps} steps{last}{flags})"


def fit(
    model,
    loss,
    data: Mapping,
    *,
    fixed: Mapping | None = None,
    optimizer=None,
    epochs: int = 1,
    batch_size: int | None = None,
    shuffle: bool = True,
    seed=0,
    callbacks=(),
    progress: bool = True,
    checkpoint=None,
) -> History:
    """Train ``model`` on ``loss`` over ``data``; returns a :class:`History`.

    Parameters
    ----------
    model : Sequential
        Trained in place.
    loss : Loss
        E.g. ``nd.MSE("value", "y") + 0.1 * nd.MSE("jacobian", "dy")``.
    data : dict of arrays
        The points under ``"x"`` ``(N, d)`` and the targets the loss names, each with ``N`` rows;
        these are shuffled and cut into mini-batches.
    fixed : dict of arrays, optional
        Arrays given whole to every batch, with any number of rows: e.g. boundary points and
        values, ``fixed={"x_boundary": xb, "g": g}`` for ``OperatorMSE(nd.value, "g",
        points="x_boundary")``. Names must differ from those of ``data``.
    optimizer : default ``Adam(1e-3)``
        Keeps its state between calls when passed in again.
    epochs, batch_size, shuffle, seed
        ``epochs`` passes over the data in mini-batches of ``batch_size`` rows (default: all;
        the last batch may be smaller), in an order drawn from ``numpy.random.default_rng(seed)``
        when ``shuffle``. The same seed gives the same training.
    callbacks : callables ``callback(epoch, logs, model)``
        Called after every epoch (``epoch`` counts from 0, ``logs = {"loss": ...}``); raising
        :class:`StopTraining` ends training cleanly.
    progress : bool
        Show a tqdm progress bar over epochs with the current loss.
    checkpoint : path or None
        Save the model there (:func:`nnderiv.save`, atomically) after every epoch.

    Notes
    -----
    Ctrl-C stops training at the last finished step: ``history.interrupted`` is set and an
    :class:`~nnderiv.NnderivWarning` says so. A non-finite loss or gradient raises
    :class:`~nnderiv.NonFiniteError` naming the epoch and batch.

    Examples
    --------
    >>> import numpy as np, nnderiv as nd
    >>> x = np.linspace(-np.pi, np.pi, 32)[:, None]
    >>> data = {"x": x, "y": np.sin(x), "dy": np.cos(x)[:, :, None]}
    >>> model = nd.MLP([1, 16, 1], activation="tanh", seed=0)
    >>> loss = nd.MSE("value", "y") + nd.MSE("jacobian", "dy")
    >>> history = nd.fit(model, loss, data, optimizer=nd.Adam(1e-2), epochs=50, progress=False)
    >>> history.epochs, history.loss[-1] < history.loss[0]
    (50, True)
    """
    data, n_points = _checked_data(data, model)
    fixed = _checked_fixed(fixed, data, model)
    epochs = check.positive_int(epochs, "epochs")
    batch_size = n_points if batch_size is None else min(check.positive_int(batch_size, "batch_size"), n_points)
    optimizer = Adam(1e-3) if optimizer is None else optimizer
    callbacks = _checked_callbacks(callbacks)
    _check_checkpoint(checkpoint)
    if not hasattr(loss, "value_and_grad"):
        raise ConfigError(f"loss must be an nd.Loss (with value_and_grad), got {type(loss).__name__}")
    rng = np.random.default_rng(seed)
    history = History()
    with tqdm(total=epochs, disable=not progress, unit="epoch", desc="fit") as bar:
        try:
            for epoch in range(epochs):
                order = rng.permutation(n_points) if shuffle else np.arange(n_points)
                epoch_loss = _run_epoch(model, loss, optimizer, data, fixed, order, batch_size, epoch, history)
                history.loss.append(epoch_loss)
                bar.set_postfix(loss=f"{epoch_loss:.4g}", refresh=False)
                bar.update(1)
                if checkpoint is not None:
                    save(model, checkpoint)
                _run_callbacks(callbacks, epoch, {"loss": epoch_loss}, model)
        except StopTraining:
            history.stopped = True
        except KeyboardInterrupt:
            history.interrupted = True
            warnings.warn(
                f"training interrupted (Ctrl-C) after {history.epochs} finished epochs; the model holds "
                f"the parameters of its last finished step ({history.steps} steps in all)",
                NnderivWarning,
                stacklevel=2,
            )
    return history


def _run_epoch(model, loss, optimizer, data, fixed, order, batch_size, epoch, history) -> float:
    """One pass over ``data`` in the row ``order`` (``fixed`` in every batch); the mean of the batch losses."""
    batch_losses = []
    for number, start in enumerate(range(0, len(order), batch_size)):
        rows = order[start : start + batch_size]
        batch = {**{key: array[rows] for key, array in data.items()}, **fixed}
        value, grads = loss.value_and_grad(model, batch)
        _check_finite(value, grads, epoch, number)
        with _DeferredInterrupt():  # the optimiser's state and the model's parameters move together
            model.set_params(optimizer.step(model.params, grads))
            history.steps += 1
        batch_losses.append(value)
    return float(np.mean(batch_losses))


def _check_finite(value, grads, epoch: int, number: int) -> None:
    where = f"at epoch {epoch}, batch {number} (both counted from 0)"
    if not np.isfinite(value):
        raise NonFiniteError(f"the loss is {value} {where}; lower the learning rate or check the data")
    for name, grad in grads.items():
        if not np.isfinite(grad).all():
            raise NonFiniteError(f"the gradient of {name!r} contains NaN or Inf {where}")


def _checked_data(data, model) -> tuple[dict[str, np.ndarray], int]:
    """``data`` as finite arrays of the model's dtype, all with the same number of rows as ``x``."""
    if not isinstance(data, Mapping) or "x" not in data:
        raise ConfigError(f"data must be a dict of arrays with the points under 'x', got {type(data).__name__}")
    arrays = {"x": check.points(data["x"], model)}
    n_points = len(arrays["x"])
    if n_points == 0:
        raise ShapeError("data['x'] holds no points (shape (0, d)); there is nothing to train on")
    for key, array in data.items():
        if key != "x":
            arrays[key] = check.real_array(array, f"data[{key!r}]", model.dtype)
        if arrays[key].ndim == 0 or len(arrays[key]) != n_points:
            raise ShapeError(
                f"data[{key!r}] must have one row per point ({n_points} rows, like data['x']), "
                f"got shape {arrays[key].shape}"
            )
    return arrays, n_points


def _checked_fixed(fixed, data, model) -> dict[str, np.ndarray]:
    """``fixed`` as finite arrays of the model's dtype, named apart from ``data``."""
    if fixed is None:
        return {}
    if not isinstance(fixed, Mapping):
        raise ConfigError(f"fixed must be a dict of arrays, got {type(fixed).__name__}")
    clash = sorted(set(fixed) & set(data))
    if clash:
        raise ConfigError(f"fixed and data both name {clash}: an array is either batched (data) or whole (fixed)")
    return {key: check.real_array(array, f"fixed[{key!r}]", model.dtype) for key, array in fixed.items()}


def _check_checkpoint(checkpoint) -> None:
    """Fail before training, not after the first epoch, when the checkpoint cannot be written."""
    if checkpoint is None:
        return
    folder = os.path.dirname(os.path.abspath(os.fspath(checkpoint)))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint={checkpoint!r}: the directory {folder!r} does not exist")
    if os.path.isdir(checkpoint):
        raise IsADirectoryError(f"checkpoint={checkpoint!r} is a directory; give a file path like 'model.npz'")


def _checked_callbacks(callbacks) -> tuple:
    callbacks = (callbacks,) if callable(callbacks) else tuple(callbacks)
    for callback in callbacks:
        if not callable(callback):
            raise ConfigError(f"callbacks must be callables callback(epoch, logs, model), got {callback!r}")
    return callbacks


def _run_callbacks(callbacks, epoch: int, logs: dict, model) -> None:
    stop = False
    for callback in callbacks:
        try:
            callback(epoch, logs, model)
        except StopTraining:
            stop = True  # let the other callbacks see this epoch too
    if stop:
        raise StopTraining


class _DeferredInterrupt:
    """Hold back SIGINT (Ctrl-C) inside the block, then deliver it once the block is done.

    Only in the main thread, the one Python delivers signals to; elsewhere a no-op.
    """

    def __enter__(self):
        self.received = None
        self.installed = threading.current_thread() is threading.main_thread()
        if self.installed:
            self.previous = signal.signal(signal.SIGINT, self._record)
        return self

    def _record(self, signum, frame):
        self.received = (signum, frame)

    def __exit__(self, exc_type, exc, traceback):
        if not self.installed:
            return False
        # None: the handler was not set from Python; the default one is the closest we can restore
        signal.signal(signal.SIGINT, signal.SIG_DFL if self.previous is None else self.previous)
        if self.received is not None and exc_type is None:
            if callable(self.previous):
                self.previous(*self.received)
            elif self.previous != signal.SIG_IGN:
                raise KeyboardInterrupt
        return False
