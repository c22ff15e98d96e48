"""Keypoint targets of Keypoint R-CNN: each keypoint of a positive RoI's matched ground truth as one
position of an ``m x m`` heatmap (the paper's one-hot mask, ``m = 56``).

The discretisation is Detectron2's ``Keypoints.to_heatmap`` (``structures/keypoints.py``), which
torchvision's ``roi_heads.keypoints_to_heatmap`` repeats: a keypoint in continuous image coordinates
(``instaseg.structures.keypoints``) goes to cell ``floor((x - x1) * m / (x2 - x1))`` of the RoI
``[x1, x2)``; a keypoint exactly on the right (bottom) edge goes to the last cell ``m - 1``. A target
is valid when the keypoint is labelled (``v > 0``) and its cell lies inside the heatmap; invalid
targets carry index 0 and are left out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from instaseg.targets.rcnn import SampledRoIs

__all__ = ["KeypointTargets", "keypoint_targets", "keypoints_to_heatmap", "rois_with_visible_keypoints"]


@dataclass
class KeypointTargets:
    """Heatmap targets of ``P`` positive RoIs and ``K`` keypoints."""

    index: Tensor  # (P, K) int64 in [0, m * m): flattened cell y * m + x (0 where not valid)
    valid: Tensor  # (P, K) bool: labelled and inside the RoI


def keypoints_to_heatmap(keypoints: Tensor, rois: Tensor, heatmap_size: int) -> tuple[Tensor, Tensor]:
    """Cells of ``keypoints (R, K, 3)`` in the ``heatmap_size x heatmap_size`` grid of ``rois (R, 4)``.

    Both in the same image frame (``rois`` xyxy). Returns ``index (R, K)`` int64, the flattened cell
    ``y * m + x`` (0 where not valid), and ``valid (R, K)`` bool. RoIs of zero width or height
    have no valid keypoint (the peers would divide by zero there).
    """
    if keypoints.dim() != 3 or keypoints.shape[2] != 3 or rois.shape != (keypoints.shape[0], 4):
        raise ValueError(f"need keypoints (R, K, 3) and rois (R, 4), got {tuple(keypoints.shape)}, {tuple(rois.shape)}")
    m = heatmap_size
    rois = rois.to(keypoints.dtype)
    x0, y0, x1, y1 = (rois[:, i : i + 1] for i in range(4))  # (R, 1) each
    nonempty = (x1 > x0) & (y1 > y0)
    width = torch.where(nonempty, x1 - x0, torch.ones_like(x0))
    height = torch.where(nonempty, y1 - y0, torch.ones_like(y0))
    x, y = keypoints[..., 0], keypoints[..., 1]
    cell_x = ((x - x0) * (m / width)).floor()
    cell_y = ((y - y0) * (m / height)).floor()
    # The RoI is [x1, x2) but a keypoint exactly on x2 (y2) still belongs to the last cell (the peers' rule).
    cell_x = torch.where(x == x1, torch.full_like(cell_x, m - 1), cell_x)
    cell_y = torch.where(y == y1, torch.full_like(cell_y, m - 1), cell_y)
    inside = (cell_x >= 0) & (cell_y >= 0) & (cell_x < m) & (cell_y < m)
    valid = inside & (keypoints[..., 2] > 0) & nonempty
    index = torch.where(valid, cell_y * m + cell_x, torch.zeros_like(cell_x)).long()
    return index, valid


def rois_with_visible_keypoints(keypoints: Tensor, rois: Tensor) -> Tensor:
    """``(R,)`` bool: RoIs with at least one labelled keypoint of ``keypoints (R, K, 3)`` inside ``rois (R, 4)``.

    Detectron2 trains the keypoint head only on such positive RoIs
    (``roi_heads.select_proposals_with_visible_keypoints``, a closed box test); torchvision uses
    every positive RoI. RoIs failing this test have no valid target, so keeping them only changes
    the batch, not the loss.
    """
    x, y = keypoints[..., 0], keypoints[..., 1]
    x0, y0, x1, y1 = (rois[:, i : i + 1].to(keypoints.dtype) for i in range(4))
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    return (inside & (keypoints[..., 2] > 0)).any(dim=1)


def keypoint_targets(
    gt_keypoints: Tensor, sampled: SampledRoIs, heatmap_size: int, count: int | None = None
) -> KeypointTargets:
    """Heatmap targets of the positive RoIs of one image (the first ``count`` positives when given).

    ``gt_keypoints (G, K, 3)`` are the image's ground truth (``Targets.keypoints``); each positive
    RoI takes the keypoints of its matched ground truth, discretised in the *proposal* box (as the
    mask targets are cut by it) with :func:`keypoints_to_heatmap`. Returns ``(P, K)`` tensors.
    """
    p = sampled.num_positive if count is None else min(count, sampled.num_positive)
    keypoints = gt_keypoints[sampled.gt_index[:p]]
    return KeypointTargets(*keypoints_to_heatmap(keypoints, sampled.boxes[:p], heatmap_size))
