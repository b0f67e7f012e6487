"""
Cross-checking a PyTorch model
==============================

nnderiv shares no code with PyTorch or JAX, which makes it an independent check of their
derivatives. A network is imported from where it lives with identical weights
(:func:`nnderiv.from_torch`, :func:`nnderiv.from_onnx`, :func:`nnderiv.from_arrays`), and
:func:`nnderiv.crosscheck` evaluates the same quantities with both engines — values, derivative
tensors, the Laplacian, parameter gradients of a loss built on them — and reports the worst errors
against tolerances derived from the dtype.

PyTorch is optional (the ``crosscheck`` extra: ``pip install -e ".[crosscheck]"``). Without it this
page still runs: it checks nnderiv against reference *arrays* instead, which is also how to check
any other framework (compute its tensors, pass them as a dict).
"""

import numpy as np

import nnderiv as nd

try:
    import torch
except ImportError:  # the torch part below is skipped, with a note
    torch = None

x = np.random.default_rng(0).uniform(-1, 1, (64, 3))

# %%
# Against PyTorch
# ---------------
# A ``torch.nn.Sequential`` of ``Linear`` and supported activations is converted with its
# weights; ``crosscheck`` then computes the references with ``torch.func`` (nested ``jacfwd`` /
# ``jacrev``) and the gradients with ``torch.autograd``.

if torch is None:
    print("PyTorch is not installed: skipping the comparison with torch (pip install -e '.[crosscheck]').")
else:
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.SiLU(), torch.nn.Linear(32, 1)
    ).double()
    model = nd.from_torch(module)
    print(model)
    report = nd.crosscheck(module, x, reference="torch", order=3)
    print(report)
    assert report.ok

# %%
# Against arrays from anywhere
# ----------------------------
# Any framework's results can be checked by passing them as arrays. Here the "other framework"
# is a deliberately perturbed Hessian — a relative error of ``1e-6`` is far above the float64
# tolerance, and the report flags it.

model = nd.from_arrays(
    [np.random.default_rng(1).normal(size=(3, 16)), np.random.default_rng(2).normal(size=(16, 1))],
    activation="tanh",
)
H = nd.hessian(model, x)
print(nd.crosscheck(model, x, {"hessian": H, "laplacian": np.trace(H, axis1=2, axis2=3)}))

bad = nd.crosscheck(model, x, {"hessian": H * (1 + 1e-6)})
print(bad)
assert not bad.ok and bad.failures[0].quantity == "hessian"

# %%
# The same from a shell, for someone else's CI (exit status 1 on disagreement)::
#
#     nnderiv check model.onnx --order 3 --points 1000 --against torch
