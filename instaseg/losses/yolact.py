"""YOLACT's loss terms as plain functions (dbolya/yolact ``layers/modules/multibox_loss.py``).

Each returns a SUM over its items; the detector divides by the number of positive anchors in
the batch (classification, box, mask, re-scoring) or by the batch size (semantic segmentation),
as the reference does, and applies the paper's weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from instaseg.targets.sampler import ohem_negatives

__all__ = ["ohem_classification_loss", "box_regression_loss", "prototype_mask_loss", "semantic_seg_loss",
           "mask_rescoring_loss"]


def ohem_classification_loss(class_logits: Tensor, labels: Tensor, neg_pos_ratio: int = 3) -> Tensor:
    """Softmax cross-entropy over positives and OHEM-selected hard negatives, summed.

    ``class_logits (B, A, C + 1)`` with background last; ``labels (B, A)`` in ``0..C`` (C =
    background) or -1 (ignored). Negatives are ranked per image by their background loss
    ``logsumexp(logits) - logits[C]`` and the ``neg_pos_ratio`` x (#positives) hardest are kept.
    """
    background = class_logits.shape[-1] - 1
    positive = (labels >= 0) & (labels < background)
    ignore = labels < 0
    with torch.no_grad():
        neg_loss = torch.logsumexp(class_logits, dim=-1) - class_logits[..., background]
    keep = positive | ohem_negatives(neg_loss, positive, ignore, neg_pos_ratio)
    if not keep.any():
        return class_logits.sum() * 0.0
    return F.cross_entropy(class_logits[keep], labels[keep], reduction="sum")


def box_regression_loss(pred_deltas: Tensor, target_deltas: Tensor) -> Tensor:
    """Smooth-L1 (beta 1) summed over positives: both ``(P, 4)``."""
    return F.smooth_l1_loss(pred_deltas, target_deltas, reduction="sum", beta=1.0)


def prototype_mask_loss(mask_logits: Tensor, gt_masks: Tensor, gt_boxes: Tensor, crop: Tensor) -> Tensor:
    """YOLACT's mask loss, summed over masks.

    ``mask_logits (P, h, w)`` are ``prototypes @ coefficients`` at prototype resolution;
    ``gt_masks (P, h, w)`` the matched ground truths there; ``crop (P, h, w)`` 1 inside the
    matched ground-truth box, else 0; ``gt_boxes (P, 4)`` those boxes in prototype pixels.
    Per mask: the binary cross-entropy summed inside the box, divided by the box area
    (``mask_proto_normalize_emulate_roi_pooling``: small objects weigh as much as large ones).
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(mask_logits, gt_masks.to(mask_logits.dtype), reduction="none")
    area = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])).clamp(min=1.0)
    return ((bce * crop).flatten(1).sum(1) / area.to(bce.dtype)).sum()


def semantic_seg_loss(seg_logits: Tensor, gt_masks: Tensor, gt_labels: Tensor) -> Tensor:
    """Auxiliary semantic segmentation loss of one image, summed over pixels and divided by ``h * w``.

    ``seg_logits (C, h, w)`` (one sigmoid per class); ``gt_masks (G, h, w)`` bool already at that
    size; ``gt_labels (G,)``. The target of class c is the union of its instances' masks.
    """
    num_classes, h, w = seg_logits.shape
    target = torch.zeros_like(seg_logits)
    for mask, label in zip(gt_masks, gt_labels.tolist()):
        target[label] = torch.maximum(target[label], mask.to(target.dtype))
    return F.binary_cross_entropy_with_logits(seg_logits, target, reduction="sum") / (h * w)


def mask_rescoring_loss(pred_iou: Tensor, gt_labels: Tensor, target_iou: Tensor) -> Tensor:
    """YOLACT++ re-scoring: smooth-L1 between ``pred_iou (N, C)`` at ``gt_labels`` and ``target_iou (N,)``, summed."""
    if pred_iou.shape[0] == 0:
        return pred_iou.sum() * 0.0
    chosen = pred_iou[torch.arange(pred_iou.shape[0], device=pred_iou.device), gt_labels]
    return F.smooth_l1_loss(chosen, target_iou.to(chosen.dtype), reduction="sum", beta=1.0)
