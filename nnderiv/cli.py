"""The ``nnderiv`` command: ``nnderiv demo`` trains the Deep Differential Network examples briefly."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _demo(args) -> int:
    from .demos import format_table, plot_profiles, run

    print(f"Deep Differential Network, {args.problem} example: {args.epochs} epochs per network (short run)")
    results = run(args.problem, n_train=args.points, epochs=args.epochs, progress=not args.quiet)
    print(format_table(results))
    if args.problem == "1d" and not args.no_plot:
        try:
            print(f"plot saved to {plot_profiles([r for r in results if r.loss_type == 2], args.problem, args.out)}")
        except ImportError as exc:
            print(f"no plot: {exc}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nnderiv", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nnderiv {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train the DDN example networks briefly, print the error table, plot")
    demo.add_argument("--problem", choices=["1d", "2d"], default="1d")
    demo.add_argument("--epochs", type=int, default=500)
    demo.add_argument("--points", type=int, default=256, help="training points")
    demo.add_argument("--out", default="nnderiv_demo.png", help="where to save the plot")
    demo.add_argument("--no-plot", action="store_true")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
