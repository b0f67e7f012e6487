"""The straight-line kernels of :mod:`nnderiv.backends.numba_codegen`.

Oracle: the NumPy reference's ``compose``, ``compose_saving`` and ``compose_vjp``. The generated
loops add the same products in the same order with exact IEEE arithmetic, so the results must be
equal bit for bit, in float64 and float32, for every kind of table.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
from backend_checks import CODEGEN_TABLES

import nnderiv as nd
from nnderiv import cli
from nnderiv.backends import numba_backend, numba_codegen
from nnderiv.backends import numpy_backend as reference
from nnderiv.combinatorics import (
    collapsed_second_order_table,
    directional_table,
    multi_index_table,
)
from nnderiv.errors import ConfigError
from nnderiv.kernels import taylor_coefficients

TABLES = CODEGEN_TABLES


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("table_name", sorted(TABLES))
def test_straight_line_kernels_equal_the_reference_bit_for_bit(table_name, dtype, rng):
    table = TABLES[table_name]
    K = table.order
    stack = rng.normal(size=(table.n_coef, 257, 5)).astype(dtype)
    out_bar = rng.normal(size=stack.shape).astype(dtype)
    a = taylor_coefficients(nd.get_activation("tanh"), stack[0], K + 1)
    want, powers = reference.compose_saving(stack, a, table, K)
    got, got_bar = np.empty_like(stack), np.empty_like(stack)
    numba_codegen.forward(table, K, flat(a), flat(stack), flat(got))
    np.testing.assert_array_equal(got, want)
    numba_codegen.backward(table, K, flat(out_bar), flat(stack), flat(a), flat(got_bar))
    np.testing.assert_array_equal(got_bar, reference.compose_vjp(out_bar, stack, powers, a, table, K))


def test_the_backend_keeps_no_powers_for_them_and_its_pullback_recomputes_them(monkeypatch, rng):
    monkeypatch.setattr(numba_backend, "STRAIGHT_LINE_MIN_ELEMENTS", 0)
    table = multi_index_table(2, 3)
    stack = rng.normal(size=(table.n_coef, 40, 3))
    a = taylor_coefficients(nd.get_activation("tanh"), stack[0], 4)
    out, powers = numba_backend.compose_saving(stack, a, table, 3)
    assert powers.shape[0] == 0
    want, want_powers = reference.compose_saving(stack, a, table, 3)
    np.testing.assert_array_equal(out, want)
    out_bar = rng.normal(size=stack.shape)
    want_bar = reference.compose_vjp(out_bar, stack, want_powers, a, table, 3)
    monkeypatch.setattr(numba_backend, "STRAIGHT_LINE_MIN_ELEMENTS", 2**62)  # a small stack without powers
    np.testing.assert_array_equal(numba_backend.compose_vjp(out_bar, stack, powers, a, table, 3), want_bar)


def test_large_tables_and_small_stacks_use_the_generic_kernels(rng):
    big = multi_index_table(8, 3)  # 165 rows
    assert not numba_codegen.supports(big, 3)
    assert numba_codegen.supports(collapsed_second_order_table(64), 2)
    small = multi_index_table(2, 2)
    few_points = np.zeros((small.n_coef, 10, 8))
    many_points = np.zeros((small.n_coef, 4096, 64))
    assert not numba_backend._straight_line(few_points, small, 2)
    assert numba_backend._straight_line(many_points, small, 2)
    assert not numba_backend._straight_line(many_points.astype(np.float16), small, 2)
    stack = rng.normal(size=(big.n_coef, 8, 64))
    a = taylor_coefficients(nd.get_activation("tanh"), stack[0], 4)
    out, powers = numba_backend.compose_saving(stack, a, big, 3)
    assert powers.shape[0] == 2  # the generic kernels keep delta^2 and delta^3


def test_the_docstring_shows_the_generated_loop():
    shown = numba_codegen.__doc__.split("shows::\n\n", 1)[1].split("\n\n", 1)[0]
    assert [line.strip() for line in shown.splitlines()] == [
        line.strip() for line in numba_codegen.forward_source(multi_index_table(2, 2), 2).strip().splitlines()
    ]


def test_sources_go_to_the_cache_directory_and_fall_back_to_a_temporary_one(tmp_path, monkeypatch):
    monkeypatch.setenv("NNDERIV_CACHE_DIR", str(tmp_path / "cache"))
    path = numba_codegen._write("nnderiv_kernel_test", "x = 1\n")
    assert path == tmp_path / "cache" / "kernels" / "nnderiv_kernel_test.py"
    assert path.read_text() == "x = 1\n"
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setenv("NNDERIV_CACHE_DIR", str(blocked))
    fallback = numba_codegen._write("nnderiv_kernel_test", "x = 2\n")
    assert fallback.parent != blocked / "kernels" and fallback.read_text() == "x = 2\n"
    fallback.unlink()


def test_a_table_gets_one_module_named_by_its_source(monkeypatch, tmp_path):
    monkeypatch.setenv("NNDERIV_CACHE_DIR", str(tmp_path))
    table = directional_table(7, 1)
    module = numba_codegen.kernels(table, 1)
    assert module is numba_codegen.kernels(table, 1)
    assert sys.modules[module.__name__] is module
    assert module.__file__.startswith(str(tmp_path))
    assert "Taylor mode" in module.__doc__


def _stack_for_tanh(table, dtype, rng, points=257):
    stack = rng.normal(size=(table.n_coef, points, 5)).astype(dtype)
    stack[0] *= 3.0
    stack[0, :4, 0] = [0.0, 30.0, -500.0, np.nan]
    return stack


def flat(array):
    return array.reshape(len(array), -1)


def assert_fused_tanh_step(table, stack, run) -> None:
    """``run(z, out, a)`` (``a=None``: not kept) is tanh's activation step on ``table``: its
    coefficients are the Numba fill's formulas (within 8 ulp of a row's largest), and its output is
    the composition of exactly those coefficients with multiply-adds contracted: within a rounding
    per operation of the sum of the terms' magnitudes (the composition of ``|a|`` and ``|z|``);
    the same without keeping the coefficients."""
    K, dtype = table.order, stack.dtype
    out, a = np.empty_like(stack), np.empty((K + 2, *stack.shape[1:]), dtype=dtype)
    run(flat(stack), flat(out), flat(a))
    want_a = numba_backend.taylor_coefficients(nd.get_activation("tanh"), stack[0], K + 1)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(want_a))
    finite = np.isfinite(want_a)
    scale = np.where(finite, np.maximum(np.abs(a), np.abs(want_a)), 0).max(axis=(1, 2), keepdims=True)
    assert (np.abs(a - want_a)[finite] <= 8 * np.broadcast_to(np.spacing(scale), a.shape)[finite]).all()
    composed, magnitude = reference.compose(stack, a, table, K), reference.compose(np.abs(stack), np.abs(a), table, K)
    operations = 4 * (K + 2)  # the longest chain of roundings of one output entry, with margin
    error, bound = np.abs(out - composed), operations * np.finfo(dtype).eps * magnitude
    assert (np.isnan(out) == np.isnan(composed)).all() and (error[~np.isnan(out)] <= bound[~np.isnan(out)]).all()
    alone = np.empty_like(stack)
    run(flat(stack), flat(alone), None)
    np.testing.assert_array_equal(alone, out)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("table_name", ["full d=3 K=3", "directional n=3 K=4", "full d=1 K=1", "full d=2 K=0"])
def test_the_fused_tanh_step_composes_its_own_coefficients_which_are_the_fills(table_name, dtype, rng):
    """One pass computing tanh's coefficients in registers and composing them."""
    table = TABLES[table_name]
    assert_fused_tanh_step(
        table,
        _stack_for_tanh(table, dtype, rng),
        lambda z, out, a: numba_codegen.tanh_forward(table, table.order, z, out, a),
    )


#: Taylor mode by direction: few and many directions (33 of order 4: 133 rows, beyond MAX_ROWS),
#: order 1 (one row per direction) to 6
BY_DIRECTION = [(2, 1), (2, 3), (5, 6), (33, 4)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("n_dir", "K"), BY_DIRECTION)
def test_taylor_mode_by_direction_equals_the_reference(n_dir, K, dtype, rng, monkeypatch):
    """The kernels of one direction, run direction by direction in blocks of columns (here 64, so
    that the 257 x 5 columns end in a partial block): the composition with given coefficients is
    the reference's bit for bit (the same products in the same order), the fused tanh step passes
    :func:`assert_fused_tanh_step`."""
    monkeypatch.setattr(numba_codegen, "DIRECTION_BLOCK", 64)
    table = directional_table(n_dir, K)
    assert numba_codegen.supports(table, K) == (table.n_coef <= numba_codegen.MAX_ROWS)
    stack = _stack_for_tanh(table, dtype, rng)
    a = taylor_coefficients(nd.get_activation("sin"), stack[0], K)
    got = np.empty_like(stack)
    numba_codegen.taylor_forward(K, flat(a), flat(stack), flat(got))
    np.testing.assert_array_equal(got, reference.compose(stack, a, table, K))
    assert_fused_tanh_step(table, stack, lambda z, out, a: numba_codegen.tanh_taylor_forward(K, z, out, a))
    # the pullback: the value row's sums over the directions run in another order than the
    # reference's, so within a rounding per operation of the sum of the terms' magnitudes
    stack = np.nan_to_num(stack)
    a = taylor_coefficients(nd.get_activation("tanh"), stack[0], K + 1)
    out_bar = rng.normal(size=stack.shape).astype(dtype)
    got = np.empty_like(stack)
    numba_codegen.taylor_backward(K, flat(out_bar), flat(stack), flat(a), flat(got))
    powers = reference.compose_saving(stack, a, table, K)[1]
    want = reference.compose_vjp(out_bar, stack, powers, a, table, K)
    absolute = [np.abs(array) for array in (out_bar, stack, a)]
    magnitude = reference.compose_vjp(absolute[0], absolute[1], np.abs(powers), absolute[2], table, K)
    assert (np.abs(got - want) <= 4 * (K + 2) * n_dir * np.finfo(dtype).eps * magnitude).all()


def test_the_backend_runs_the_fused_tanh_step_on_straight_line_tables(monkeypatch, rng):
    monkeypatch.setattr(numba_backend, "STRAIGHT_LINE_MIN_ELEMENTS", 0)
    calls, real = [], numba_codegen.tanh_forward
    monkeypatch.setattr(numba_codegen, "tanh_forward", lambda *args: calls.append(len(args)) or real(*args))
    table, tanh = multi_index_table(2, 2), nd.get_activation("tanh")
    stack = rng.normal(size=(table.n_coef, 40, 3))
    want = reference.activate_saving(stack, tanh, table, 2)
    out = numba_backend.activate(stack, tanh, table, 2)
    saved_out, a, powers = numba_backend.activate_saving(stack, tanh, table, 2)
    assert calls == [4, 5] and powers.shape[0] == 0 and a.shape == want[1].shape
    for got, expected in [(out, want[0]), (saved_out, want[0]), (a, want[1])]:
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15)
    monkeypatch.setattr(numba_backend, "FUSED_SAVING_MAX_ROWS", table.n_coef - 1)  # too many rows to save in one pass
    saved_out, a, powers = numba_backend.activate_saving(stack, tanh, table, 2)
    assert calls == [4, 5] and powers.shape[0] == 0  # the fill, then the straight-line composition
    np.testing.assert_allclose(saved_out, want[0], rtol=1e-13, atol=1e-15)
    monkeypatch.setattr(numba_backend, "FUSED_TANH", False)  # the switch: fill, then composition
    np.testing.assert_allclose(numba_backend.activate(stack, tanh, table, 2), want[0], rtol=1e-13, atol=1e-15)
    assert calls == [4, 5]


def test_the_backend_runs_taylor_mode_by_direction_from_enough_rows(monkeypatch, rng):
    monkeypatch.setattr(numba_backend, "STRAIGHT_LINE_MIN_ELEMENTS", 0)
    calls = []
    for name in ("tanh_taylor_forward", "taylor_forward"):
        real = getattr(numba_codegen, name)
        monkeypatch.setattr(numba_codegen, name, lambda *args, real=real, name=name: calls.append(name) or real(*args))
    pulled, real_backward = [], numba_codegen.taylor_backward
    monkeypatch.setattr(numba_codegen, "taylor_backward", lambda *args: pulled.append(1) or real_backward(*args))
    tanh, sin = nd.get_activation("tanh"), nd.get_activation("sin")
    close = lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)  # noqa: E731
    table = directional_table(6, 3)
    assert table.n_coef == numba_backend.DIRECTIONS_MIN_ROWS
    stack = rng.normal(size=(table.n_coef, 40, 3))
    want = reference.activate_saving(stack, tanh, table, 3)
    close(numba_backend.activate(stack, tanh, table, 3), want[0])
    out, a, powers = numba_backend.activate_saving(stack, tanh, table, 3)
    assert calls == ["tanh_taylor_forward"] * 2 and powers.shape[0] == 0
    close(out, want[0])
    close(a, want[1])
    out_bar = rng.normal(size=stack.shape)  # the pullback: by direction too
    want_bar = reference.compose_vjp(out_bar, stack, want[2], want[1], table, 3)
    close(numba_backend.compose_vjp(out_bar, stack, powers, a, table, 3), want_bar)
    close(numba_backend.compose_vjp(out_bar, stack, want[2], a, table, 3), want_bar)  # powers given: not needed
    assert pulled == [1, 1]
    a = taylor_coefficients(sin, stack[0], 4)  # given coefficients: the reference's bits
    np.testing.assert_array_equal(numba_backend.compose(stack, a, table, 3), reference.compose(stack, a, table, 3))
    out, powers = numba_backend.compose_saving(stack, a, table, 3)
    np.testing.assert_array_equal(out, reference.compose(stack, a, table, 3))
    assert calls[2:] == ["taylor_forward"] * 2 and powers.shape[0] == 0
    close(numba_backend.activate(stack, sin, table, 3), reference.activate(stack, sin, table, 3))
    assert calls[4:] == ["taylor_forward"]

    calls.clear()  # fewer rows: the table's own straight-line kernel
    small = directional_table(2, 3)
    stack = rng.normal(size=(small.n_coef, 40, 3))
    close(numba_backend.activate(stack, tanh, small, 3), reference.activate(stack, tanh, small, 3))
    assert calls == []

    big = directional_table(24, 3)  # beyond straight-line kernels: by direction all the same
    assert not numba_codegen.supports(big, 3)
    stack = rng.normal(size=(big.n_coef, 40, 3))
    want = reference.activate_saving(stack, tanh, big, 3)
    close(numba_backend.activate(stack, tanh, big, 3), want[0])
    out, a, powers = numba_backend.activate_saving(stack, tanh, big, 3)
    assert calls == ["tanh_taylor_forward"] * 2 and powers.shape[0] == 0
    close(out, want[0])
    out_bar = rng.normal(size=stack.shape)
    close(
        numba_backend.compose_vjp(out_bar, stack, powers, a, big, 3),
        reference.compose_vjp(out_bar, stack, want[2], want[1], big, 3),
    )
    assert pulled == [1, 1, 1]


def _fake_module(directory, name, age_s, size=1000):
    """A generated module's source and two files of machine code, last used ``age_s`` seconds ago."""
    paths = [directory / f"{name}.py", directory / "__pycache__" / f"{name}._forward_rows-10.py311.nbi"]
    paths.append(directory / "__pycache__" / f"{name}._forward_rows-10.py311.1.nbc")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, (time.time() - age_s,) * 2)
    return paths


def test_the_cache_drops_the_least_recently_used_modules_beyond_its_limit(tmp_path):
    names = [f"nnderiv_kernel_{i:020d}" for i in range(5)]
    files = {name: _fake_module(tmp_path, name, age_s=3600 * (i + 1)) for i, name in enumerate(names)}
    orphan = _fake_module(tmp_path, "nnderiv_kernel_orphan", age_s=10 * 3600)[1:]  # its source gone
    (tmp_path / "nnderiv_kernel_orphan.py").unlink()
    (tmp_path / "unrelated.txt").write_text("kept")
    listed = numba_codegen.cached_modules(tmp_path)
    assert [module.name for module in listed] == names + ["nnderiv_kernel_orphan"]
    assert [module.size for module in listed] == [3000] * 5 + [2000]
    removed = numba_codegen.prune(tmp_path, max_bytes=9000)  # room for three: the three last used
    assert removed == names[3:] + ["nnderiv_kernel_orphan"]
    assert all(path.exists() for name in names[:3] for path in files[name])
    assert not any(path.exists() for name in names[3:] for path in files[name])
    assert not any(path.exists() for path in orphan) and (tmp_path / "unrelated.txt").exists()


def test_the_cache_spares_modules_used_recently_even_over_its_limit(tmp_path):
    recent = _fake_module(tmp_path, "nnderiv_kernel_recent", age_s=5)
    old = _fake_module(tmp_path, "nnderiv_kernel_old", age_s=7200)
    assert numba_codegen.prune(tmp_path, max_bytes=0) == ["nnderiv_kernel_old"]
    assert all(path.exists() for path in recent) and not any(path.exists() for path in old)


def test_writing_a_new_module_prunes_and_using_one_marks_it(tmp_path, monkeypatch):
    monkeypatch.setenv("NNDERIV_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("NNDERIV_CACHE_MAX_MB", "0.004")  # 4 KiB: room for one old module
    directory = tmp_path / "kernels"
    first = _fake_module(directory, "nnderiv_kernel_a", age_s=7200)
    second = _fake_module(directory, "nnderiv_kernel_b", age_s=9000, size=500)
    numba_codegen._write("nnderiv_kernel_b", "x" * 500)  # same text: used now, not rewritten
    assert time.time() - second[0].stat().st_mtime < 60 and first[0].exists()
    numba_codegen._write("nnderiv_kernel_c", "y = 1\n")  # new: a, last used the longest ago, goes
    assert not any(path.exists() for path in first) and all(path.exists() for path in second)
    assert (directory / "nnderiv_kernel_c.py").read_text() == "y = 1\n"


def test_the_cache_limit_setting(monkeypatch):
    monkeypatch.delenv("NNDERIV_CACHE_MAX_MB", raising=False)
    assert numba_codegen.cache_limit() == numba_codegen.CACHE_MAX_BYTES
    monkeypatch.setenv("NNDERIV_CACHE_MAX_MB", "2.5")
    assert numba_codegen.cache_limit() == int(2.5 * 2**20)
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv("NNDERIV_CACHE_MAX_MB", bad)
        with pytest.raises(ConfigError, match="NNDERIV_CACHE_MAX_MB"):
            numba_codegen.cache_limit()


def test_the_cache_command_shows_and_clears_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NNDERIV_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("NNDERIV_CACHE_MAX_MB", raising=False)
    files = _fake_module(tmp_path / "kernels", "nnderiv_kernel_a", age_s=1, size=2**20)
    assert cli.main(["cache"]) == 0
    assert f"{tmp_path / 'kernels'}: 1 generated kernel modules, 3.0 MiB\nlimit 1024 MiB" in capsys.readouterr().out
    assert cli.main(["cache", "--clear"]) == 0
    assert "removed 1 generated kernel modules" in capsys.readouterr().out
    assert not any(path.exists() for path in files)
    monkeypatch.setenv("NNDERIV_CACHE_MAX_MB", "lots")
    assert cli.main(["cache"]) == 2
    assert "NNDERIV_CACHE_MAX_MB must be a number" in capsys.readouterr().err


def test_pruning_is_best_effort(tmp_path, monkeypatch):
    """A file that cannot be deleted stays, and the kernel that was being written is still there."""
    files = _fake_module(tmp_path, "nnderiv_kernel_locked", age_s=7200)
    unlink = type(files[0]).unlink

    def refuse(path, missing_ok=False):
        if path.name.endswith(".nbi"):
            raise PermissionError(13, "read-only", str(path))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(type(files[0]), "unlink", refuse)
    assert numba_codegen.prune(tmp_path, max_bytes=0) == ["nnderiv_kernel_locked"]
    assert files[1].exists() and not files[0].exists() and not files[2].exists()
