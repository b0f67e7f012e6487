"""Checks shared by the backend tests: tolerances, every public call on a backend against the
numpy reference, and the series tables the generated kernels are tested on.

Tolerances, relative to the largest entry of the reference array (see ``tests/test_backends.py``):
1e-12 in float64, 1e-4 in float32.
"""

from __future__ import annotations

import numpy as np

import nnderiv as nd
from nnderiv.backends import numpy_backend as reference
from nnderiv.combinatorics import (
    collapsed_second_order_table,
    directional_table,
    hessian_vector_table,
    multi_index_table,
)

#: the tables of the generated-kernel tests (numba_codegen, cuda_codegen): every kind of table, order 0 to 4
CODEGEN_TABLES = {
    "full d=2 K=2": multi_index_table(2, 2),
    "full d=3 K=3": multi_index_table(3, 3),
    "full d=1 K=1": multi_index_table(1, 1),
    "full d=2 K=0": multi_index_table(2, 0),
    "directional n=3 K=4": directional_table(3, 4),
    "collapsed n=3, 1 negative": collapsed_second_order_table(3, 1),
    "hessian-vector d=3": hessian_vector_table(3),
}

RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-4}


def host(array):
    """A NumPy array of any backend's array (a GPU array is copied back)."""
    return reference.asarray(array)


def assert_close(got, want, what: str, exact=None, scale=None) -> None:
    """``got`` within RTOL of ``want`` (relative to the largest entry, or to ``scale``). Given
    ``exact`` (the same quantity computed in float64), ``got`` may instead be as accurate as
    ``want``: two float32 evaluations that sum in different orders differ by the conditioning of
    the sums, which for parameter gradients of Hessians can exceed 1e-4 with both equally right."""
    got, want = host(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (
        f"{what}: {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
    )
    scale = max(float(np.abs(want).max(initial=0.0)) if scale is None else scale, np.finfo(want.dtype).tiny)
    error = float(np.abs(got - want).max(initial=0.0)) / scale
    if error <= RTOL[want.dtype]:
        return
    assert exact is not None, f"{what}: relative error {error:.3g} > {RTOL[want.dtype]:g}"
    exact = np.asarray(exact, dtype=np.float64)
    got_error = float(np.abs(got - exact).max()) / scale
    want_error = float(np.abs(want - exact).max()) / scale
    assert got_error <= 2 * want_error, (
        f"{what}: relative error {error:.3g} against the reference; against float64 {got_error:.3g}, "
        f"the reference's own {want_error:.3g}"
    )


def _weights(d, rng, per_point_n=None):
    A = rng.normal(size=(d, d))
    A = A + A.T  # indefinite for d >= 2 (almost surely)
    return A if per_point_n is None else np.stack([A * (i + 1) for i in range(per_point_n)])


def public_calls(model, x, rng):
    """``(label, fn, kwargs)``: every public derivative function, the ones with options in several ways."""
    d, n = model.n_inputs, len(x)
    calls = [("value", nd.value, {}), ("jacobian", nd.jacobian, {}), ("hessian", nd.hessian, {})]
    calls += [(f"derivatives {k}", nd.derivatives, {"order": k}) for k in range(5)]
    calls += [
        ("laplacian", nd.laplacian, {}),
        ("laplacian weights", nd.laplacian, {"weights": _weights(d, rng)}),
        ("laplacian per-point weights", nd.laplacian, {"weights": _weights(d, rng, n)}),
        ("pure_derivatives", nd.pure_derivatives, {"order": 4}),
        ("taylor", nd.taylor, {"directions": rng.normal(size=(2, d)), "order": 3}),
        ("taylor per point", nd.taylor, {"directions": rng.normal(size=(n, 2, d)), "order": 2}),
        ("hvp", nd.hvp, {"v": rng.normal(size=d)}),
        ("hvp per point", nd.hvp, {"v": rng.normal(size=(n, d))}),
        ("mixed_partial taylor", nd.mixed_partial, {"indices": (0, 0, d - 1), "strategy": "taylor"}),
        ("mixed_partial full", nd.mixed_partial, {"indices": (0, d - 1), "strategy": "full"}),
        ("biharmonic", nd.biharmonic, {}),
    ]
    if model.n_outputs == d:
        calls.append(("divergence", nd.divergence, {}))
    return calls


def _result_arrays(result):
    return result.coefficients if isinstance(result, nd.Derivatives) else result


def cotangent_for(result, rng):
    if isinstance(result, nd.Derivatives):
        return {k: rng.normal(size=result.tensor(k).shape) for k in range(result.order + 1)}
    return rng.normal(size=result.shape)


def run_on(backend, fn, model, x, kwargs, chunk_size, cotangent):
    with nd.use_backend(backend):
        result = _result_arrays(fn(model, x, chunk_size=chunk_size, **kwargs))
        _, pullback = nd.vjp(fn, model, x, wrt="both", chunk_size=chunk_size, **kwargs)
        grads, x_bar = pullback(cotangent)
    return result, grads, x_bar


def assert_public_calls_match(model, x, backend, *, chunk_size, rng, model_there=None):
    """Every public function and its pullback on ``backend`` (with the model ``model_there``,
    default ``model``) within tolerance of the numpy backend's."""
    for label, fn, kwargs in public_calls(model, x, rng):
        with nd.use_backend("numpy"):
            cotangent = cotangent_for(fn(model, x, **kwargs), rng)
        want = run_on("numpy", fn, model, x, kwargs, chunk_size, cotangent)
        got = run_on(backend, fn, model if model_there is None else model_there, x, kwargs, chunk_size, cotangent)
        assert_close(got[0], want[0], label)
        assert_close(got[2], want[2], f"{label}: x cotangent")
        for name in want[1]:  # relative to the call's largest gradient: see gradient_scale
            scale = gradient_scale(want[1])
            assert_close(got[1][name], want[1][name], f"{label}: gradient of {name}", scale=scale)


def gradient_scale(grads) -> float:
    """The largest entry of all the parameter gradients of one call. A small gradient can be the
    difference of large terms (mixed partials by polarization, ``strategy="taylor"``: a layer's
    ``W`` gradient of 1e-5 where the others are 0.04), so its error is measured against the
    call's scale, where its rounding errors come from (1e-11 of its own size, 5e-15 of that)."""
    return max(float(np.abs(host(g)).max(initial=0.0)) for g in grads.values())
