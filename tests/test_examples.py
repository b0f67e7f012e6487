"""The PINN examples run end to end with tiny settings, and their training lowers the loss.

Accuracy needs the default (long) training and is recorded in the examples' docstrings; here only
that every path runs, prints its metric, and that the optimisers make progress.
"""

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnderiv as nd

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def example(monkeypatch):
    """Import an example by name (the examples import their sibling ``pinn_ode``)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module


def test_ode_example_trains_and_reports(example, capsys, tmp_path):
    ode = example("pinn_ode")
    g, losses, seconds = ode.train(epochs=30, lbfgs_iterations=20, n_points=32, progress=False)
    assert len(losses) == 50 and losses[-1] < 0.5 * losses[0] and seconds > 0
    assert np.isfinite(ode.max_error(g, n=11))
    pytest.importorskip("matplotlib")
    error = ode.main(["--epochs", "5", "--lbfgs", "5", "--points", "16", "--quiet", "--plot", str(tmp_path / "o.png")])
    out = capsys.readouterr().out
    assert "max |u - (1 + x^2)|" in out and "target 1e-04" in out and np.isfinite(error)
    assert (tmp_path / "o.png").stat().st_size > 0


def test_ode_residual_is_the_derivative_of_the_ansatz(example):
    ode = example("pinn_ode")
    g = nd.MLP([1, 8, 1], activation="sigmoid", seed=1)
    x = np.linspace(-1, 1, 9)[:, None]
    value, _ = ode.AnsatzResidual()(nd.derivatives(g, x, order=1), {"x": x, "f": ode.f(x)})
    h = 1e-5  # u' by central differences of u = 1 + x g(x): error O(h^2)
    du = (ode.solution(g, x + h) - ode.solution(g, x - h)) / (2 * h)
    assert value == pytest.approx(np.mean((du - ode.f(x)) ** 2), rel=1e-7)


def test_poisson_example_trains_and_reports(example, capsys, tmp_path):
    poisson = example("pinn_poisson")
    model, losses, _ = poisson.train(epochs=30, lbfgs_iterations=10, n_points=64, progress=False)
    assert losses[-1] < 0.5 * losses[0]
    assert 0 < poisson.relative_l2_error(model, n=11) < np.inf
    data = poisson.collocation_data(50, np.random.default_rng(0))
    on_edge = np.isclose(np.abs(data["x_boundary"]), 1.0).any(axis=1)  # centred: edges at +-1
    assert on_edge.all() and (np.abs(data["x"]) < 1).all()
    pytest.importorskip("matplotlib")
    args = ["--epochs", "5", "--lbfgs", "5", "--points", "32", "--quiet", "--plot", str(tmp_path / "p.png")]
    error = poisson.main(args)
    out = capsys.readouterr().out
    assert "relative L2 error" in out and "target 1e-03" in out and np.isfinite(error)
    assert (tmp_path / "p.png").stat().st_size > 0


def test_poisson_loss_is_the_residual_of_the_pde_in_the_original_coordinates(example):
    poisson = example("pinn_poisson")
    model = nd.MLP([2, 8, 1], activation="tanh", seed=0)
    data = poisson.collocation_data(6, np.random.default_rng(1))
    value, _ = poisson.poisson_loss(0.0).value_and_grad(model, data)
    x, h = (data["x"] + 1) / 2, 1e-4  # back to the unit square; Laplacian by 5-point differences, O(h^2)
    u = lambda p: poisson.solution(model, p)  # noqa: E731
    shifts = [np.array([h, 0.0]), np.array([0.0, h])]
    laplacian = sum(u(x + s) - 2 * u(x) + u(x - s) for s in shifts) / h**2
    assert value == pytest.approx(np.mean((-laplacian - data["f"]) ** 2), rel=1e-5)


@pytest.mark.parametrize("problem", ["ode", "goursat"])
def test_third_order_example_trains(example, problem):
    third = example("pinn_third_order")
    _, losses, _ = third.train(problem, epochs=20, lbfgs_iterations=10, progress=False)
    assert losses[-1] < 0.5 * losses[0]


def test_third_order_example_reports_every_order(example, capsys):
    metrics = example("pinn_third_order").main(["--epochs", "3", "--lbfgs", "2", "--quiet"])
    out = capsys.readouterr().out
    assert set(metrics) == {"ode", "goursat"}
    for name in ("d5u", "d3u/dy3", "d3u/dx2dy", "d3u/dxdy2", "target 1e-04", "target 1e-03"):
        assert name in out


def test_third_order_data_match_the_exact_solution(example):
    """The targets of the loss terms are the exact solution's derivatives, written out by hand."""
    third = example("pinn_third_order")
    data = third.goursat_data(5, np.random.default_rng(2))
    s, t = data["x_axis_x"][:, 0], data["x_axis_y"][:, 1]
    np.testing.assert_allclose(data["jet_axis_x"][:, 0], np.stack([np.sin(s), np.cos(s), -np.sin(s)], -1))
    np.testing.assert_allclose(data["jet_axis_y"][:, 0], np.stack([0 * t, np.cos(t)], -1))
    ode = third.ode_data(4, np.random.default_rng(3))
    np.testing.assert_allclose(ode["jet0"][0, 0, 0], [0.0, 2.0, 0.0], atol=1e-15)  # sin(pi) ~ 5e-16
    np.testing.assert_allclose(ode["f"][:, 0, 0], -8 * np.cos(2 * ode["x"][:, 0]))


def test_examples_run_as_scripts():
    script = EXAMPLES / "pinn_ode.py"
    result = subprocess.run(
        [sys.executable, str(script), "--epochs", "3", "--lbfgs", "3", "--points", "8", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "max |u - (1 + x^2)|" in result.stdout
