"""Tests of nnderiv.plot: figures have the right panels and show exactly nnderiv's derivatives."""

from __future__ import annotations

import os
import sys
from functools import partial

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
if "MPLBACKEND" not in os.environ:  # never open windows under pytest
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import nnderiv as nd  # noqa: E402
from nnderiv.plot import error_maps, profiles  # noqa: E402


@pytest.fixture
def model():
    return nd.MLP([2, 12, 12, 3], activation="gelu", seed=1)


@pytest.fixture(autouse=True)
def no_figures_left():
    """Every test closes what it opens: a leak would show up as figures surviving the test."""
    plt.close("all")
    yield
    assert plt.get_fignums() == []


def exact_quadratic(x):
    """``f(x) = (x_0^2 x_1, ...)``: its derivatives along ``v = (1, 0)`` of order 0..2, ``(N, 3, 1, 3)``."""
    f0 = x[:, 0] ** 2 * x[:, 1]
    along = np.stack([f0, 2 * x[:, 0] * x[:, 1], 2 * x[:, 1]], axis=-1)
    return np.repeat(along[:, None, None, :], 3, axis=1)


def test_profiles_panels_and_data_equal_taylor_mode(model):
    x0, v, t = np.array([0.3, -0.2]), np.array([1.0, 0.5]), np.linspace(-1, 1, 17)
    fig = profiles(model, x0, v, orders=(0, 1, 2), output=1, t=t)
    try:
        assert len(fig.axes) == 3
        along = nd.taylor(model, x0 + t[:, None] * v, directions=[v], order=2)[:, 1, 0]  # (N, 3)
        for k, panel in enumerate(fig.axes):
            (line,) = panel.lines  # no truth given: the network's line only
            np.testing.assert_array_equal(line.get_xdata(), t)
            np.testing.assert_allclose(line.get_ydata(), along[:, k], rtol=0, atol=1e-14)
    finally:
        plt.close(fig)


def test_profiles_truth_callable_and_dict_draw_the_same_lines(model):
    t = np.linspace(-1, 1, 9)
    x = np.array([0.0, 1.0]) + t[:, None] * np.array([1.0, 0.0])
    truth = exact_quadratic(x)[:, 0, 0]  # (N, 3)
    as_dict = {k: partial(lambda x, k: exact_quadratic(x)[:, :, 0, k], k=k) for k in (1, 2)}
    for given in (exact_quadratic, as_dict):
        fig = profiles(model, [0.0, 1.0], [1.0, 0.0], truth=given, orders=(1, 2), t=t)
        assert len(fig.axes) == 2
        for k, panel in zip((1, 2), fig.axes):
            truth_line, net_line = panel.lines
            assert (truth_line.get_label(), net_line.get_label()) == ("truth", "network")
            np.testing.assert_allclose(truth_line.get_ydata(), truth[:, k])
        plt.close(fig)


def test_profiles_draw_into_given_axes_to_overlay_models(model):
    other = nd.MLP([2, 4, 3], activation="tanh", seed=2)
    fig = profiles(model, [0.0, 0.0], [0.0, 1.0], t=np.linspace(0, 1, 5), label="a")
    same = profiles(other, [0.0, 0.0], [0.0, 1.0], t=np.linspace(0, 1, 5), ax=fig.axes, label="b")
    assert same is fig and len(fig.axes) == 3
    assert [line.get_label() for line in fig.axes[0].lines] == ["a", "b"]
    with pytest.raises(nd.ConfigError, match="one Axes per plotted order"):
        profiles(model, [0.0, 0.0], [0.0, 1.0], ax=fig.axes[:2])
    plt.close(fig)


@pytest.mark.parametrize(
    "truth, match",
    [
        (lambda x: np.zeros((len(x), 3, 1, 2)), r"K \+ 1\) with K >= 2"),  # one order short
        (lambda x: np.zeros((len(x), 3, 3)), r"must return shape"),  # not the taylor layout
        ({0: lambda x: np.zeros((len(x), 3))}, r"no callable for orders \[1, 2\]"),
        ({k: (lambda x: np.zeros(len(x))) for k in range(3)}, r"truth\[0\]\(x\).*must have shape \(200, 3\)"),
        ("sin", r"truth must be a callable"),
    ],
)
def test_profiles_reject_a_truth_of_the_wrong_shape_before_drawing(model, truth, match):
    with pytest.raises((nd.ShapeError, nd.ConfigError), match=match):
        profiles(model, [0.0, 0.0], [1.0, 0.0], truth=truth)
    assert plt.get_fignums() == []  # nothing half-drawn is left open


def test_profiles_check_line_arguments(model):
    with pytest.raises(nd.ShapeError, match=r"direction must have shape \(2,\)"):
        profiles(model, [0.0, 0.0], [1.0, 0.0, 0.0])
    with pytest.raises(nd.ShapeError, match="output must be an integer in"):
        profiles(model, [0.0, 0.0], [1.0, 0.0], output=3)
    with pytest.raises(nd.ShapeError, match="t must be a non-empty 1-d array"):
        profiles(model, [0.0, 0.0], [1.0, 0.0], t=np.zeros((2, 2)))
    with pytest.raises(nd.OrderError):
        profiles(model, [0.0, 0.0], [1.0, 0.0], orders=(0, -1))


@pytest.mark.parametrize("quantity, n_maps", [("jacobian", 2), ("hessian", 4)])
def test_error_maps_panels_and_data_equal_full_mode_errors(model, quantity, n_maps):
    gx, gy = np.linspace(-1, 1, 7), np.linspace(0, 2, 5)
    zero = (lambda x: np.zeros((len(x), 3, 2))) if quantity == "jacobian" else (lambda x: np.zeros((len(x), 3, 2, 2)))
    fig = error_maps(model, gx, gy, zero, quantity=quantity, output=2)
    try:
        assert len(fig.axes) == 2 * n_maps  # the maps, then one colour bar each
        X, Y = np.meshgrid(gx, gy)
        D = nd.derivatives(model, np.stack([X.ravel(), Y.ravel()], -1), order=2)
        expected = np.abs(getattr(D, quantity)[:, 2]).reshape(len(gy), len(gx), n_maps)
        for p, panel in enumerate(fig.axes[:n_maps]):
            shown = np.asarray(panel.collections[0].get_array()).reshape(len(gy), len(gx))
            np.testing.assert_allclose(shown, expected[:, :, p], rtol=0, atol=1e-14)
    finally:
        plt.close(fig)


def test_error_maps_relative_error_and_fixed_inputs():
    model = nd.MLP([3, 8, 1], activation="tanh", seed=0)
    gx = gy = np.linspace(-1, 1, 4)
    ones = lambda x: np.ones((len(x), 1, 3))  # noqa: E731
    fig = error_maps(model, gx, gy, ones, inputs=(2, 0), fixed=[0.0, 0.7, 0.0], relative=True, eps=0.5, log=False)
    x = np.zeros((len(gy), len(gx), 3))
    x[:, :, 2], x[:, :, 0], x[:, :, 1] = gx[None, :], gy[:, None], 0.7
    J = nd.jacobian(model, x.reshape(-1, 3))[:, 0]
    expected = (np.abs(J - 1) / 1.5).reshape(len(gy), len(gx), 3)
    assert len(fig.axes) == 6
    for p, panel in enumerate(fig.axes[:3]):
        shown = np.asarray(panel.collections[0].get_array()).reshape(len(gy), len(gx))
        np.testing.assert_allclose(shown, expected[:, :, p], rtol=1e-14)
    assert fig.axes[0].get_xlabel() == "$x_{2}$" and fig.axes[0].get_ylabel() == "$x_{0}$"
    plt.close(fig)


def test_error_maps_reject_bad_arguments(model):
    grid = np.linspace(-1, 1, 3)
    jac = lambda x: np.zeros((len(x), 3, 2))  # noqa: E731
    with pytest.raises(nd.ShapeError, match=r"truth\(x\).*must have shape \(9, 3, 2, 2\)"):
        error_maps(model, grid, grid, jac, quantity="hessian")
    with pytest.raises(nd.ConfigError, match="quantity must be"):
        error_maps(model, grid, grid, jac, quantity="laplacian")
    with pytest.raises(nd.ConfigError, match="truth must be a callable"):
        error_maps(model, grid, grid, np.zeros((9, 3, 2)))
    with pytest.raises(nd.ConfigError, match="two distinct"):
        error_maps(model, grid, grid, jac, inputs=(1, 1))
    with pytest.raises(nd.ShapeError, match="grid_y must be a 1-d array"):
        error_maps(model, grid, np.zeros((3, 3)), jac)
    with pytest.raises(nd.ShapeError, match="at least 2 inputs"):
        error_maps(nd.MLP([1, 3], seed=0), grid, grid, jac)
    assert plt.get_fignums() == []


def test_missing_matplotlib_names_the_plot_extra(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'nnderiv\[plot\]'"):
        profiles(model, [0.0, 0.0], [1.0, 0.0])
