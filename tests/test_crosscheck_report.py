"""Tests of nnderiv.crosscheck (the report, its verdicts, its references) and of ``nnderiv check``.

The torch and JAX references are exercised on small networks (they are tested in depth by
tests/test_crosscheck.py); here the point is the machinery: every quantity and gradient appears,
agreement passes, a deliberately wrong reference is caught, and the command's exit status says so.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnderiv as nd
from nnderiv.cli import main
from nnderiv.crosscheck import compare, tolerance, with_dtype  # nd.crosscheck is the function


def tanh_gelu_model(dtype="float64"):
    model = nd.Sequential(
        nd.Dense(2, 12, seed=0, dtype=dtype),
        nd.Activation("tanh"),
        nd.Dense(12, 12, seed=1, dtype=dtype),
        nd.Activation("gelu"),
        nd.Dense(12, 2, seed=2, dtype=dtype),
    )
    model.set_params({"0.b": np.linspace(-0.3, 0.3, 12), "4.b": np.array([0.1, -0.2])})
    return model


def points(n=20, d=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, d))


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def jax():
    return pytest.importorskip("jax")


# --------------------------------------------------------------------------------------------
# the report and its verdicts, with user arrays (no optional package needed)


def exact_references(model, x, order=3):
    D = nd.derivatives(model, x, order=order)
    arrays = {"value": D.value, "jacobian": D.jacobian, "hessian": D.hessian}
    arrays |= {f"tensor{k}": D.tensor(k) for k in range(3, order + 1)}
    return arrays | {"laplacian": np.trace(D.hessian, axis1=2, axis2=3)}


def test_exact_reference_agrees():
    model, x = tanh_gelu_model(), points()
    report = nd.crosscheck(model, x, exact_references(model, x))
    assert report.ok and not report.failures
    assert [row.quantity for row in report.rows] == ["value", "jacobian", "hessian", "tensor3", "laplacian"]
    assert report.order == 3 and report.n_points == 20 and report.reference == "the given arrays"
    laplacian_row = report.rows[-1]
    assert laplacian_row.max_rel < 1e-13  # nnderiv's Laplacian mode against the trace of its Hessian


def test_perturbed_hessian_is_flagged_at_its_point():
    model, x = tanh_gelu_model(), points()
    reference = exact_references(model, x)
    reference["hessian"] = reference["hessian"].copy()
    reference["hessian"][13, 1, 0, 1] += 1e-6 * np.abs(reference["hessian"]).max()  # far above 1e-10, far below visible
    report = nd.crosscheck(model, x, reference)
    assert not report.ok
    (failure,) = report.failures
    assert failure.quantity == "hessian" and failure.worst_point == 13
    assert 0.9e-6 < failure.max_rel < 1.1e-6
    text = str(report)
    assert "DISAGREES" in text and "1 of 5 quantities DISAGREE: hessian" in text


def test_report_table_is_plain_text():
    model, x = tanh_gelu_model(), points()
    text = str(nd.crosscheck(model, x, {"value": model(x)}))
    lines = text.splitlines()
    assert lines[0] == "nnderiv vs the given arrays: 20 points, order 0, float64"
    assert lines[1].split() == [
        "quantity",
        "max",
        "abs",
        "err",
        "max",
        "rel",
        "err",
        "worst",
        "point",
        "tolerance",
        "verdict",
    ]
    assert set(lines[2]) <= {"-", " "}
    assert lines[3].split()[0] == "value" and lines[3].split()[-1] == "ok"
    assert lines[-1] == "all 1 quantities agree"


def test_compare_measures():
    row = compare("x", np.zeros((3, 2)), np.zeros((3, 2)), 1e-10)
    assert row.ok and row.max_rel == 0 and row.worst_point == 0
    row = compare("x", np.array([[1e-20]]), np.zeros((1, 1)), 1e-10)
    assert row.max_rel == np.inf and row.ok  # within the absolute floor of 100 eps
    row = compare("g", np.ones((2, 2)), np.full((2, 2), 1.5), 1e-3, points_axis=False)
    assert not row.ok and row.worst_point is None and row.max_rel == pytest.approx(1 / 3)
    with pytest.raises(nd.ShapeError, match="the reference 'x'"):
        compare("x", np.zeros((3, 2)), np.zeros((2, 3)), 1e-10)


def test_tolerances_follow_dtype_and_order():
    assert tolerance("float64", 0) == tolerance("float64", 4) == 1e-10
    assert tolerance("float64", 6) == pytest.approx(1e-8)
    assert tolerance(np.float32, 2) == 1e-4
    model, x = tanh_gelu_model(), points()
    report = nd.crosscheck(model, x, {"value": model(x) * (1 + 1e-6)}, rtol=1e-5)
    assert report.ok and report.rows[0].tolerance == 1e-5


def test_bad_arguments():
    model, x = tanh_gelu_model(), points()
    with pytest.raises(nd.ConfigError, match="unknown quantities"):
        nd.crosscheck(model, x, {"curl": np.zeros(3)})
    with pytest.raises(nd.ConfigError, match="reference must be"):
        nd.crosscheck(model, x, "tensorflow")
    with pytest.raises(nd.ConfigError, match="crosscheck takes"):
        nd.crosscheck(42, x)
    with pytest.raises(nd.ShapeError):
        nd.crosscheck(model, x, {"jacobian": np.zeros((20, 2, 3))})
    with pytest.raises(nd.ShapeError, match="x must have shape"):
        nd.crosscheck(model, x[:, :1], {"value": np.zeros((20, 2))})


def test_with_dtype_casts_a_copy():
    model = tanh_gelu_model()
    single = with_dtype(nd.Sequential(model, nd.Activation("sin")), "float32")
    assert single.dtype == np.float32 and model.dtype == np.float64
    assert np.array_equal(single.params["0.0.W"], model.params["0.W"].astype(np.float32))


# --------------------------------------------------------------------------------------------
# references: torch and JAX


def test_torch_reference_every_quantity_and_gradient(torch):
    model, x = tanh_gelu_model(), points()
    report = nd.crosscheck(model, x, "torch", order=3)
    expected = ["value", "jacobian", "hessian", "tensor3", "laplacian"] + [f"grad {name}" for name in model.params]
    assert [row.quantity for row in report.rows] == expected
    assert report.ok, str(report)
    assert max(row.max_rel for row in report.rows) < 1e-13


def test_torch_module_is_its_own_reference(torch):
    """A torch module with a bias-free last layer and a Softplus: the module itself is the reference."""
    nn = torch.nn
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 8), nn.Softplus(), nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 1, bias=False))
    report = nd.crosscheck(module, points(d=3).astype(np.float32), "torch", order=2)
    assert report.ok, str(report) and report.dtype == "float32"
    names = [row.quantity for row in report.rows]
    assert "grad 4.W" in names and "grad 4.b" not in names  # torch has no bias there to compare with
    assert any("Softplus" in note for note in report.notes)
    assert report.rows[0].tolerance == 1e-4


def test_relu_network_gets_a_note_not_a_warning(torch):
    model = nd.MLP([2, 8, 1], activation="relu", seed=0)
    report = nd.crosscheck(model, points(), "torch", order=2, params=False)
    assert report.ok and any("zero almost everywhere" in note for note in report.notes)
    assert not any(row.quantity.startswith("grad") for row in report.rows)


def test_jax_reference_float64_and_float32(jax):
    x64_before = jax.config.jax_enable_x64
    model, x = tanh_gelu_model(), points(n=6)
    report = nd.crosscheck(model, x, "jax", order=2, quantities=["value", "hessian"])
    assert report.ok, str(report)
    assert [row.quantity for row in report.rows] == ["value", "hessian"] + [f"grad {n}" for n in model.params]
    assert max(row.max_rel for row in report.rows) < 1e-13  # float64 really was float64
    report32 = nd.crosscheck(with_dtype(model, "float32"), x, "jax", order=1, params=False)
    assert report32.ok and 1e-9 < max(row.max_rel for row in report32.rows) < 1e-5
    assert jax.config.jax_enable_x64 == x64_before  # the x64 switch was local


# --------------------------------------------------------------------------------------------
# model files and the command


def test_model_from_npz_and_onnx_paths(tmp_path, torch):
    pytest.importorskip("onnx")
    model = tanh_gelu_model()
    nd.save(model, tmp_path / "model.npz")
    nd.to_onnx(model, tmp_path / "model.onnx")
    for path in ("model.npz", "model.onnx"):
        report = nd.crosscheck(str(tmp_path / path), points(), "torch", order=2, params=False)
        assert report.ok, str(report)


def test_cli_check_onnx_against_torch(tmp_path, capsys, torch):
    pytest.importorskip("onnx")
    path = tmp_path / "model.onnx"
    nd.to_onnx(tanh_gelu_model(), path)
    status = main(["check", str(path), "--order", "3", "--points", "50", "--against", "torch", "--seed", "1"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "nnderiv vs torch: 50 points, order 3, float64" in out and "grad 4.W" in out
    assert "all 11 quantities agree" in out
    status = main(["check", str(path), "--points", "10", "--dtype", "float32", "--no-params"])
    out = capsys.readouterr().out
    assert status == 0 and "float32" in out and "grad" not in out


def test_cli_check_flags_a_wrong_reference_file(tmp_path, capsys):
    model, x = tanh_gelu_model(), points()
    nd.save(model, tmp_path / "model.npz")
    reference = exact_references(model, x, order=2)
    np.savez(tmp_path / "good.npz", x=x, **reference)
    reference["hessian"] = reference["hessian"] * (1 + 1e-7)
    np.savez(tmp_path / "bad.npz", x=x, **reference)
    assert main(["check", str(tmp_path / "model.npz"), "--against", str(tmp_path / "good.npz")]) == 0
    assert main(["check", str(tmp_path / "model.npz"), "--against", str(tmp_path / "bad.npz")]) == 1
    assert "1 of 4 quantities DISAGREE: hessian" in capsys.readouterr().out


def test_cli_check_errors_exit_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "missing.npz")]) == 2
    assert "no such file" in capsys.readouterr().err
    nd.save(tanh_gelu_model(), tmp_path / "model.npz")
    np.savez(tmp_path / "no_points.npz", value=np.zeros((3, 2)))
    assert main(["check", str(tmp_path / "model.npz"), "--against", str(tmp_path / "no_points.npz")]) == 2
    assert "has no array 'x'" in capsys.readouterr().err
