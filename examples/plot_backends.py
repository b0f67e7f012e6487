"""
Switching backends
==================

The kernels every mode goes through — the matrix products, the sparse products of coefficient
stacks, the activation step and its pullback — live in a *backend*. ``numpy`` is the readable
reference and the oracle of the others; ``numba`` (the default) fuses the activation step into one
parallel pass per block of points; ``cupy`` runs the NumPy code on a GPU. The choice changes where
and how fast the arithmetic runs, not the results: they agree to rounding.
"""

import time

import numpy as np

import nnderiv as nd

model = nd.MLP([4, 64, 64, 1], activation="tanh", seed=0)
x = np.random.default_rng(0).uniform(-1, 1, (2000, 4))
print("default backend:", nd.get_backend())

# %%
# Same results
# ------------
# ``nd.use_backend`` switches for a ``with`` block and restores the previous backend after it;
# ``nd.set_backend`` switches for the whole process.

results = {}
for backend in ("numpy", "numba"):
    with nd.use_backend(backend):
        D = nd.derivatives(model, x, order=3)
        results[backend] = {"tensor3": D.tensor(3), "laplacian": nd.laplacian(model, x)}
for name in ("tensor3", "laplacian"):
    a, b = results["numpy"][name], results["numba"][name]
    print(f"{name:10s} max |numpy - numba| / max |numpy| = {np.abs(a - b).max() / np.abs(a).max():.1e}")
    assert np.allclose(a, b, rtol=1e-10, atol=1e-12 * np.abs(a).max())

# %%
# ... and the same gradients
# --------------------------
# The pullbacks run on the backend too.

grads = {}
for backend in ("numpy", "numba"):
    with nd.use_backend(backend):
        out, pullback = nd.vjp(nd.laplacian, model, x)
        grads[backend] = pullback(np.ones_like(out))
for name in grads["numpy"]:
    assert np.allclose(grads["numpy"][name], grads["numba"][name], rtol=1e-9, atol=1e-12)
print("parameter gradients agree:", ", ".join(grads["numpy"]))

# %%
# Timing
# ------
# Best of three calls, third derivatives of 2000 points (the first Numba call compiles, or loads
# its cache, and is not counted). The figures depend on the machine; the benchmark
# (``nnderiv bench``, :doc:`/performance`) compares the backends with torch.func and JAX.

for backend in ("numpy", "numba"):
    with nd.use_backend(backend):
        nd.derivatives(model, x, order=3)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            nd.derivatives(model, x, order=3)
            times.append(time.perf_counter() - start)
    print(f"{backend:6s} {1e3 * min(times):7.1f} ms")

# %%
# On a GPU: ``pip install -e ".[gpu]"``, ``nd.set_backend("cupy")`` and ``model.to("cupy")``
# (see :doc:`/backends`).
