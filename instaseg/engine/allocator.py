"""Freed CPU memory kept for reuse, so that large tensors stop paying a page fault per 4 KiB page.

glibc's ``malloc`` serves every request above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and gives the pages back to the kernel on ``free``. A detector's feature maps and their
gradients are tens to hundreds of MiB each and are allocated anew at every step, so the kernel
maps and zeroes every page of them again on first touch: ~9.6 million minor page faults in one
Mask R-CNN R50-FPN training step at 800x1216 (2 images), a fifth of the step's time
(``benchmarks/results/train_step.md``). :func:`reuse_freed_memory` asks glibc (``mallopt``) to
serve every request from its heap and to keep freed memory there for the next one, as the
tcmalloc / jemalloc set-ups recommended for PyTorch on CPUs do, without a preloaded library.

The cost: the process keeps its peak memory instead of returning it between steps, and the heap
fragments a little: that step's peak RSS is 4.0 GiB instead of 3.1, and with the image size changing
at every step the process settled at ~1.2x glibc's default peak. It is process-wide, applied once,
by the ``instaseg`` command, training and the benchmarks; ``INSTASEG_MALLOC=system`` leaves the C
library's defaults. Other C libraries (macOS, Windows, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from instaseg.errors import ConfigError

__all__ = ["reuse_freed_memory", "malloc_setting", "ENV_VAR"]

ENV_VAR = "INSTASEG_MALLOC"
_CHOICES = ("reuse", "system")

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# Heaps (arenas) threads allocate from: each keeps its own peak once nothing is trimmed, and glibc
# makes up to 8 per core, one per busy thread. `instaseg serve`'s test burst of 50 requests grew the
# process by 314 MiB with the default cap, 54 MiB with 2 (glibc's defaults without reuse: 214 MiB).
_ARENAS = 2
_KEEP_UP_TO = 2**31 - 1  # bytes of free memory kept at the top of the heap (mallopt takes an int)

_state: bool | None = None  # None: not asked yet; else whether glibc took the settings


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (once per process); True when the settings are in force.

    False when ``INSTASEG_MALLOC=system`` or the C library is not glibc. Raises ``ConfigError`` for
    any other value of ``INSTASEG_MALLOC`` than ``reuse`` / ``system``.
    """
    global _state
    choice = os.environ.get(ENV_VAR, "reuse").strip().lower() or "reuse"
    if choice not in _CHOICES:
        raise ConfigError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: expected one of {', '.join(_CHOICES)}")
    if _state is None:
        _state = choice == "reuse" and _set_glibc_options()
    return _state


def malloc_setting() -> str:
    """``"reuse"`` once :func:`reuse_freed_memory` is in force (it is applied here if not yet), else ``"system"``."""
    return "reuse" if reuse_freed_memory() else "system"


def _set_glibc_options() -> bool:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    # The process's own symbols, glibc's among them (ctypes.util.find_library would run ldconfig).
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # No mmap, and no trimming either: freed memory at the top of the heap would go back to the kernel.
    # Few arenas, since each would keep its own peak.
    return (bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_UP_TO))
            and bool(mallopt(_M_ARENA_MAX, _ARENAS)))
