r"""Full mode: every partial derivative up to order ``K``, mixed ones included.

Convention: row ``r`` of a stack holds the Taylor coefficient

.. math::  c_\alpha = \frac{\partial^\alpha h}{\alpha!}, \qquad
           \alpha = \texttt{table.alphas[r]}, \quad \alpha! = \prod_i \alpha_i!,

of the layer output ``h`` with respect to the network input ``x``, for all multi-indices
``|alpha| <= K`` in graded order (:func:`nnderiv.combinatorics.multi_index_table`):
``C(d + K, K)`` rows, each mixed partial stored once. The input seeds the series ``x + t``: value
``x``, first-order coefficient of ``x_i`` along ``t_i`` equal to 1. The propagation rules are those
of every series (:mod:`nnderiv.modes.series`); the read-out ``d^alpha f = alpha! c_alpha`` is
:class:`nnderiv.Derivatives`.
"""

from __future__ import annotations

import numpy as np

from ..combinatorics import multi_index_table
from .series import SeriesMode


class FullMode(SeriesMode):
    """All partials of order ``<= order`` of a network with ``d`` inputs."""

    def __init__(self, d: int, order: int, *, for_vjp: bool = False):
        super().__init__(multi_index_table(d, order), np.eye(d), for_vjp=for_vjp)
