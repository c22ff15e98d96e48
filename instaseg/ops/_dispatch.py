"""Call-time choice of an optional faster kernel.

instaseg's ops are pure PyTorch. Where torchvision's compiled ops import *and work* (for example a
CUDA machine with a matching torchvision), an op may hand the call to them. The check happens at
the first call, never at package import, so a broken or missing torchvision cannot break instaseg.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

__all__ = ["torchvision_ops", "use_fast_kernels"]

# INSTASEG_FAST_KERNELS=0 forces the pure-PyTorch paths (useful for checking both agree).
_ENV_FLAG = "INSTASEG_FAST_KERNELS"

# Set by instaseg.ops.torchvision_shim: torchvision's ops are then instaseg's own kernels, and
# routing instaseg's calls through torchvision's Python wrappers would gain nothing.
shimmed = False


@functools.lru_cache(maxsize=1)
def _load_torchvision_ops() -> ModuleType | None:
    try:
        import torch
        import torchvision.ops  # noqa: F401  (imported only here, on first use)

        # Importing is not enough: CUDA-only builds import but fail on the first CPU call.
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        torchvision.ops.nms(boxes, torch.ones(1), 0.5)
        return torchvision.ops
    except Exception:  # any failure means "no fast kernel": fall back silently to pure PyTorch
        return None


def use_fast_kernels() -> bool:
    """Whether the environment allows dispatching to optional compiled kernels."""
    return os.environ.get(_ENV_FLAG, "1") != "0"


def torchvision_ops() -> ModuleType | None:
    """``torchvision.ops`` if it imports and runs here and fast kernels are allowed, else None."""
    if shimmed or not use_fast_kernels():
        return None
    return _load_torchvision_ops()
