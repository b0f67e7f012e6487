"""
Error plots of first and second derivatives
===========================================

After the nnbma derivatives notebook: a GELU network approximates

    f(t1, t2) = (t1 + 2 t2,  t1^2,  t1 t2^2)     on  t1 in [-2, 2],  t2 in [-1, 1],

whose Jacobian and Hessian are known in closed form, and its derivatives are compared with the
truth along lines and over the whole box. The target function and its exact derivatives come from
``examples/nnbma.py``, which runs the full-size version (a ``[2, 100, 100, 3]`` network, 600
epochs); here the network is ``[2, 48, 48, 3]`` with 150 full-batch Adam steps on value and
Jacobian (a Sobolev loss), then 150 L-BFGS iterations, a few seconds in all.
"""

import numpy as np
from nnbma import RANGES, along, f, hessian, jacobian

import nnderiv as nd
from nnderiv.plot import error_maps, profiles

rng = np.random.default_rng(0)
x = rng.uniform(RANGES[:, 0], RANGES[:, 1], (1000, 2))
data = {"x": x, "y": f(x), "dy": jacobian(x)}
model = nd.MLP([2, 48, 48, 3], activation="gelu", seed=0)
loss = nd.MSE("value", "y") + nd.MSE("jacobian", "dy")
history = nd.fit(model, loss, data, optimizer=nd.Adam(1e-2), epochs=150, progress=False)
losses = nd.optim.lbfgs(model, loss, data, iterations=150)
print(f"Adam: {history}; L-BFGS: loss {losses[0]:.2e} -> {losses[-1]:.2e}")

# %%
# Errors on a grid
# ----------------
# One call of :func:`nnderiv.derivatives` of order 2 gives the value, Jacobian and Hessian of all
# three outputs at the 50 x 50 grid points; RMS and maximum errors per output:

gx, gy = (np.linspace(lo, hi, 50) for lo, hi in RANGES)
grid = np.stack([a.ravel() for a in np.meshgrid(gx, gy)], axis=-1)
D = nd.derivatives(model, grid, order=2)
for name, net, exact in [("value", D.value, f(grid)), ("jacobian", D.jacobian, jacobian(grid)),
                         ("hessian", D.hessian, hessian(grid))]:  # fmt: skip
    err = np.abs(net - exact).reshape(len(grid), 3, -1)
    cells = "  ".join(f"f_{i}: {np.sqrt(np.mean(err[:, i] ** 2)):.1e} / {err[:, i].max():.1e}" for i in range(3))
    print(f"{name:9s} RMS / max   {cells}")

# %%
# Profiles along lines
# --------------------
# The third output, ``t1 t2^2``, along ``x_1`` through ``t1 = 1``: its value, first and second
# derivative along the line (Taylor mode), against the exact ones (``along(v)`` evaluates the
# truth's derivatives along ``v`` in the layout of :func:`nnderiv.taylor`).

v = np.array([0.0, 1.0])
fig = profiles(model, [1.0, 0.0], v, truth=along(v), output=2, t=np.linspace(-1, 1, 200))
fig.set_size_inches(11, 3.2)

# %%
# Error maps
# ----------
# The absolute error of every Jacobian and Hessian entry of the third output over the box
# (log colour scale): the second derivatives, never trained on, are the least accurate, and worst
# near the edges of the box where the training points thin out.

fig = error_maps(model, gx, gy, jacobian, quantity="jacobian", output=2)
fig = error_maps(model, gx, gy, hessian, quantity="hessian", output=2)
