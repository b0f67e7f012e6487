r"""Plots of a network's input derivatives against the true function's (needs the ``plot`` extra).

Two views, after the nnbma derivatives notebook (which draws them with ``torch.func``):

- :func:`profiles`: ``f``, ``df/dt``, ``d^2f/dt^2``, ... along the line ``x0 + t v``, one panel per
  order, network and truth overlaid. Taylor mode along ``v``: ``1 + K`` stacked rows whatever ``d``.
- :func:`error_maps`: the absolute (or relative) error of every Jacobian or Hessian entry of one
  output over a 2-d grid of two inputs, the others fixed; one colour map per entry.

Both return a :mod:`matplotlib` figure made by ``pyplot``: close it (``plt.close(fig)``) when done.
matplotlib is imported only when a plot is asked for; if no backend was chosen (``MPLBACKEND``,
``matplotlib.use``) and there is no display, the non-interactive ``Agg`` backend is selected, so
plotting on a headless machine never tries to open a window. Indices are 0-based: ``output=2`` is
``f_2``, the third output.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from . import _validation as check
from .derivatives import derivatives
from .errors import ConfigError, ShapeError
from .modes.taylor import taylor

_INSTALL_HINT = "plotting needs matplotlib: pip install 'nnderiv[plot]'"
_QUANTITY_ORDERS = {"jacobian": 1, "hessian": 2}


def _pyplot():
    """``matplotlib.pyplot``, imported on first use; ``Agg`` only if no backend was chosen and no display exists."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(_INSTALL_HINT) from None
    chosen = "MPLBACKEND" in os.environ or matplotlib.rcParams._get_backend_or_none() is not None
    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if not chosen and headless:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --- profiles ------------------------------------------------------------------------------------


def profiles(
    model,
    x0,
    direction,
    *,
    truth: Callable | Mapping[int, Callable] | None = None,
    orders: Sequence[int] = (0, 1, 2),
    output: int = 0,
    t=np.linspace(-1.0, 1.0, 200),  # noqa: B008 - read only, never mutated
    ax=None,
    label: str = "network",
):
    r"""Plot ``d^k/dt^k f_output(x0 + t v)`` for each ``k`` in ``orders``, one panel per order.

    Parameters
    ----------
    model : Sequential
        Maps ``(N, d)`` to ``(N, m)``.
    x0, direction : array ``(d,)``
        The line ``x(t) = x0 + t * direction``; the points are ``x = x0 + t[:, None] * direction``,
        shape ``(N, d)`` with ``N = len(t)``. ``direction`` is not normalised: ``d/dt`` is the
        derivative along it, e.g. ``df/dt = J(x) v`` and ``d^2f/dt^2 = v^T H(x) v``.
    truth : callable, dict or None
        The true function's derivatives along the line, drawn as a thick grey line:

        - ``truth(x)`` returning ``(N, m, 1, K + 1)`` (``K = max(orders)``; more orders are fine):
          ``[..., 0, k]`` is ``d^k/dt^k f``, exactly the layout of :func:`nnderiv.taylor`;
        - or ``{k: callable}`` with ``callable(x)`` returning ``(N, m)``, one entry per plotted order.
    orders : ints
        The derivative orders to plot, each ``>= 0``.
    output : int
        Which output ``f_output`` to plot.
    t : array ``(N,)``
        The line parameter, default ``linspace(-1, 1, 200)``.
    ax : Axes or sequence of Axes, optional
        Draw into these (one per order) instead of a new figure, e.g. to overlay several networks.
    label : str
        The legend label of the network's curves.

    Returns
    -------
    Figure
        Each panel holds the truth's line (label ``"truth"``) first, if any, then the network's;
        ``fig.axes[j].lines[-1].get_ydata()`` is ``taylor(model, x, [direction], K)[:, output, 0, orders[j]]``.

    Examples
    --------
    >>> import numpy as np, matplotlib.pyplot as plt, nnderiv as nd
    >>> from nnderiv.plot import profiles
    >>> model = nd.MLP([2, 8, 1], activation="tanh", seed=0)
    >>> truth = lambda x: np.zeros((len(x), 1, 1, 3))          # compare with the zero function
    >>> fig = profiles(model, [0.0, 0.0], [1.0, 0.5], truth=truth, t=np.linspace(-1, 1, 20))
    >>> len(fig.axes), [line.get_label() for line in fig.axes[2].lines]
    (3, ['truth', 'network'])
    >>> plt.close(fig)
    """
    orders = _checked_orders(orders)
    x, v = _line_points(model, x0, direction, t)
    output = _checked_index(output, model.n_outputs, "output")
    K = max(orders)
    along = taylor(model, x, directions=v[None], order=K)[:, output, 0]  # (N, K + 1)
    exact = None if truth is None else _truth_along_line(truth, x, orders, model.n_outputs, output)
    plt = _pyplot()
    fig, axes = _profile_axes(plt, ax, len(orders))
    for j, (panel, k) in enumerate(zip(axes, orders)):
        if exact is not None:
            panel.plot(t, exact[j], color="0.2", lw=4, alpha=0.35, label="truth")
        panel.plot(t, along[:, k], lw=1.5, label=label)
        panel.set_xlabel("$t$")
        panel.set_title(_derivative_name(k, output))
        panel.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if ax is None:
        fig.suptitle(f"$f_{{{output}}}$ along $x_0 + t\\,v$,  $x_0$ = {_fmt(x0)},  $v$ = {_fmt(v)}", fontsize=10)
    return fig


def _line_points(model, x0, direction, t) -> tuple[np.ndarray, np.ndarray]:
    d = model.n_inputs
    x0 = check.real_array(x0, "x0", model.dtype)
    v = check.real_array(direction, "direction", model.dtype)
    t = check.real_array(t, "t", model.dtype)
    check.same_shape(x0, (d,), "x0")
    check.same_shape(v, (d,), "direction")
    if t.ndim != 1 or len(t) == 0:
        raise ShapeError(f"t must be a non-empty 1-d array, got shape {t.shape}")
    return x0 + t[:, None] * v, v


def _truth_along_line(truth, x, orders, m, output) -> list[np.ndarray]:
    """The truth's ``d^k/dt^k f_output`` for each plotted order: a list of ``(N,)`` arrays."""
    n, K = len(x), max(orders)
    if isinstance(truth, Mapping):
        missing = [k for k in orders if k not in truth]
        if missing:
            raise ConfigError(f"truth has no callable for orders {missing}; give one per plotted order {list(orders)}")
        values = [np.asarray(truth[k](x)) for k in orders]
        for k, value in zip(orders, values):
            check.same_shape(value, (n, m), f"truth[{k}](x) (d^{k}/dt^{k} of every output)")
        return [value[:, output] for value in values]
    if not callable(truth):
        raise ConfigError(f"truth must be a callable, a dict {{order: callable}} or None, got {type(truth).__name__}")
    value = np.asarray(truth(x))
    if value.ndim != 4 or value.shape[:3] != (n, m, 1) or value.shape[3] <= K:
        raise ShapeError(
            f"truth(x) must return shape ({n}, {m}, 1, K + 1) with K >= {K} (the layout of nnderiv.taylor "
            f"along one direction), got {value.shape}"
        )
    return [value[:, output, 0, k] for k in orders]


def _profile_axes(plt, ax, n_panels: int):
    if ax is None:
        fig, axes = plt.subplots(1, n_panels, figsize=(4.2 * n_panels, 3.6), constrained_layout=True, squeeze=False)
        return fig, list(axes[0])
    axes = [ax] if hasattr(ax, "plot") else list(ax)
    if len(axes) != n_panels:
        raise ConfigError(f"ax must hold one Axes per plotted order ({n_panels}), got {len(axes)}")
    return axes[0].figure, axes


def _derivative_name(k: int, output: int) -> str:
    if k == 0:
        return f"$f_{{{output}}}$"
    power = "" if k == 1 else f"^{{{k}}}"
    return f"$d{power} f_{{{output}}} / dt{power}$"


# --- error maps ----------------------------------------------------------------------------------


def error_maps(
    model,
    grid_x,
    grid_y,
    truth: Callable,
    *,
    quantity: str = "jacobian",
    output: int = 0,
    inputs: tuple[int, int] = (0, 1),
    fixed=None,
    relative: bool = False,
    eps: float = 1e-2,
    log: bool = True,
    decades: float = 4.0,
    cmap: str = "viridis",
):
    r"""Maps of the error of every Jacobian (or Hessian) entry of ``f_output`` over a 2-d grid.

    Parameters
    ----------
    model : Sequential
        Maps ``(N, d)`` to ``(N, m)``, ``d >= 2``.
    grid_x, grid_y : arrays ``(nx,)``, ``(ny,)``
        Increasing values of the inputs ``inputs[0]`` (horizontal axis) and ``inputs[1]`` (vertical).
        The ``nx * ny`` points are ``x[j, i] = fixed`` with those two inputs set to ``grid_x[i], grid_y[j]``.
    truth : callable
        ``truth(x)`` for ``x`` of shape ``(P, d)`` returns the true Jacobian ``(P, m, d)`` (like
        :func:`nnderiv.jacobian`) or Hessian ``(P, m, d, d)`` (like :func:`nnderiv.hessian`).
    quantity : ``"jacobian"`` or ``"hessian"``
        One panel per entry: ``d`` panels ``d f / d x_j`` in a row, or ``d x d`` panels ``d^2 f / d x_j d x_k``.
    output : int
        Which output ``f_output``.
    inputs : two distinct ints
        The inputs that vary over the grid.
    fixed : array ``(d,)``, optional
        Values of the other inputs (its entries at ``inputs`` are ignored); default zeros.
    relative, eps
        Plot ``|net - truth| / (|truth| + eps)`` instead of ``|net - truth|`` (``eps`` keeps it finite where
        the truth vanishes, as in the nnbma notebook).
    log, decades
        Logarithmic colour scale over ``decades`` decades below the largest error: where the signed
        error crosses zero its magnitude dips arbitrarily low, and those dips would otherwise take
        over the scale. Smaller errors (zeros included) get the lowest colour.
    cmap : str
        The matplotlib colour map.

    Returns
    -------
    Figure
        ``fig.axes[:n_panels]`` are the maps (row-major), then one colour bar per map.
        ``fig.axes[p].collections[0].get_array()`` is the map's error, shape ``(ny, nx)``.

    Examples
    --------
    >>> import numpy as np, matplotlib.pyplot as plt, nnderiv as nd
    >>> from nnderiv.plot import error_maps
    >>> model = nd.MLP([2, 8, 1], activation="tanh", seed=0)
    >>> zero_hessian = lambda x: np.zeros((len(x), 1, 2, 2))
    >>> grid = np.linspace(-1, 1, 5)
    >>> fig = error_maps(model, grid, grid, zero_hessian, quantity="hessian")
    >>> len(fig.axes)                     # 2 x 2 maps and their 4 colour bars
    8
    >>> plt.close(fig)
    """
    if quantity not in _QUANTITY_ORDERS:
        raise ConfigError(f"quantity must be 'jacobian' or 'hessian', got {quantity!r}")
    if not callable(truth):
        raise ConfigError(f"truth must be a callable returning the true {quantity}, got {type(truth).__name__}")
    k = _QUANTITY_ORDERS[quantity]
    output = _checked_index(output, model.n_outputs, "output")
    gx, gy, x = _grid_points(model, grid_x, grid_y, inputs, fixed)
    D = derivatives(model, x, order=k)
    net = D.jacobian if k == 1 else D.hessian
    exact = check.real_array(truth(x), f"truth(x) (the true {quantity})", model.dtype)
    check.same_shape(exact, net.shape, f"truth(x) (the true {quantity} at the {len(x)} grid points)")
    error = np.abs(net[:, output] - exact[:, output])
    if relative:
        error = error / (np.abs(exact[:, output]) + eps)
    maps = error.reshape(len(gy), len(gx), -1)  # (ny, nx, d) or (ny, nx, d * d)
    if not decades > 0:
        raise ConfigError(f"decades must be positive, got {decades!r}")
    norm = {"log": log, "decades": decades}
    return _draw_maps(maps, gx, gy, k, output, inputs, model.n_inputs, relative=relative, norm=norm, cmap=cmap)


def _grid_points(model, grid_x, grid_y, inputs, fixed):
    d = model.n_inputs
    if d < 2:
        raise ShapeError(f"error maps need a model with at least 2 inputs, this one has {d}")
    inputs = tuple(_checked_index(i, d, "inputs entry") for i in inputs)
    if len(inputs) != 2 or inputs[0] == inputs[1]:
        raise ConfigError(f"inputs must be two distinct input indices, got {inputs}")
    gx, gy = (check.real_array(g, name, model.dtype) for g, name in ((grid_x, "grid_x"), (grid_y, "grid_y")))
    for g, name in ((gx, "grid_x"), (gy, "grid_y")):
        if g.ndim != 1 or len(g) < 2:
            raise ShapeError(f"{name} must be a 1-d array of at least 2 values, got shape {g.shape}")
    base = np.zeros(d, dtype=model.dtype) if fixed is None else check.real_array(fixed, "fixed", model.dtype)
    check.same_shape(base, (d,), "fixed")
    x = np.tile(base, (len(gy), len(gx), 1))
    x[:, :, inputs[0]], x[:, :, inputs[1]] = gx[None, :], gy[:, None]
    return gx, gy, x.reshape(-1, d)


def _draw_maps(maps, gx, gy, k, output, inputs, d, *, relative, norm, cmap):
    import matplotlib
    from matplotlib.colors import LogNorm, Normalize

    plt = _pyplot()
    colormap = matplotlib.colormaps[cmap]
    colormap = colormap.with_extremes(bad=colormap(0.0))  # LogNorm masks exact zeros: lowest colour
    rows = 1 if k == 1 else d
    fig, axes = plt.subplots(rows, d, figsize=(4.4 * d, 3.5 * rows), constrained_layout=True, squeeze=False)
    entries = [(j,) for j in range(d)] if k == 1 else [(j, l) for j in range(d) for l in range(d)]
    for panel, entry, p in zip(axes.ravel(), entries, range(maps.shape[-1])):
        err = maps[:, :, p]
        largest = float(err.max())
        if norm["log"] and largest > 0:
            scale = LogNorm(vmin=largest * 10.0 ** -norm["decades"], vmax=largest, clip=True)
        else:
            scale = Normalize(vmin=0.0, vmax=max(largest, np.finfo(float).tiny))
        mesh = panel.pcolormesh(gx, gy, err, shading="nearest", cmap=colormap, norm=scale)
        fig.colorbar(mesh, ax=panel)
        panel.set_xlabel(f"$x_{{{inputs[0]}}}$")
        panel.set_ylabel(f"$x_{{{inputs[1]}}}$")
        panel.set_title(f"{_partial_name(entry, output)}: max {err.max():.2e}", fontsize=10)
    kind = "relative" if relative else "absolute"
    name = "Jacobian" if k == 1 else "Hessian"
    fig.suptitle(f"{kind} error of the {name} of $f_{{{output}}}$", fontsize=11)
    return fig


def _partial_name(entry: tuple[int, ...], output: int) -> str:
    if len(entry) == 1:
        return f"$\\partial f_{{{output}}} / \\partial x_{{{entry[0]}}}$"
    j, l = entry
    denominator = f"\\partial x_{{{j}}}^2" if j == l else f"\\partial x_{{{j}}} \\partial x_{{{l}}}"
    return f"$\\partial^2 f_{{{output}}} / {denominator}$"


# --- shared checks -------------------------------------------------------------------------------


def _checked_orders(orders) -> tuple[int, ...]:
    orders = tuple(check.order(k, "each of orders") for k in np.atleast_1d(orders).tolist())
    if not orders:
        raise ConfigError("orders must name at least one derivative order")
    return orders


def _checked_index(index, size: int, name: str) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < size:
        raise ShapeError(f"{name} must be an integer in [0, {size}), got {index!r}")
    return int(index)


def _fmt(vector) -> str:
    return "(" + ", ".join(f"{float(c):.3g}" for c in np.ravel(vector)) + ")"
