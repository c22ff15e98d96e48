"""Training targets of Mask R-CNN: which anchors and RoIs learn what."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from instaseg.structures.boxes import BoxCoder, box_iou
from instaseg.ops.crop_and_resize import crop_and_resize
from instaseg.targets.matcher import Matcher
from instaseg.targets.sampler import sample_balanced

__all__ = ["SampledRoIs", "rpn_targets", "sample_rois", "mask_targets"]


def rpn_targets(
    anchors: Tensor,
    gt_boxes: Tensor,
    matcher: Matcher,
    batch_size_per_image: int,
    positive_fraction: float,
    box_coder: BoxCoder,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Objectness labels and box targets for the ``anchors (A, 4)`` of one image.

    Returns ``labels (A,)`` float in {-1 ignored / not sampled, 0 background, 1 object} with
    ``batch_size_per_image`` anchors sampled at ``positive_fraction`` positives (256 and 0.5 in
    the paper), and ``deltas (A, 4)``, the encoded matched ground-truth box of every anchor.
    """
    match = matcher(box_iou(gt_boxes, anchors))
    pos, neg = sample_balanced(match.label, batch_size_per_image, positive_fraction, generator)
    labels = torch.full((anchors.shape[0],), -1.0, device=anchors.device)
    labels[pos] = 1.0
    labels[neg] = 0.0
    if gt_boxes.shape[0] == 0:
        return labels, torch.zeros_like(anchors)
    return labels, box_coder.encode(anchors, gt_boxes[match.gt_index].to(anchors.dtype))


@dataclass
class SampledRoIs:
    """The RoIs of one image that the heads learn from, positives first."""

    boxes: Tensor  # (R, 4) proposals (with the ground-truth boxes appended when configured)
    labels: Tensor  # (R,) int64 class in [0, num_classes), num_classes for background
    gt_index: Tensor  # (R,) index of the matched ground truth (meaningful for positives only)
    num_positive: int  # rows [0, num_positive) are the foreground RoIs


def sample_rois(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    matcher: Matcher,
    batch_size_per_image: int,
    positive_fraction: float,
    append_gt_boxes: bool = True,
    generator: torch.Generator | None = None,
) -> SampledRoIs:
    """Match ``proposals (P, 4)`` to ground truth and sample 512 RoIs at 25% foreground (the paper)."""
    if append_gt_boxes:
        proposals = torch.cat([proposals, gt_boxes.to(proposals.dtype)])
    match = matcher(box_iou(gt_boxes, proposals))
    pos, neg = sample_balanced(match.label, batch_size_per_image, positive_fraction, generator)
    index = torch.cat([pos, neg])
    labels = torch.full((index.numel(),), num_classes, dtype=torch.int64, device=proposals.device)
    if gt_boxes.shape[0] > 0:
        labels[: pos.numel()] = gt_labels[match.gt_index[pos]]
    return SampledRoIs(proposals[index], labels, match.gt_index[index], int(pos.numel()))


def mask_targets(gt_masks: Tensor, sampled: SampledRoIs, size: int, count: int | None = None) -> Tensor:
    """``(P, size, size)`` binary float targets: each positive RoI's ground-truth mask cut by its box
    (the first ``count`` positives when given).

    The matched mask is cropped by the *proposal* box, resampled to ``size x size`` with aligned
    RoIAlign and binarized at 0.5 (the paper's "intersection between an RoI and its associated
    ground-truth mask"; Detectron2 thresholds the same way).
    """
    p = sampled.num_positive if count is None else min(count, sampled.num_positive)
    if p == 0:
        return gt_masks.new_zeros((0, size, size), dtype=torch.float32)
    masks = gt_masks[sampled.gt_index[:p]]
    return (crop_and_resize(masks, sampled.boxes[:p], size) >= 0.5).float()
