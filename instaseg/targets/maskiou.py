"""MaskIoU targets of Mask Scoring R-CNN: how good each predicted mask really is."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["in_box_fraction", "maskiou_targets"]


def in_box_fraction(gt_masks: Tensor, gt_index: Tensor, boxes: Tensor) -> Tensor:
    """Fraction of each matched ground-truth instance's area that lies inside its RoI box.

    ``gt_masks (G, H, W)`` bool, ``gt_index (P,)``, ``boxes (P, 4)`` xyxy -> ``(P,)`` in [0, 1].
    A summed-area table per instance makes this four lookups per RoI; box edges are rounded to
    whole pixels (a pixel counts when its centre is inside the box).
    """
    if boxes.shape[0] == 0:
        return boxes.new_zeros(0)
    h, w = gt_masks.shape[-2:]
    table = torch.zeros(gt_masks.shape[0], h + 1, w + 1, dtype=torch.float64, device=gt_masks.device)
    table[:, 1:, 1:] = gt_masks.to(torch.float64).cumsum(1).cumsum(2)
    x1 = boxes[:, 0].round().clamp(0, w).long()
    y1 = boxes[:, 1].round().clamp(0, h).long()
    x2 = boxes[:, 2].round().clamp(0, w).long()
    y2 = boxes[:, 3].round().clamp(0, h).long()
    t = table[gt_index]
    p = torch.arange(boxes.shape[0], device=boxes.device)
    inside = t[p, y2, x2] - t[p, y1, x2] - t[p, y2, x1] + t[p, y1, x1]
    total = t[:, -1, -1]
    return torch.where(total > 0, inside / total.clamp(min=1), 0.0).to(boxes.dtype)


def maskiou_targets(pred_mask_probs: Tensor, mask_targets: Tensor, in_box: Tensor, threshold: float = 0.5) -> Tensor:
    """IoU of each binarized predicted mask with its whole ground-truth instance, ``(P,)``.

    ``pred_mask_probs (P, M, M)`` and ``mask_targets (P, M, M)`` are in the RoI's M x M frame; the
    target only holds the part of the instance inside the box, so the instance's full area in that
    frame is ``target area / in_box`` (the MS R-CNN reference's area correction) and
    ``IoU = overlap / (pred + full - overlap)``.
    """
    pred = (pred_mask_probs >= threshold).to(mask_targets.dtype)
    target = (mask_targets >= 0.5).to(mask_targets.dtype)
    overlap = (pred * target).sum(dim=(1, 2))
    full = torch.where(in_box > 0, target.sum(dim=(1, 2)) / in_box.clamp(min=1e-6), 0.0)
    union = pred.sum(dim=(1, 2)) + full - overlap
    return torch.where(union > 0, overlap / union.clamp(min=1e-6), 0.0)
