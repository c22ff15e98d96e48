"""torchvision's pure-Python package on instaseg's kernels, for side-by-side comparisons.

torchvision's wheels for this CPU build of torch carry compiled ops that cannot load. Its Python
code (models, transforms, box utilities) still runs once its two detection ops, ``nms`` and
``roi_align``, are registered under the ``torchvision`` namespace with instaseg's pure-PyTorch
kernels (tested against slow references of torchvision's semantics). The weight-parity test and
``benchmarks/train_step.py`` use this to run torchvision's own Mask R-CNN; instaseg itself never
needs it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import torch

from instaseg.ops import _dispatch
from instaseg.ops.nms import _nms_torch
from instaseg.ops.roi_align import _roi_align_torch

__all__ = ["load_torchvision"]

_LIBRARY: list[torch.library.Library] = []  # the registration lives as long as the process


def load_torchvision(site: str | Path | None = None) -> ModuleType:
    """Import torchvision (from ``site`` when given) with instaseg's kernels behind its ops.

    Call it before anything else imports torchvision, once per process.
    """
    if not _LIBRARY:
        _dispatch.shimmed = True  # instaseg's own ops keep their direct paths
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")  # its meta file names it
        lib.define("roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
                   "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor")
        lib.impl("nms", lambda dets, scores, threshold: _nms_torch(dets, scores, threshold), "CPU")
        # CompositeImplicitAutograd: autograd runs through instaseg's differentiable RoIAlign.
        lib.impl("roi_align", lambda x, rois, scale, ph, pw, ratio, aligned:
                 _roi_align_torch(x, rois, (ph, pw), scale, ratio, aligned), "CompositeImplicitAutograd")
        _LIBRARY.append(lib)
    if site is not None and str(site) not in sys.path:
        sys.path.insert(0, str(site))
    import torchvision
    import torchvision.extension
    import torchvision.ops.roi_align

    torchvision.extension._has_ops = lambda: True  # its kernels are the ones registered above
    # Bound at import in the op's module (which ``torchvision.ops.roi_align``, the function, hides);
    # left alone, torchvision would torch.compile its own Python RoIAlign instead.
    sys.modules["torchvision.ops.roi_align"]._has_ops = lambda: True
    return torchvision
