"""
Physics-informed networks: an ODE and the Poisson equation
==========================================================

Two physics-informed networks, each trained on the residual of its equation. The residual
contains the network's input derivatives, so the loss's gradient with respect to the weights goes
through the derivative pass: nnderiv's hand-written pullbacks give it. The full-size scripts are
``examples/pinn_ode.py`` and ``examples/pinn_poisson.py`` (accuracy targets 1e-4 and 1e-3, about
a minute each); here both run at small settings and reuse those scripts' functions.
"""

import matplotlib.pyplot as plt
import numpy as np
import pinn_ode
import pinn_poisson

import nnderiv as nd

# %%
# An ODE through its Jacobian
# ---------------------------
# ``u'(x) = 2x`` on ``[-1, 1]`` with ``u(0) = 1`` (exact solution ``1 + x^2``). The ansatz
# ``u = 1 + x g(x)`` satisfies the initial condition for every network ``g``, and by the product
# rule ``u' = g + x g'``: the loss ``mean((g + x g' - f)^2)`` needs the value and the Jacobian of
# ``g`` at the same points, one sweep of ``nd.derivatives(g, x, order=1)``.
# ``pinn_ode.AnsatzResidual`` is that loss, a small :class:`nnderiv.losses.Loss` that returns the
# cotangents of ``g`` and ``g'``; Adam finds the basin and L-BFGS polishes.

g, losses, seconds = pinn_ode.train(epochs=300, lbfgs_iterations=1000, n_points=128, progress=False)
print(f"loss {losses[0]:.2e} -> {losses[-1]:.2e} in {seconds:.1f} s")
print(f"max |u - (1 + x^2)| = {pinn_ode.max_error(g):.2e}")

x = np.linspace(-1, 1, 401)[:, None]
u = pinn_ode.solution(g, x)
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), constrained_layout=True)
left.plot(x, pinn_ode.exact_solution(x), "k", lw=3, alpha=0.3, label="exact $1 + x^2$")
left.plot(x, u, "C0", label="network $u = 1 + x\\,g(x)$")
left.set(xlabel="$x$", title="$u' = 2x$, $u(0) = 1$")
left.legend()
right.semilogy(np.arange(len(losses)), losses)
right.axvline(300, color="0.5", ls=":")
right.set(xlabel="Adam steps, then L-BFGS iterations", title="training loss")

# %%
# The Poisson equation through the collapsed Laplacian
# ----------------------------------------------------
# ``-Delta u = 2 pi^2 sin(pi x) sin(pi y)`` on the unit square, ``u = 0`` on its edges (exact
# solution ``sin(pi x) sin(pi y)``). The loss is two :class:`nnderiv.OperatorMSE` terms:
#
# .. code-block:: python
#
#     OperatorMSE(nd.laplacian, "f", scale=-4.0) + w * OperatorMSE(nd.value, "g", points="x_boundary")
#
# ``nd.laplacian`` propagates ``d + 2 = 4`` stacked rows, never the Hessian (see
# :doc:`/theory/laplacian`), and its pullback carries the residual to the weights. The network
# reads centred coordinates ``2x - 1``, hence ``scale=-4``.

model, losses, seconds = pinn_poisson.train(epochs=300, lbfgs_iterations=600, n_points=512, progress=False)
print(f"loss {losses[0]:.2e} -> {losses[-1]:.2e} in {seconds:.1f} s")
print(f"relative L2 error on a 101 x 101 grid: {pinn_poisson.relative_l2_error(model):.2e}")

n = 61
points = pinn_poisson.grid(n)
error = (pinn_poisson.solution(model, points) - pinn_poisson.exact_solution(points)).reshape(n, n)
residual = -4.0 * nd.laplacian(model, pinn_poisson.centred(points)) - pinn_poisson.source(points)
fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
panels = [(error, "$u_\\theta - u$"), (residual.reshape(n, n), "$-\\Delta u_\\theta - f$")]
for ax, (field, title) in zip(axes, panels):
    image = ax.imshow(field.T, origin="lower", extent=(0, 1, 0, 1), cmap="RdBu_r")
    ax.set(xlabel="$x$", ylabel="$y$", title=title)
    fig.colorbar(image, ax=ax, shrink=0.85)

# %%
# A longer training (the full-size script: 1000 Adam steps and 2000 L-BFGS iterations on 1000
# points) brings the relative error near 1e-4.
