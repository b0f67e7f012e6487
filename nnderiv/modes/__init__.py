"""Modes: what a stack of coefficients means.

Every mode carries, through the network, a stack ``(n_rows, N, width)`` of truncated Taylor
coefficients (row 0 the value) and differs from the others only by which coefficients it keeps:
its table. The two propagation rules and their pullbacks are shared
(:class:`~nnderiv.modes.series.SeriesMode`); layers call only ``linear`` and ``elementwise``.
"""

from .full import FullMode
from .series import SeriesMode

__all__ = ["FullMode", "SeriesMode"]
