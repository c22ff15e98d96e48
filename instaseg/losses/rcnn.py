"""Losses of Mask R-CNN as plain tensor functions (L = L_cls + L_box + L_mask, plus the RPN's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rpn_losses", "fast_rcnn_losses", "mask_loss", "maskiou_loss"]


def _box_regression(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth-L1 (``beta > 0``) or L1 (``beta == 0``) loss."""
    if beta <= 0:
        return (pred - target).abs().sum()
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


def rpn_losses(
    objectness_logits: Tensor, anchor_deltas: Tensor, labels: Tensor, target_deltas: Tensor, beta: float = 0.0
) -> dict[str, Tensor]:
    """RPN objectness (binary cross-entropy) and box losses over the sampled anchors.

    ``objectness_logits (B, A)``, ``anchor_deltas (B, A, 4)``, ``labels (B, A)`` in {-1, 0, 1},
    ``target_deltas (B, A, 4)``. Both terms are normalized by the number of sampled anchors.
    """
    sampled = labels >= 0
    positive = labels == 1
    normalizer = sampled.sum().clamp(min=1)
    loss_cls = F.binary_cross_entropy_with_logits(
        objectness_logits[sampled], labels[sampled], reduction="sum"
    ) / normalizer
    loss_box = _box_regression(anchor_deltas[positive], target_deltas[positive], beta) / normalizer
    return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}


def fast_rcnn_losses(
    class_logits: Tensor, box_deltas: Tensor, labels: Tensor, target_deltas: Tensor, beta: float = 0.0
) -> dict[str, Tensor]:
    """Softmax cross-entropy over ``C + 1`` classes and the class-specific box loss.

    ``class_logits (R, C + 1)`` (background last), ``box_deltas (R, 4C)``, ``labels (R,)`` in
    [0, C], ``target_deltas (R, 4)``. The box loss only counts foreground RoIs, on their ground-truth
    class's deltas, and is normalized by the number of sampled RoIs (not of foreground ones).
    """
    num_rois = class_logits.shape[0]
    if num_rois == 0:
        zero = class_logits.sum() * 0 + box_deltas.sum() * 0
        return {"loss_cls": zero, "loss_box": zero}
    num_classes = class_logits.shape[1] - 1
    loss_cls = F.cross_entropy(class_logits, labels)
    foreground = torch.where(labels < num_classes)[0]
    pred = box_deltas.view(num_rois, -1, 4)
    pred = pred[foreground, labels[foreground] if pred.shape[1] > 1 else 0]
    loss_box = _box_regression(pred, target_deltas[foreground], beta) / num_rois
    return {"loss_cls": loss_cls, "loss_box": loss_box}


def mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor, mode: str = "sigmoid") -> Tensor:
    """The mask loss on positive RoIs.

    ``mask_logits (P, K, M, M)``, ``labels (P,)`` ground-truth classes, ``targets (P, M, M)`` in
    [0, 1]. ``mode``:

    * ``"sigmoid"``: binary cross-entropy on the ground-truth class's channel only (K = C) — the
      decoupling of mask and class prediction the paper argues for;
    * ``"agnostic"``: the same on a single class-agnostic channel (K = 1);
    * ``"softmax"``: the multinomial ablation — a per-pixel softmax over the C classes and
      background (K = C + 1, background last), each pixel's target being the RoI's class inside
      the mask and background outside (so at inference a pixel is in the object when it is not
      background: ``MaskRCNN.class_mask_probabilities``).
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0
    if mode == "softmax":
        background = mask_logits.shape[1] - 1
        pixel_labels = torch.where(targets >= 0.5, labels[:, None, None], background)
        return F.cross_entropy(mask_logits, pixel_labels)
    if mode == "agnostic":
        selected = mask_logits[:, 0]
    elif mode == "sigmoid":
        selected = mask_logits[torch.arange(labels.numel(), device=labels.device), labels]
    else:
        raise ValueError(f"unknown mask loss mode {mode!r}")
    return F.binary_cross_entropy_with_logits(selected, targets.to(selected.dtype))


def maskiou_loss(pred_iou: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Mask Scoring R-CNN's L2 loss on the ground-truth class's MaskIoU output.

    ``pred_iou (P, C)``, ``labels (P,)``, ``targets (P,)``; only RoIs with a target > 0 count
    (as in the paper's reference implementation).
    """
    keep = targets > 0
    if not bool(keep.any()):
        return pred_iou.sum() * 0
    index = torch.where(keep)[0]
    return F.mse_loss(pred_iou[index, labels[index]], targets[index])
