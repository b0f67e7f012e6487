"""
Quick start: every derivative of a small network, checked
=========================================================

A two-input tanh network; its value, Jacobian, Hessian, Laplacian and Taylor coefficients along a
direction, each from one forward pass of stacked Taylor coefficients, and each checked against
central finite differences of the network itself.
"""

import numpy as np

import nnderiv as nd

model = nd.MLP([2, 16, 16, 1], activation="tanh", seed=0)  # float64 by default
x = np.random.default_rng(0).uniform(-1, 1, (5, 2))  # 5 points in 2 inputs: (N, d)
print(model)

# %%
# All partials up to order 2 in one pass
# --------------------------------------
# :func:`nnderiv.derivatives` pushes ``C(d + K, K) = 6`` Taylor coefficients per point and width
# through the network (value, two first-order, three second-order rows); the properties expand
# them into tensors with the batch first, then the output, then the input axes.

D = nd.derivatives(model, x, order=2)
print("value   ", D.value.shape)
print("jacobian", D.jacobian.shape)
print("hessian ", D.hessian.shape)

# %%
# Finite differences as an independent check
# ------------------------------------------
# Central differences of the network's plain forward pass, step ``h``: the first derivative is
# accurate to ``O(h^2)``, and the second, a difference of first differences, too.

h = 1e-4
e = np.eye(2) * h


def fd_jacobian(f, x):
    return np.stack([(f(x + e[j]) - f(x - e[j])) / (2 * h) for j in range(2)], axis=-1)


J_fd = fd_jacobian(model, x)
H_fd = np.stack([(fd_jacobian(model, x + e[k]) - fd_jacobian(model, x - e[k])) / (2 * h) for k in range(2)], -1)
print(f"max |J - J_fd| = {np.abs(D.jacobian - J_fd).max():.1e}")
print(f"max |H - H_fd| = {np.abs(D.hessian - H_fd).max():.1e}")
assert np.allclose(D.jacobian, J_fd, atol=1e-7) and np.allclose(D.hessian, H_fd, atol=1e-5)

# %%
# The Laplacian without the Hessian
# ---------------------------------
# :func:`nnderiv.laplacian` keeps only the value, the ``d`` first-order rows and ONE summed
# second-order row (the collapsed, or forward, Laplacian): ``d + 2`` rows instead of ``C(d + 2, 2)``.
# It equals the trace of the Hessian.

lap = nd.laplacian(model, x)
print(f"max |laplacian - trace(H)| = {np.abs(lap - np.trace(D.hessian, axis1=2, axis2=3)).max():.1e}")

# %%
# Derivatives of any order along a direction
# ------------------------------------------
# Taylor mode: ``d^k/dt^k f(x + t v)`` for ``k = 0..K`` from ``1 + K`` rows per direction. The
# second one is ``v^T H v``; the higher ones are checked against a finite-difference stencil of
# ``t -> f(x + t v)`` of order 4.

v = np.array([[1.0, -0.5]])
T = nd.taylor(model, x, directions=v, order=4)  # (N, m, n_dir, K + 1)
print("taylor", T.shape)
print(f"max |T_2 - v^T H v| = {np.abs(T[:, 0, 0, 2] - np.einsum('i,nij,j->n', v[0], D.hessian[:, 0], v[0])).max():.1e}")

s = 1e-2  # f(x + t v) at t = -2s .. 2s: the central fourth difference is accurate to O(s^2)
line = np.stack([model(x + k * s * v)[:, 0] for k in range(-2, 3)])
fourth_fd = (line[0] - 4 * line[1] + 6 * line[2] - 4 * line[3] + line[4]) / s**4
scale = np.abs(T[:, 0, 0, 4]).max()
print(f"max |T_4 - fourth difference| = {np.abs(T[:, 0, 0, 4] - fourth_fd).max():.1e} (|T_4| up to {scale:.1f})")
assert np.allclose(T[:, 0, 0, 4], fourth_fd, atol=1e-3 * scale)

# %%
# Any single partial, and the full third-order tensor
# ---------------------------------------------------
# ``D.partial((0, 0, 1))`` is ``d^3 f / dx_0^2 dx_1``; :func:`nnderiv.mixed_partial` computes just
# that one by the cheaper of full mode and Taylor mode with interpolation.

D3 = nd.derivatives(model, x, order=3)
mixed = nd.mixed_partial(model, x, (0, 0, 1))
print(f"max |mixed_partial - D.partial| = {np.abs(mixed - D3.partial((0, 0, 1))).max():.1e}")
print(nd.explain(nd.mixed_partial, model, x, indices=(0, 0, 1)))
