"""The Mask R-CNN mask target: each mask cut by its box and resampled by RoIAlign.

The inverse of the paste-back (``instaseg.ops.paste_masks``). Boxes are absolute-pixel ``xyxy``
with continuous coordinates (a box covering pixel columns ``0..W-1`` is ``[0, W]``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from instaseg.ops.roi_align import roi_align

__all__ = ["crop_and_resize"]

# crop_and_resize feeds masks to roi_align as float images; above this many mask pixels per call
# the masks are processed in chunks to bound the temporary float copy (2**24 floats = 64 MiB).
_MAX_PIXELS_PER_CHUNK = 1 << 24


def crop_and_resize(masks: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Cut each mask by its box and resample it to ``size x size`` (the Mask R-CNN mask target).

    Uses RoIAlign with ``aligned=True`` (pixel (r, c) has its centre at (c + 0.5, r + 0.5)) and an
    adaptive sampling ratio, treating mask ``i`` as a 1-channel image cut by box ``i``, as
    Detectron2's ``BitMasks.crop_and_resize`` does. Box parts outside the mask follow RoIAlign's
    edge rule: samples more than one pixel outside read 0, those within one pixel take the edge value.

    Args:
        masks: ``(N, H, W)`` bool or float ground-truth masks.
        boxes: ``(N, 4)`` xyxy in the masks' pixel frame (usually the proposals matched to them).
        size: output side (28 for Mask R-CNN).

    Returns:
        ``(N, size, size)`` float soft targets in [0, 1] (threshold at 0.5 for hard targets); the
        dtype is the masks' float dtype, else the boxes' float dtype, else float32.
    """
    if masks.ndim != 3 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"expected masks (N, H, W) and boxes (N, 4), got {tuple(masks.shape)}, {tuple(boxes.shape)}")
    num, height, width = masks.shape
    if masks.is_floating_point():
        dtype = masks.dtype
    else:
        dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    if num == 0:
        return torch.zeros((0, size, size), dtype=dtype, device=masks.device)
    boxes = boxes.to(device=masks.device, dtype=dtype)
    chunk = max(1, _MAX_PIXELS_PER_CHUNK // max(1, height * width))
    outputs = []
    for start in range(0, num, chunk):
        images = masks[start : start + chunk, None].to(dtype)  # each mask is its own 1-channel image
        batch_index = torch.arange(images.shape[0], dtype=dtype, device=masks.device)[:, None]
        rois = torch.cat([batch_index, boxes[start : start + chunk]], dim=1)
        crops = roi_align(images, rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
        outputs.append(crops[:, 0])
    return torch.cat(outputs, dim=0)
