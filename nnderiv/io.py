"""Saving and loading models: one ``.npz`` file, written atomically, read without pickle.

File format (version 1), a NumPy ``.npz`` archive of plain (never object) arrays:

- ``__nnderiv_format__``: 0-d integer array, the format version (``FORMAT_VERSION``);
- ``__nnderiv_architecture__``: the UTF-8 bytes (``uint8`` array) of the JSON text of
  ``model.config()``, from which :func:`nnderiv.layers.layer_from_config` rebuilds the layers;
- one array per parameter, under its name in ``model.params`` (``"0.W"``, ``"0.b"``, ...).

:func:`save` writes to a temporary file in the target directory and renames it over the target
(``os.replace``), so a reader never sees a half-written file and an interrupted save leaves the
previous file intact. :func:`load` reads with ``allow_pickle=False`` and checks everything before
building the model; any problem raises :class:`~nnderiv.errors.FileFormatError` naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from .errors import ConfigError, FileFormatError, NnderivError, NonFiniteError
from .layers import Sequential, layer_from_config

FORMAT_VERSION = 1
_VERSION_KEY = "__nnderiv_format__"
_ARCHITECTURE_KEY = "__nnderiv_architecture__"
# what a malformed file can make numpy, zipfile and layer_from_config raise
_READ_ERRORS = (
    OSError,
    ValueError,
    TypeError,
    KeyError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    RecursionError,
    MemoryError,
)


def save(model: Sequential, path: str | os.PathLike) -> None:
    """Write ``model`` (architecture and parameters) to the ``.npz`` file ``path``, atomically.

    The file is written exactly at ``path`` (no suffix is added) and replaces any file there only
    once it is complete. Parameters must be finite. :func:`load` reads it back bit for bit.

    >>> import os, tempfile, numpy as np, nnderiv as nd
    >>> model = nd.MLP([2, 8, 1], seed=0, dtype="float32")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "model.npz")
    ...     nd.save(model, path)
    ...     restored = nd.load(path)
    >>> restored.dtype, all(np.array_equal(restored.params[k], v) for k, v in model.params.items())
    (dtype('float32'), True)
    """
    arrays = _arrays_of(model)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save the model to {path!r}: the directory {folder!r} does not exist")
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary file behind
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _arrays_of(model) -> dict[str, np.ndarray]:
    """Every array of the file: format version, architecture JSON bytes, parameters."""
    if not isinstance(model, Sequential):
        raise ConfigError(f"save() takes a Sequential model (e.g. nd.MLP), got {type(model).__name__}")
    params = model.params
    for name, theta in params.items():
        if not np.isfinite(theta).all():
            raise NonFiniteError(f"parameter {name!r} contains NaN or Inf; refusing to save a broken model")
    architecture = json.dumps(model.config()).encode("utf-8")
    return {
        _VERSION_KEY: np.array(FORMAT_VERSION, dtype=np.int64),
        _ARCHITECTURE_KEY: np.frombuffer(architecture, dtype=np.uint8),
        **params,
    }


def load(path: str | os.PathLike) -> Sequential:
    """Read a model written by :func:`save`; ``FileFormatError`` for anything else.

    Never unpickles (``allow_pickle=False``). Checked: the file exists and is an ``.npz``
    archive, the format version, the architecture JSON, and that the parameters are exactly
    the model's (names, shapes, dtypes) and finite. Returns a :class:`~nnderiv.Sequential`.

    >>> import os, tempfile, numpy as np, nnderiv as nd
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "not-a-model.npz")
    ...     with open(path, "wb") as file:
    ...         _ = file.write(b"hello")
    ...     try:
    ...         nd.load(path)
    ...     except nd.FileFormatError as error:
    ...         print("refused:", "not a .npz archive" in str(error))
    refused: True
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileFormatError(f"cannot load a model from {path!r}: no such file")
    with open(path, "rb") as file:  # ours to close: np.load leaks its own handle when a zip is corrupt
        try:
            archive = np.load(file, allow_pickle=False)
        except _READ_ERRORS as exc:
            raise _bad(path, f"not a .npz archive ({type(exc).__name__}: {exc})") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise _bad(path, "not a .npz archive but a single .npy array")
        with archive:
            try:
                return _model_from_archive(archive, path)
            except FileFormatError:
                raise
            except _READ_ERRORS as exc:
                raise _bad(path, f"a corrupt .npz archive ({type(exc).__name__}: {exc})") from None


def _model_from_archive(archive, path: str) -> Sequential:
    _check_version(archive, path)
    model = _model_of_architecture(archive, path)
    expected = model.params
    stored = set(archive.files) - {_VERSION_KEY, _ARCHITECTURE_KEY}
    missing, extra = sorted(set(expected) - stored), sorted(stored - set(expected))
    if missing or extra:
        raise _bad(path, f"its parameters do not match its architecture: missing {missing}, unexpected {extra}")
    params = {name: _parameter(archive, name, theta, path) for name, theta in expected.items()}
    model.set_params(params)
    restored = model.params
    if not all(np.array_equal(restored[name], theta) for name, theta in params.items()):
        raise ConfigError(
            f"the parameters read from {path!r} could not be set on the rebuilt model (nested Sequential?)"
        )
    return model


def _check_version(archive, path: str) -> None:
    version = _member(archive, _VERSION_KEY, path)
    if version.shape != () or version.dtype.kind not in "iu":
        raise _bad(path, f"its format version must be a 0-d integer array, got {version.dtype} {version.shape}")
    if int(version) != FORMAT_VERSION:
        raise _bad(
            path, f"format version {int(version)} is not supported (this nnderiv reads version {FORMAT_VERSION})"
        )


def _model_of_architecture(archive, path: str) -> Sequential:
    text = _member(archive, _ARCHITECTURE_KEY, path)
    if text.dtype != np.uint8 or text.ndim != 1:
        raise _bad(path, f"its architecture must be a 1-d uint8 array of JSON text, got {text.dtype} {text.shape}")
    try:
        config = json.loads(text.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _bad(path, f"its architecture is not valid JSON text ({exc})") from None
    if not isinstance(config, dict) or config.get("kind") != "Sequential":
        raise _bad(path, "its architecture must describe a Sequential model ({'kind': 'Sequential', ...})")
    try:
        return layer_from_config(config)
    except (NnderivError, *_READ_ERRORS) as exc:
        raise _bad(path, f"its architecture is invalid ({type(exc).__name__}: {exc})") from None


def _parameter(archive, name: str, theta: np.ndarray, path: str) -> np.ndarray:
    """The stored parameter ``name``, checked against the freshly built ``theta``."""
    array = _member(archive, name, path)
    if array.shape != theta.shape or array.dtype != theta.dtype:
        raise _bad(
            path,
            f"parameter {name!r} must be {theta.dtype} of shape {theta.shape} for its architecture, "
            f"got {array.dtype} of shape {array.shape}",
        )
    if not np.isfinite(array).all():
        raise _bad(path, f"parameter {name!r} contains NaN or Inf")
    return np.ascontiguousarray(array)


def _member(archive, key: str, path: str) -> np.ndarray:
    """One array of the archive; refuses missing keys, pickled objects and non-.npy members."""
    if key not in archive.files:
        raise _bad(path, f"it has no {key!r} array")
    try:
        array = archive[key]
    except ValueError as exc:  # object arrays, which would need pickle, land here
        raise _bad(path, f"its {key!r} array cannot be read without pickle ({exc})") from None
    if not isinstance(array, np.ndarray) or array.dtype.hasobject:
        raise _bad(path, f"its {key!r} member is not a plain .npy array")
    return array


def _bad(path: str, problem: str) -> FileFormatError:
    return FileFormatError(f"{path!r} is not an nnderiv model file: {problem}")
