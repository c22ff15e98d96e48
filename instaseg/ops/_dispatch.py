"""Call-time choice of an optional faster kernel.

instaseg's ops are pure PyTorch. Where torchvision's compiled ops import *and work* (for example a
CUDA machine with a matching torchvision), an op may hand the call to them. The check happens at
the first call, never at package import, so a broken or missing torchvision cannot break instaseg.

Whether that hand-over is allowed is a ``contextvars.ContextVar``, not a process-wide switch:
``with fast_kernels(False): ...`` forces the pure-PyTorch paths for that block, in that thread (or
asyncio task) only, and restores the previous choice on exit (export traces the pure paths this
way). The environment variable ``INSTASEG_FAST_KERNELS=0`` (documented in the README) sets the
default for the whole process; it is read once, when this module is imported.
"""

from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import torch

__all__ = ["fast_kernels", "torchvision_ops", "use_fast_kernels"]

# The user-facing default, read once at import: INSTASEG_FAST_KERNELS=0 forces the pure-PyTorch
# paths (useful for checking both agree).
_ENV_FLAG = "INSTASEG_FAST_KERNELS"
_FAST_KERNELS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "instaseg_fast_kernels", default=os.environ.get(_ENV_FLAG, "1") != "0"
)

# Set by instaseg.ops.torchvision_shim: torchvision's ops are then instaseg's own kernels, and
# routing instaseg's calls through torchvision's Python wrappers would gain nothing. A fact about
# the process (what torchvision.ops is), not a setting.
shimmed = False


@functools.lru_cache(maxsize=1)
def _load_torchvision_ops() -> ModuleType | None:
    try:
        import torchvision.ops  # noqa: F401  (imported only here, on first use)

        # Importing is not enough: CUDA-only builds import but fail on the first CPU call.
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        torchvision.ops.nms(boxes, torch.ones(1), 0.5)
        return torchvision.ops
    except Exception:  # any failure means "no fast kernel": fall back silently to pure PyTorch
        return None


def use_fast_kernels() -> bool:
    """Whether dispatching to optional compiled kernels is allowed here and now."""
    return _FAST_KERNELS.get()


@contextmanager
def fast_kernels(enabled: bool) -> Iterator[None]:
    """Allow (True) or forbid (False) the optional compiled kernels for a ``with`` block.

    ``with fast_kernels(False): roi_align(...)`` runs the pure-PyTorch path. Scoped to the current
    thread / task and restored on exit, even when the block raises.
    """
    token = _FAST_KERNELS.set(bool(enabled))
    try:
        yield
    finally:
        _FAST_KERNELS.reset(token)


def torchvision_ops() -> ModuleType | None:
    """``torchvision.ops`` if it imports and runs here and fast kernels are allowed, else None.

    None while torch.compile traces: dynamo cannot read the ContextVar (a graph break at every call,
    at every deformable convolution of a YOLACT++ backbone), and the compiler gets the pure-PyTorch
    path to optimise."""
    if torch.compiler.is_dynamo_compiling() or shimmed or not use_fast_kernels():
        return None
    return _load_torchvision_ops()
