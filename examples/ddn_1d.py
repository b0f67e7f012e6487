"""Deep Differential Network, 1-d example: f(x) = sin(x) on [-pi, pi].

Trains [1, 64, 64, 1] networks with ReLU, SoftPlus, TanH and Cos activations on a *type 1* loss
(MSE of f) and a *type 2* loss (MSE of f plus MSE of df/dx, the network's Jacobian computed by
nnderiv and backpropagated by hand), then prints the test MSE of f, df/dx and d2f/dx2 in the layout
of the Deep Differential Network README (see docs/ddn.md for their table next to ours).

    python examples/ddn_1d.py [--epochs 3000] [--plot ddn_1d.png]
"""

import argparse

from nnderiv.demos import format_table, plot_profiles, run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3000)
    parser.add_argument("--points", type=int, default=1000, help="training points")
    parser.add_argument("--plot", default=None, help="save f, f', f'' profiles to this PNG")
    args = parser.parse_args()
    results = run("1d", n_train=args.points, epochs=args.epochs, progress=True)
    print(format_table(results))
    for r in results:
        print(f"type {r.loss_type} / {r.activation}: {r.seconds:.1f} s")
    if args.plot:
        plot_profiles(results, "1d", args.plot)


if __name__ == "__main__":
    main()
