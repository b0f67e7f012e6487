"""
Deep Differential Networks: training on the Jacobian
====================================================

The Deep Differential Network experiments (Lutter et al., ICLR 2019) train networks on samples of
a known function with a *type 1* loss (MSE of the value) or a *type 2* loss (MSE of the value plus
MSE of the Jacobian), then measure the errors of the value, the Jacobian and the Hessian on a test
grid. Here the same experiment runs at a small size (networks ``[d, 32, 32, 1]``, 256 training
points, 500 full-batch Adam steps) so that it takes seconds; ``examples/ddn_1d.py`` and
``examples/ddn_2d.py`` run it at full size, and :doc:`/ddn` compares their tables with the paper's.

The type 2 loss needs the network's Jacobian inside the loss: :func:`nnderiv.fit` computes it by
full mode of order 1 and backpropagates the loss through it by hand.
"""

import numpy as np

import nnderiv as nd
from nnderiv.demos import PROBLEMS, format_table, run

SMALL = {"n_train": 256, "epochs": 500, "width": 32, "lr": 1e-2}

# %%
# One dimension: ``f(x) = sin(x)`` on ``[-pi, pi]``
# -------------------------------------------------
# Eight networks: ReLU, SoftPlus, TanH and Cos activations, each with both losses. The errors are
# the paper's "MSE": the squared error summed over the entries of ``f``, its gradient or its
# Hessian, averaged over 2000 test points.

results_1d = run("1d", **SMALL)
print(format_table(results_1d))

# %%
# The ReLU network's Hessian is zero almost everywhere, so its Hessian error is the mean square of
# the true second derivative, ``E[sin^2 x] = 0.5``, whatever the training: second derivatives in a
# loss or a model need a smooth activation. For the smooth ones the type 2 loss lowers the error
# of the derivative it was trained on, and of the next one with it.

relu = next(r for r in results_1d if r.activation == "relu")
print(f"ReLU Hessian MSE: {relu.mse['hessian']:.3f} (the mean of sin^2 is 0.5)")

# %%
# The type 2 networks against the truth
# -------------------------------------
# :func:`nnderiv.plot.profiles` draws ``f``, ``f'`` and ``f''`` of a network along a line, from
# Taylor mode, next to the exact derivatives.

from nnderiv.plot import profiles  # noqa: E402

problem = PROBLEMS["1d"]
truth = {0: problem.f, 1: lambda x: problem.jacobian(x)[:, :, 0], 2: lambda x: problem.hessian(x)[:, :, 0, 0]}
t = np.linspace(-np.pi, np.pi, 300)
type2 = [r for r in results_1d if r.loss_type == 2 and r.activation != "relu"]
fig = profiles(type2[0].model, [0.0], [1.0], t=t, truth=truth, label=f"type 2 / {type2[0].activation}")
for r in type2[1:]:
    profiles(r.model, [0.0], [1.0], t=t, ax=fig.axes, label=f"type 2 / {r.activation}")
fig.axes[0].legend(fontsize=7)
fig.set_size_inches(11, 3.2)

# %%
# Two dimensions: ``f(x, y) = cos(x) sin(y)``
# -------------------------------------------
# The same eight networks with two inputs; the Jacobian is now a gradient of two entries and the
# Hessian a 2 x 2 matrix (the ReLU Hessian error is then ``4 E[cos^2 x sin^2 y] = 1``).

results_2d = run("2d", **SMALL)
print(format_table(results_2d))

# %%
# With these short runs the numbers are larger than in :doc:`/ddn` (3000 epochs, 1000 points,
# width 64), but the pattern is the same. Everything above is a few lines of the public API:

x = np.random.default_rng(0).uniform(-np.pi, np.pi, (256, 1))
data = {"x": x, "y": np.sin(x), "dy": np.cos(x)[:, :, None]}  # dy: the Jacobian, (N, m, d)
model = nd.MLP([1, 32, 32, 1], activation="tanh", seed=0)
loss = nd.MSE("value", "y") + nd.MSE("jacobian", "dy")  # the type 2 loss
history = nd.fit(model, loss, data, optimizer=nd.Adam(1e-2), epochs=300, progress=False)
print(history)
