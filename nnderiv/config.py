"""Process-wide settings: the memory limit that guards every request."""

from __future__ import annotations

import os
from contextlib import contextmanager

_DEFAULT_FRACTION = 0.5  # of physical memory
_settings: dict = {"memory_limit": None}


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX systems
        return 8 * 2**30


def get_memory_limit() -> int:
    """Bytes a single request may use for its working set (default: half the physical memory).

    >>> set_memory_limit(2**30); get_memory_limit()
    1073741824
    >>> set_memory_limit(None)
    """
    limit = _settings["memory_limit"]
    return int(_physical_memory() * _DEFAULT_FRACTION) if limit is None else limit


def set_memory_limit(nbytes: int | None) -> None:
    """Set the working-set limit in bytes; ``None`` restores the default."""
    if nbytes is not None and (isinstance(nbytes, bool) or int(nbytes) != nbytes or nbytes <= 0):
        raise ValueError(f"memory limit must be a positive number of bytes or None, got {nbytes!r}")
    _settings["memory_limit"] = None if nbytes is None else int(nbytes)


@contextmanager
def memory_limit(nbytes: int | None):
    """Temporarily set the memory limit: ``with nd.memory_limit(2**28): ...``."""
    previous = _settings["memory_limit"]
    set_memory_limit(nbytes)
    try:
        yield
    finally:
        _settings["memory_limit"] = previous
