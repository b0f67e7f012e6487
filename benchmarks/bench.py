"""The full speed benchmark: nnderiv's backends against torch.func, JAX and folx, in one run.

Workloads W0-W6 at d = 2 and 8 (N = 4096, median of 7 repeats after warm-up, every result checked
against nnderiv's to 1e-10 first), the GEMM throughput against the machine's BLAS, and the sweep
(Laplacian up to d = 64, pure derivatives up to K = 6, chunked runs up to N = 10^6 under a memory
limit). Prints the report and writes every figure to JSON (``bench-results.json`` by default,
ignored by git). The code is :mod:`nnderiv.benchmark`; ``nnderiv bench`` is the short version.

    python benchmarks/bench.py                               # everything, ~10-20 minutes on 2 cores
    python benchmarks/bench.py --no-sweep --workloads W3 W6 --dims 8 --json bench-w3.json
    python benchmarks/bench.py --backends numba --peers jax folx --repeats 15

Measure on an idle machine with the thread settings you want to report (unset
``OPENBLAS_NUM_THREADS`` uses every core; ``OPENBLAS_NUM_THREADS=1`` for a quick look on a shared
one): see docs/performance.md.
"""

import sys

from nnderiv.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
