"""fit(): it learns, it is reproducible, it stops cleanly, it survives Ctrl-C, it checkpoints."""

import os
import signal
import time

import numpy as np
import pytest

import nnderiv as nd


def sine_data(n=64):
    x = np.linspace(-np.pi, np.pi, n)[:, None]
    return {"x": x, "y": np.sin(x), "dy": np.cos(x)[:, :, None]}


def small_problem(dtype="float64"):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (10, 2))
    data = {"x": x, "y": np.tanh(x @ [[1.0], [-2.0]])}
    return nd.MLP([2, 8, 1], activation="tanh", seed=1, dtype=dtype), nd.MSE("value", "y"), data


def snapshot(model):
    return {k: v.copy() for k, v in model.params.items()}


def assert_params_equal(model, expected):
    assert sorted(model.params) == sorted(expected)
    for name, theta in model.params.items():
        np.testing.assert_array_equal(theta, expected[name], err_msg=name)


class RecordingLoss(nd.Loss):
    """Wraps a loss and records every batch it sees and every value it returns."""

    def __init__(self, inner):
        self.inner, self.order, self.batches, self.values = inner, inner.order, [], []

    def __call__(self, D, batch):
        value, cotangent = self.inner(D, batch)
        self.batches.append({k: v.copy() for k, v in batch.items()})
        self.values.append(value)
        return value, cotangent


# ------------------------------------------------------------------ learning


@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_fit_reduces_a_type_2_loss_on_sine_tenfold(activation):
    model = nd.MLP([1, 32, 32, 1], activation=activation, seed=0)
    loss = nd.MSE("value", "y") + nd.MSE("jacobian", "dy")  # DDN "type 2": f and its Jacobian
    start = time.perf_counter()
    history = nd.fit(model, loss, sine_data(), optimizer=nd.Adam(1e-2), epochs=300, progress=False)
    assert time.perf_counter() - start < 10
    assert history.epochs == 300 and history.steps == 300 and not history.interrupted
    assert history.loss[-1] < history.loss[0] / 10
    final, _ = loss.value_and_grad(model, sine_data())
    assert final < history.loss[0] / 10


def test_fit_trains_float32_models_in_float32():
    model, loss, data = small_problem("float32")
    history = nd.fit(model, loss, data, optimizer=nd.Adam(1e-2), epochs=20, progress=False)
    assert all(theta.dtype == np.float32 for theta in model.params.values())
    assert history.loss[-1] < history.loss[0]


# ------------------------------------------------------------------ batches and seeds


def test_same_seed_same_training_and_different_seed_different_training():
    def train(seed):
        model, loss, data = small_problem()
        nd.fit(model, loss, data, epochs=5, batch_size=3, seed=seed, progress=False)
        return model.params

    first, again, other = train(7), train(7), train(8)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert any(not np.array_equal(first[name], other[name]) for name in first)


def test_default_optimizer_is_adam_1e_3():
    (model_a, loss, data), (model_b, _, _) = small_problem(), small_problem()
    nd.fit(model_a, loss, data, epochs=3, progress=False)
    nd.fit(model_b, loss, data, optimizer=nd.Adam(1e-3), epochs=3, progress=False)
    assert_params_equal(model_a, model_b.params)


def test_batches_cover_the_data_once_per_epoch_and_history_is_the_mean_batch_loss():
    model, inner, data = small_problem()
    loss = RecordingLoss(inner)
    history = nd.fit(model, loss, data, epochs=2, batch_size=4, seed=3, progress=False)
    assert [len(b["x"]) for b in loss.batches] == [4, 4, 2] * 2 and history.steps == 6
    for epoch in range(2):
        rows = np.concatenate([b["x"] for b in loss.batches[3 * epoch : 3 * epoch + 3]])
        assert sorted(map(tuple, rows)) == sorted(map(tuple, data["x"]))  # a permutation of the points
        assert history.loss[epoch] == pytest.approx(np.mean(loss.values[3 * epoch : 3 * epoch + 3]), rel=1e-15)
    for batch in loss.batches:  # targets travel with their points
        np.testing.assert_array_equal(batch["y"], np.tanh(batch["x"] @ [[1.0], [-2.0]]))


def test_without_shuffle_batches_come_in_order():
    model, inner, data = small_problem()
    loss = RecordingLoss(inner)
    nd.fit(model, loss, data, epochs=1, batch_size=4, shuffle=False, progress=False)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in loss.batches]), data["x"])


def test_batch_size_larger_than_the_data_is_one_full_batch():
    model, loss, data = small_problem()
    assert nd.fit(model, loss, data, epochs=2, batch_size=1000, progress=False).steps == 2


# ------------------------------------------------------------------ callbacks, stopping, interrupting


def test_callbacks_see_each_epoch_its_loss_and_the_model():
    model, loss, data = small_problem()
    seen = []
    history = nd.fit(
        model,
        loss,
        data,
        epochs=3,
        progress=False,
        callbacks=[lambda epoch, logs, m: seen.append((epoch, logs["loss"], m))],
    )
    assert [(e, l) for e, l, _ in seen] == list(enumerate(history.loss))
    assert all(m is model for _, _, m in seen)


def test_stop_training_from_a_callback_ends_cleanly():
    model, loss, data = small_problem()
    after_epoch_2, others = {}, []

    def stop_after_epoch_2(epoch, logs, m):
        if epoch == 2:
            after_epoch_2.update(snapshot(m))
            raise nd.StopTraining

    history = nd.fit(
        model, loss, data, epochs=10, progress=False, callbacks=[stop_after_epoch_2, lambda *a: others.append(a[0])]
    )
    assert history.epochs == 3 and history.stopped and not history.interrupted
    assert others == [0, 1, 2]  # the other callbacks still see the last epoch
    assert_params_equal(model, after_epoch_2)


def test_ctrl_c_from_a_callback_keeps_the_last_step_and_warns():
    model, loss, data = small_problem()
    after_epoch_1 = {}

    def interrupt(epoch, logs, m):
        if epoch == 1:
            after_epoch_1.update(snapshot(m))
            raise KeyboardInterrupt

    with pytest.warns(nd.NnderivWarning, match="interrupted"):
        history = nd.fit(model, loss, data, epochs=10, batch_size=5, progress=False, callbacks=interrupt)
    assert history.interrupted and history.epochs == 2 and history.steps == 4
    assert_params_equal(model, after_epoch_1)


def test_ctrl_c_inside_the_optimiser_step_leaves_the_model_at_the_previous_step(monkeypatch):
    model, loss, data = small_problem()
    optimizer, before_step_5 = nd.Adam(1e-2), {}
    real_step, calls = optimizer.step, []

    def step(params, grads):
        calls.append(1)
        if len(calls) == 5:
            before_step_5.update(snapshot(model))
            raise KeyboardInterrupt
        return real_step(params, grads)

    monkeypatch.setattr(optimizer, "step", step)
    with pytest.warns(nd.NnderivWarning, match="4 steps"):
        history = nd.fit(model, loss, data, optimizer=optimizer, epochs=10, batch_size=5, progress=False)
    assert history.interrupted and history.steps == 4 and history.epochs == 2
    assert_params_equal(model, before_step_5)


def test_a_sigint_during_the_commit_is_delivered_after_it(monkeypatch):
    model, loss, data = small_problem()
    optimizer, committed = nd.SGD(0.1), {}
    real_step, calls = optimizer.step, []
    handler_before = signal.getsignal(signal.SIGINT)

    def step(params, grads):
        calls.append(1)
        new_params = real_step(params, grads)
        if len(calls) == 3:
            committed.update({k: v.copy() for k, v in new_params.items()})
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C in the middle of the commit
        return new_params

    monkeypatch.setattr(optimizer, "step", step)
    with pytest.warns(nd.NnderivWarning, match="3 steps"):
        history = nd.fit(model, loss, data, optimizer=optimizer, epochs=10, batch_size=5, progress=False)
    assert history.interrupted and history.steps == 3
    assert_params_equal(model, committed)  # the step in flight was finished, none after it started
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_a_non_finite_loss_names_the_epoch_and_batch():
    class NaNAtEpoch1Batch2(nd.Loss):
        order, calls = 0, 0

        def __call__(self, D, batch):
            self.calls += 1
            value = np.nan if self.calls == 6 else 1.0  # 3 batches per epoch: epoch 1, batch 2
            return value, {0: np.zeros_like(D.value)}

    model, _, data = small_problem()
    with pytest.raises(nd.NonFiniteError, match="epoch 1, batch 2"):
        nd.fit(model, NaNAtEpoch1Batch2(), data, epochs=3, batch_size=4, progress=False)


# ------------------------------------------------------------------ checkpoints and progress


def test_checkpoint_holds_each_epochs_model(tmp_path):
    model, loss, data = small_problem()
    path = tmp_path / "checkpoint.npz"
    matches = []

    def compare_with_checkpoint(epoch, logs, m):
        saved = nd.load(path)
        matches.append(all(np.array_equal(saved.params[k], v) for k, v in m.params.items()))

    nd.fit(model, loss, data, epochs=3, progress=False, checkpoint=path, callbacks=compare_with_checkpoint)
    assert matches == [True, True, True]
    assert os.listdir(tmp_path) == ["checkpoint.npz"]  # no temporary files left behind
    assert_params_equal(nd.load(path), model.params)


def test_an_unwritable_checkpoint_fails_before_training(tmp_path):
    model, loss, data = small_problem()
    before = snapshot(model)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        nd.fit(model, loss, data, progress=False, checkpoint=tmp_path / "missing" / "model.npz")
    with pytest.raises(IsADirectoryError, match="checkpoint"):
        nd.fit(model, loss, data, progress=False, checkpoint=tmp_path)
    assert_params_equal(model, before)


def test_progress_bar_shows_the_loss(capsys):
    model, loss, data = small_problem()
    nd.fit(model, loss, data, epochs=2, progress=True)
    assert "loss=" in capsys.readouterr().err
    nd.fit(model, loss, data, epochs=2, progress=False)
    assert capsys.readouterr().err == ""


def test_history_reads_like_a_dict():
    model, loss, data = small_problem()
    history = nd.fit(model, loss, data, epochs=2, progress=False)
    assert history["loss"] == history.loss and history["epochs"] == 2 and history["interrupted"] is False
    assert repr(history).startswith("History(2 epochs, 2 steps")
    with pytest.raises(KeyError):
        history["accuracy"]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "data, error, match",
    [
        ([1, 2, 3], nd.NnderivError, "dict"),
        ({"y": np.zeros((4, 1))}, nd.NnderivError, "'x'"),
        ({"x": np.zeros((4, 3)), "y": np.zeros((4, 1))}, nd.ShapeError, r"\(N, 2\)"),
        ({"x": np.zeros((4, 2)), "y": np.zeros((5, 1))}, nd.ShapeError, r"data\['y'\].*4 rows"),
        ({"x": np.zeros((4, 2)), "y": np.float64(1.0)}, nd.ShapeError, r"data\['y'\]"),
        ({"x": np.zeros((0, 2)), "y": np.zeros((0, 1))}, nd.ShapeError, "no points"),
        ({"x": np.zeros((4, 2)), "y": np.full((4, 1), np.inf)}, nd.NonFiniteError, r"data\['y'\]"),
    ],
)
def test_bad_data_fails_before_training(data, error, match):
    model, loss, _ = small_problem()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        nd.fit(model, loss, data, progress=False)
    assert_params_equal(model, before)


def test_bad_arguments_fail_loudly():
    model, loss, data = small_problem()
    with pytest.raises(nd.ShapeError, match="epochs"):
        nd.fit(model, loss, data, epochs=0, progress=False)
    with pytest.raises(nd.ShapeError, match="batch_size"):
        nd.fit(model, loss, data, batch_size=0, progress=False)
    with pytest.raises(nd.NnderivError, match="loss"):
        nd.fit(model, lambda D, batch: 0.0, data, progress=False)
    with pytest.raises(nd.NnderivError, match="callbacks"):
        nd.fit(model, loss, data, callbacks=[1], progress=False)


def test_fixed_arrays_reach_every_batch_whole():
    model = nd.MLP([2, 8, 1], activation="tanh", seed=0)
    rng = np.random.default_rng(0)
    x, xb = rng.uniform(0, 1, (40, 2)), rng.uniform(0, 1, (7, 2)).round()
    loss = nd.OperatorMSE(nd.laplacian, "f", scale=-1.0) + 10.0 * nd.OperatorMSE(nd.value, "g", points="x_boundary")
    seen = []
    original = loss.value_and_grad

    def spying(model, batch):
        seen.append((len(batch["x"]), len(batch["x_boundary"])))
        return original(model, batch)

    loss.value_and_grad = spying
    data, fixed = {"x": x, "f": np.ones((40, 1))}, {"x_boundary": xb, "g": np.zeros((7, 1))}
    history = nd.fit(model, loss, data, fixed=fixed, batch_size=16, epochs=3, progress=False)
    assert seen == [(16, 7), (16, 7), (8, 7)] * 3 and history.steps == 9
    with pytest.raises(nd.ConfigError, match="both name"):
        nd.fit(model, loss, data, fixed={"f": np.ones((3, 1))}, progress=False)
    with pytest.raises(nd.NonFiniteError):
        nd.fit(model, loss, data, fixed={"x_boundary": xb, "g": np.full((7, 1), np.nan)}, progress=False)
