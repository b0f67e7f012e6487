"""save/load: bit-exact round trips, atomic writes, and a FileFormatError for every broken file."""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import nnderiv as nd
from nnderiv import io

ARCHITECTURE, VERSION = "__nnderiv_architecture__", "__nnderiv_format__"


def trained_model(dtype="float64"):
    model = nd.MLP([2, 5, 3], activation="softplus", seed=0, dtype=dtype)
    rng = np.random.default_rng(1)
    model.set_params({k: rng.normal(size=v.shape).astype(dtype) for k, v in model.params.items()})
    return model


def arrays_of_saved(path):
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def write_npz(path, arrays):
    with open(path, "wb") as file:
        np.savez(file, **arrays)
    return path


def valid_arrays(tmp_path, dtype="float64"):
    path = tmp_path / "valid.npz"
    nd.save(trained_model(dtype), path)
    return arrays_of_saved(path)


def architecture_bytes(config):
    return np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)


def assert_refused(path, match):
    with pytest.raises(nd.FileFormatError, match=match) as info:
        nd.load(path)
    assert str(path) in str(info.value)  # the message names the file


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    model = trained_model(dtype)
    path = tmp_path / "model.npz"
    nd.save(model, path)
    restored = nd.load(path)
    assert restored.dtype == np.dtype(dtype) and restored.config() == model.config()
    for name, theta in model.params.items():
        assert restored.params[name].dtype == theta.dtype
        np.testing.assert_array_equal(restored.params[name], theta)
    x = np.random.default_rng(2).normal(size=(4, 2))
    np.testing.assert_array_equal(nd.hessian(restored, x), nd.hessian(model, x))


def test_file_holds_plain_arrays_only(tmp_path):
    path = tmp_path / "model.npz"
    model = trained_model()
    nd.save(model, str(path))  # str and PathLike both work
    arrays = arrays_of_saved(path)  # allow_pickle=False: nothing in it needs pickle
    assert set(arrays) == {ARCHITECTURE, VERSION, *model.params}
    assert json.loads(arrays[ARCHITECTURE].tobytes()) == model.config()
    assert int(arrays[VERSION]) == io.FORMAT_VERSION


def test_save_overwrites_atomically_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "model.npz"
    nd.save(nd.MLP([2, 3, 1], seed=0), path)
    model = trained_model()
    nd.save(model, path)
    assert os.listdir(tmp_path) == ["model.npz"]
    np.testing.assert_array_equal(nd.load(path).params["0.W"], model.params["0.W"])


def test_an_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.npz"
    old = trained_model()
    nd.save(old, path)
    old_bytes = path.read_bytes()

    def interrupted_savez(file, **arrays):
        file.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(io.np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        nd.save(nd.MLP([2, 3, 1], seed=5), path)
    assert path.read_bytes() == old_bytes and os.listdir(tmp_path) == ["model.npz"]


def test_save_refuses_broken_models_and_missing_directories(tmp_path):
    model = trained_model()
    model.params["0.b"][1] = np.nan
    with pytest.raises(nd.NonFiniteError, match="'0.b'"):
        nd.save(model, tmp_path / "model.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nd.save(trained_model(), tmp_path / "no" / "such" / "model.npz")
    with pytest.raises(nd.NnderivError, match="Sequential"):
        nd.save(nd.Dense(2, 3), tmp_path / "model.npz")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ files that are not models


def test_missing_file_and_directory(tmp_path):
    assert_refused(tmp_path / "absent.npz", "no such file")
    assert_refused(tmp_path, "no such file")


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, world", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), b"PK\x03\x04junk"],
    ids=["empty", "text", "random-bytes", "zip-magic-then-junk"],
)
def test_files_that_are_not_npz_archives(tmp_path, content):
    path = tmp_path / "model.npz"
    path.write_bytes(content)
    assert_refused(path, "not a .npz archive")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_files(tmp_path, keep):
    path = tmp_path / "model.npz"
    nd.save(trained_model(), path)
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * keep)])
    assert_refused(path, "npz archive")


def test_a_single_npy_array(tmp_path):
    path = tmp_path / "model.npy"
    np.save(path, np.zeros(3))
    assert_refused(path, "single .npy array")


class Exploit:
    """Unpickling this would create a file: proof that load() never unpickles."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_data_is_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(Exploit(str(marker))))
    assert_refused(plain, "not a .npz archive")

    arrays = valid_arrays(tmp_path)
    arrays["0.W"] = np.array([Exploit(str(marker))], dtype=object)  # np.savez pickles object arrays
    assert_refused(write_npz(tmp_path / "object-param.npz", arrays), "pickle")
    arrays = valid_arrays(tmp_path)
    arrays[ARCHITECTURE] = np.array([Exploit(str(marker))], dtype=object)
    assert_refused(write_npz(tmp_path / "object-architecture.npz", arrays), "pickle")
    assert not marker.exists()


def test_a_zip_member_that_is_not_an_npy_array(tmp_path):
    path = write_npz(tmp_path / "model.npz", valid_arrays(tmp_path))
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("notes.txt", "not an array")
    assert_refused(path, "unexpected")
    arrays = valid_arrays(tmp_path)
    path = tmp_path / "raw-member.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            if key != "0.W":
                with archive.open(f"{key}.npy", "w") as member:
                    np.lib.format.write_array(member, array)
        archive.writestr("0.W", b"raw bytes where an array should be")
    assert_refused(path, "plain .npy array")


# ------------------------------------------------------------------ npz archives that are not valid models


def corrupted(tmp_path, change):
    arrays = valid_arrays(tmp_path)
    change(arrays)
    return write_npz(tmp_path / "corrupt.npz", arrays)


DENSE = {"kind": "Dense", "n_in": 2, "n_out": 5, "dtype": "float64"}


def sequential(*layers):
    return {"kind": "Sequential", "layers": list(layers)}


def with_architecture(config):
    return lambda arrays: arrays.update({ARCHITECTURE: architecture_bytes(config)})


CORRUPTIONS = {
    "no-version": (lambda a: a.pop(VERSION), "no '__nnderiv_format__'"),
    "future-version": (lambda a: a.update({VERSION: np.array(2)}), "format version 2 is not supported"),
    "version-not-integer": (lambda a: a.update({VERSION: np.array("1")}), "0-d integer"),
    "version-not-scalar": (lambda a: a.update({VERSION: np.array([1])}), "0-d integer"),
    "no-architecture": (lambda a: a.pop(ARCHITECTURE), "no '__nnderiv_architecture__'"),
    "architecture-as-text": (lambda a: a.update({ARCHITECTURE: np.array('{"kind": "Sequential"}')}), "uint8"),
    "not-utf8": (lambda a: a.update({ARCHITECTURE: np.frombuffer(b"\xff\xfe{", np.uint8)}), "not valid JSON"),
    "not-json": (lambda a: a.update({ARCHITECTURE: np.frombuffer(b"{kind: Dense", np.uint8)}), "not valid JSON"),
    "json-list": (with_architecture([1, 2]), "Sequential"),
    "not-sequential": (with_architecture(DENSE), "Sequential"),
    "unknown-layer-kind": (with_architecture(sequential({"kind": "Conv2D"})), "unknown layer kind 'Conv2D'"),
    "malformed-layer": (with_architecture(sequential(dict(DENSE, n_in="two"))), "architecture is invalid"),
    "negative-width": (with_architecture(sequential(dict(DENSE, n_in=-2))), "architecture is invalid"),
    "unknown-activation": (
        with_architecture(sequential(DENSE, {"kind": "Activation", "name": "swoosh"})),
        "architecture is invalid",
    ),
    "missing-parameter": (lambda a: a.pop("2.b"), r"missing \['2.b'\]"),
    "extra-parameter": (lambda a: a.update({"4.W": np.zeros((3, 3))}), r"unexpected \['4.W'\]"),
    "wrong-shape": (lambda a: a.update({"0.W": np.zeros((5, 2))}), r"'0.W' must be float64 of shape \(2, 5\)"),
    "wrong-dtype": (lambda a: a.update({"0.W": a["0.W"].astype(np.float32)}), "'0.W' must be float64"),
    "integer-weights": (lambda a: a.update({"0.b": np.zeros(5, dtype=np.int64)}), "'0.b' must be float64"),
    "nan-weight": (lambda a: a["2.W"].__setitem__((0, 0), np.nan), "'2.W' contains NaN or Inf"),
    "inf-weight": (lambda a: a["0.b"].__setitem__(0, -np.inf), "'0.b' contains NaN or Inf"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_corruption_raises_file_format_error(tmp_path, name):
    change, match = CORRUPTIONS[name]
    assert_refused(corrupted(tmp_path, lambda arrays: change(arrays)), match)


def test_big_endian_weights_are_refused_not_reinterpreted(tmp_path):
    path = corrupted(tmp_path, lambda a: a.update({"0.W": a["0.W"].astype(">f8")}))
    assert_refused(path, "'0.W' must be float64")


def test_nested_sequential_round_trip(tmp_path):
    model = nd.Sequential(nd.Dense(2, 3, seed=0), nd.Tanh(), nd.MLP([3, 4, 1], seed=1))
    nd.save(model, tmp_path / "nested.npz")
    restored = nd.load(tmp_path / "nested.npz")  # refuses (never returns fresh weights) until then
    assert sorted(restored.params) == sorted(model.params)
    for name, theta in model.params.items():
        np.testing.assert_array_equal(restored.params[name], theta)


def test_fortran_ordered_weights_load_bit_exact(tmp_path):
    arrays = valid_arrays(tmp_path)
    arrays["0.W"] = np.asfortranarray(arrays["0.W"])
    model = nd.load(write_npz(tmp_path / "fortran.npz", arrays))
    np.testing.assert_array_equal(model.params["0.W"], arrays["0.W"])
    assert model.params["0.W"].flags.c_contiguous
