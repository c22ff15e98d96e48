"""Where YOLACT's ground truth meets its predictions: anchor matching, mask targets, crops.

Follows dbolya/yolact ``layers/box_utils.py`` (``match``, ``crop``) and ``multibox_loss.py``
(``lincomb_mask_loss``, ``_mask_iou``), written in instaseg's conventions: absolute xyxy boxes
in continuous pixel coordinates, labels ``0..C-1`` with background ``C``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from instaseg.ops.crop_masks import CROP_RULES, crop_masks
from instaseg.structures.boxes import box_ioa, box_iou
from instaseg.targets.matcher import Matcher, ignore_crowd

__all__ = [
    "AnchorTargets",
    "match_anchors",
    "CROP_RULES",
    "crop_masks",
    "downsample_masks",
    "mask_iou_targets",
    "sample_mask_positives",
]

IGNORE_LABEL = -1


@dataclass(frozen=True)
class AnchorTargets:
    """Targets of ``A`` anchors of one image.

    labels: ``(A,)`` int64, the class ``0..C-1`` of positives, ``C`` (background) for negatives,
        ``-1`` for ignored anchors (IoU in [0.4, 0.5), or covered by a crowd region).
    gt_index: ``(A,)`` int64, the matched ground truth (0 where nothing matches: use ``labels``).
    num_classes: C, the background label.
    """

    labels: Tensor
    gt_index: Tensor
    num_classes: int

    @property
    def positive(self) -> Tensor:
        """Bool ``(A,)``: anchors matched to an object."""
        return (self.labels >= 0) & (self.labels < self.num_classes)

    @property
    def negative(self) -> Tensor:
        """Bool ``(A,)``: background anchors (candidates for OHEM)."""
        return self.labels == self.num_classes


def match_anchors(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    matcher: Matcher,
    gt_crowd_boxes: Tensor | None = None,
    crowd_iou: float = 0.7,
) -> AnchorTargets:
    """Match anchors ``(A, 4)`` to ground truths ``gt_boxes (G, 4)``, ``gt_labels (G,)``.

    ``matcher`` is ``Matcher([0.4, 0.5], [0, -1, 1])``: positive from IoU 0.5, negative below 0.4.
    Then, as in the reference's ``match``, each ground truth (in order) claims its best anchor,
    which becomes positive for it whatever its IoU, so that no object goes without an anchor
    (a later ground truth wins an anchor two of them share). Finally non-positive anchors whose
    area is covered more than ``crowd_iou`` by a crowd box (``box_ioa``) are ignored.
    """
    match = matcher(box_iou(gt_boxes, anchors))
    label = match.label.to(torch.int64)
    gt_index = match.gt_index.clone()
    if gt_boxes.shape[0] > 0 and anchors.shape[0] > 0:
        best_anchor = box_iou(gt_boxes, anchors).argmax(dim=1)  # (G,)
        for j in range(gt_boxes.shape[0]):
            gt_index[best_anchor[j]] = j
            label[best_anchor[j]] = 1
    labels = torch.full_like(label, num_classes)
    positive = label == 1
    labels[positive] = gt_labels[gt_index[positive]].to(torch.int64)
    ignored = label == -1
    if gt_crowd_boxes is not None and gt_crowd_boxes.shape[0] > 0:
        ignored |= ignore_crowd(box_ioa(gt_crowd_boxes, anchors), crowd_iou) & ~positive
    labels[ignored] = IGNORE_LABEL
    return AnchorTargets(labels=labels, gt_index=gt_index, num_classes=num_classes)


def downsample_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Ground-truth masks ``(G, H, W)`` bool -> ``(G, h, w)`` bool at prototype resolution.

    Bilinear (half-pixel centres) then ``> 0.5``, as the reference does for its mask targets.
    """
    if masks.shape[0] == 0:
        return torch.zeros(0, *size, dtype=torch.bool, device=masks.device)
    resized = F.interpolate(masks[:, None].float(), size=size, mode="bilinear", align_corners=False)
    return resized[:, 0] > 0.5


def mask_iou_targets(pred_mask_probs: Tensor, gt_masks: Tensor, threshold: float = 0.5) -> Tensor:
    """YOLACT++ re-scoring targets: IoU of ``pred_mask_probs (N, h, w) > threshold`` with ``gt_masks``.

    Both at prototype resolution, the prediction already cropped by the ground-truth box (the
    reference's ``_mask_iou`` on the cropped masks). An empty union gives 0. Returns ``(N,)``.
    """
    dtype = pred_mask_probs.dtype if pred_mask_probs.is_floating_point() else torch.float32
    pred = (pred_mask_probs > threshold).flatten(1).to(dtype)
    gt = gt_masks.flatten(1).to(dtype)
    intersection = (pred * gt).sum(1)
    union = pred.sum(1) + gt.sum(1) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.zeros_like(union))


def sample_mask_positives(positive: Tensor, max_masks: int, generator: torch.Generator | None = None) -> Tensor:
    """Indices of the positives (``positive (A,)`` bool) that train masks: at most ``max_masks``.

    The reference's ``masks_to_train``: a random subset when there are more positives.
    """
    index = positive.nonzero().squeeze(1)
    if index.numel() > max_masks:
        perm = torch.randperm(index.numel(), generator=generator, device="cpu")[:max_masks]
        index = index[perm.to(index.device)].sort().values
    return index
