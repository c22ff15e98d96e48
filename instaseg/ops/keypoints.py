"""Keypoint heatmaps back to image keypoints: ``(R, K, m, m)`` logits + RoIs -> ``(R, K, 3)`` (x, y, score).

Detectron2's ``heatmaps_to_keypoints`` (``structures/keypoints.py``), which torchvision's
``roi_heads.heatmaps_to_keypoints`` repeats for the locations: each RoI's maps are resized with
bicubic interpolation (``align_corners=False``) to the RoI's ``ceil(h) x ceil(w)`` pixels (width
and height at least 1), the arg-max cell ``(i, j)`` of each map (the first one on ties) is taken,
and its centre goes back to the image as ``x = x1 + (j + 0.5) * w / ceil(w)`` (``y`` likewise) —
Heckbert's ``c = d + 0.5``, the inverse of the target discretisation in
``instaseg.targets.keypoints``. The bicubic resize is the peers' only sub-pixel refinement: the
peak is found on a grid of about one image pixel rather than of ``w / m`` pixels.

Scores (``score``):

* ``"logit"``: the resized map's logit at the peak — torchvision's ``keypoints_scores`` and the
  ``logit`` column Detectron2 computes;
* ``"detectron2"``: what Detectron2 returns in ``pred_keypoints``: ``exp(peak - peak) /
  sum(exp(map - peak))`` with the sum over the *unresized* ``m x m`` map, i.e.
  ``1 / sum(exp(map - peak))``: a softmax probability whose normaliser does not grow with the RoI's
  size (positive; can exceed 1 where the bicubic peak overshoots the map's maximum).

The locations are the same in both modes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KEYPOINT_SCORES", "heatmaps_to_keypoints"]

KEYPOINT_SCORES = ("logit", "detectron2")


def heatmaps_to_keypoints(heatmaps: Tensor, rois: Tensor, score: str = "logit") -> Tensor:
    """Keypoints of ``heatmaps (R, K, m, m)`` logits predicted over ``rois (R, 4)`` xyxy image pixels.

    Returns ``(R, K, 3)`` ``(x, y, score)`` in the RoIs' frame (continuous coordinates), in float32
    or the heatmaps' dtype if wider (half-precision heatmaps are decoded in float32: pixel
    coordinates do not fit a 16-bit float); ``score`` is ``"logit"`` or ``"detectron2"`` (module
    docstring). No gradient flows (inference only).
    """
    if score not in KEYPOINT_SCORES:
        raise ValueError(f"unknown keypoint score {score!r}, expected one of {KEYPOINT_SCORES}")
    if heatmaps.dim() != 4 or rois.shape != (heatmaps.shape[0], 4):
        raise ValueError(f"need heatmaps (R, K, m, m) and rois (R, 4), got {tuple(heatmaps.shape)}, {tuple(rois.shape)}")
    dtype = torch.promote_types(heatmaps.dtype, torch.float32)
    heatmaps = heatmaps.detach().to(dtype)
    rois = rois.detach().to(dtype)
    num_rois, num_keypoints = heatmaps.shape[:2]
    out = heatmaps.new_zeros(num_rois, num_keypoints, 3)
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    keypoint = torch.arange(num_keypoints, device=heatmaps.device)
    for i, (width, height) in enumerate(zip(widths.tolist(), heights.tolist())):
        out_w, out_h = math.ceil(width), math.ceil(height)
        resized = F.interpolate(heatmaps[i : i + 1], size=(out_h, out_w), mode="bicubic", align_corners=False)[0]
        peak = resized.reshape(num_keypoints, -1).argmax(dim=1)  # the first maximum, as the peers
        col, row = peak % out_w, peak // out_w
        out[i, :, 0] = rois[i, 0] + (col.to(out.dtype) + 0.5) * (widths[i] / out_w)
        out[i, :, 1] = rois[i, 1] + (row.to(out.dtype) + 0.5) * (heights[i] / out_h)
        peak_value = resized[keypoint, row, col]
        if score == "logit":
            out[i, :, 2] = peak_value
        else:
            out[i, :, 2] = 1.0 / (heatmaps[i] - peak_value[:, None, None]).exp().sum(dim=(1, 2))
    return out
