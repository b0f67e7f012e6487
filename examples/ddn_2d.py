"""Deep Differential Network, 2-d example: f(x, y) = cos(x) sin(y) on [-pi, pi]^2.

Trains [2, 64, 64, 1] networks with ReLU, SoftPlus, TanH and Cos activations on a *type 1* loss
(MSE of f) and a *type 2* loss (MSE of f plus MSE of the gradient, the network's Jacobian computed by
nnderiv and backpropagated by hand), then prints the test MSE of f, the gradient and the Hessian in the layout
of the Deep Differential Network README (see docs/ddn.md for their table next to ours).

    python examples/ddn_2d.py [--epochs 3000]
"""

import argparse

from nnderiv.demos import format_table, run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3000)
    parser.add_argument("--points", type=int, default=1000, help="training points")
    args = parser.parse_args()
    results = run("2d", n_train=args.points, epochs=args.epochs, progress=True)
    print(format_table(results))
    for r in results:
        print(f"type {r.loss_type} / {r.activation}: {r.seconds:.1f} s")


if __name__ == "__main__":
    main()
