"""The ``nnderiv`` command: ``nnderiv demo`` trains the Deep Differential Network examples briefly;
``nnderiv check MODEL`` cross-checks a saved model's derivatives against PyTorch or JAX;
``nnderiv bench`` runs a short version of the speed benchmark (``benchmarks/bench.py`` the full one);
``nnderiv cache`` shows (``--clear``: deletes) the generated kernels kept on disk."""

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


def _check(args) -> int:
    """Print the cross-check table; exit 0 if every quantity agrees, 1 if not, 2 if it could not run."""
    import numpy as np

    from .crosscheck import crosscheck, load_model, with_dtype
    from .errors import NnderivError

    try:
        model, _ = load_model(args.model)
        model = with_dtype(model, args.dtype) if args.dtype else model
        if args.against in ("torch", "jax"):
            reference = args.against
            x = np.random.default_rng(args.seed).uniform(-1, 1, (args.points, model.n_inputs))
        else:  # a file of reference arrays, with the points they were computed at
            with np.load(args.against, allow_pickle=False) as archive:
                reference = {key: archive[key] for key in archive.files}
            x = reference.get("x")
            if x is None:
                raise NnderivError(f"{args.against!r} has no array 'x' (the points of the reference arrays)")
        report = crosscheck(model, x, reference, args.order, params=not args.no_params, seed=args.seed)
    except (NnderivError, ImportError, OSError, ValueError) as exc:
        print(f"nnderiv check: error: {exc}", file=sys.stderr)
        return 2
    try:
        from rich import print as rich_print
    except ImportError:
        print(report)
    else:
        rich_print(report)
    return 0 if report.ok else 1


def _bench(args) -> int:
    from .benchmark import run_from_args

    return run_from_args(args)


def _cache(args) -> int:
    """Show or clear the generated kernels' cache; exit 2 on a bad ``NNDERIV_CACHE_MAX_MB``."""
    from .backends import numba_codegen
    from .errors import NnderivError

    directory = numba_codegen.cache_directory() / "kernels"
    if args.clear:
        removed = numba_codegen.clear_cache()
        print(f"removed {len(removed)} generated kernel modules from {directory} (they compile again on first use)")
        return 0
    try:
        limit = numba_codegen.cache_limit()
    except NnderivError as exc:
        print(f"nnderiv cache: error: {exc}", file=sys.stderr)
        return 2
    modules = numba_codegen.cached_modules(directory)
    size = sum(module.size for module in modules)
    print(f"{directory}: {len(modules)} generated kernel modules, {size / 2**20:.1f} MiB")
    print(f"limit {limit / 2**20:.0f} MiB (NNDERIV_CACHE_MAX_MB): the least recently used go as new ones come")
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
    check = commands.add_parser(
        "check",
        help="cross-check a model's outputs, input derivatives and parameter gradients against PyTorch or JAX",
        description="Exit status: 0 if every quantity agrees within its tolerance, 1 if not, 2 on error.",
    )
    check.add_argument("model", help="an nnderiv .npz file or an .onnx file")
    check.add_argument("--order", type=int, default=2, help="highest derivative order (default 2)")
    check.add_argument("--points", type=int, default=1000, help="points drawn uniformly in [-1, 1]^d")
    check.add_argument(
        "--against",
        default="torch",
        help="torch (default), jax, or an .npz file of reference arrays ('value', 'hessian', ...) and their points 'x'",
    )
    check.add_argument("--seed", type=int, default=0, help="seed of the points and of the gradient loss")
    check.add_argument("--dtype", choices=["float32", "float64"], help="cast the model first")
    check.add_argument("--no-params", action="store_true", help="skip the parameter gradients")
    check.set_defaults(run=_check)
    bench = commands.add_parser(
        "bench",
        help="short speed benchmark: nnderiv's backends against torch.func, JAX and folx (results checked first)",
        description="A short version of benchmarks/bench.py (fewer points and repeats, no sweep): docs/performance.md.",
    )
    from .benchmark import add_arguments

    add_arguments(bench, short=True)
    bench.set_defaults(run=_bench)
    kernel_cache = commands.add_parser(
        "cache",
        help="where the generated kernels and their machine code are kept, and how much",
        description="Generated kernels go to $NNDERIV_CACHE_DIR/kernels (default ~/.cache/nnderiv/kernels).",
    )
    kernel_cache.add_argument("--clear", action="store_true", help="delete them all (they compile again on use)")
    kernel_cache.set_defaults(run=_cache)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
