"""The keypoint loss of Keypoint R-CNN: a softmax cross-entropy over the ``m x m`` positions of each
keypoint's heatmap (the paper's one-hot mask per keypoint; a softmax over space, not a per-pixel
sigmoid), on the valid targets of the positive RoIs (``instaseg.targets.keypoints``).

Normalisation (``normalization``), as Detectron2's ``keypoint_rcnn_loss`` (``roi_heads/keypoint_head.py``):

* ``"visible"`` (default; Detectron2's ``NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS = True``): the summed
  loss over the number of valid keypoints in the batch. torchvision's ``roi_heads.keypointrcnn_loss``
  (``F.cross_entropy``'s mean over the valid keypoints) is the same number.
* ``"fixed"`` (Detectron2's ``NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS = False``): the summed loss over a
  constant, the number of keypoints a full batch of positives would hold,
  :func:`fixed_keypoint_normalizer` (``num_images * K * batch_size_per_image * positive_fraction``),
  so that one visible keypoint weighs as much in a sparse batch as in a full one. Detectron2
  recommends a loss weight of 4 with it (1 with ``"visible"``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["KEYPOINT_LOSS_NORMALIZATIONS", "fixed_keypoint_normalizer", "keypoint_loss"]

KEYPOINT_LOSS_NORMALIZATIONS = ("visible", "fixed")


def fixed_keypoint_normalizer(
    num_images: int, num_keypoints: int, batch_size_per_image: int, positive_fraction: float
) -> float:
    """Detectron2's fixed keypoint-loss normaliser: the keypoints of a batch full of positive RoIs.

    ``num_images * num_keypoints * batch_size_per_image * positive_fraction`` (for COCO persons with
    2 images, 512 RoIs at 25%: ``2 * 17 * 128 = 4352``).
    """
    return float(num_images * num_keypoints * batch_size_per_image * positive_fraction)


def keypoint_loss(
    keypoint_logits: Tensor,
    gt_index: Tensor,
    valid: Tensor,
    normalization: str = "visible",
    fixed_normalizer: float | None = None,
) -> Tensor:
    """Cross-entropy over the ``m * m`` positions of each valid keypoint's heatmap, summed and normalised.

    ``keypoint_logits (P, K, m, m)`` spatial logits of the positive RoIs (all images together),
    ``gt_index (P, K)`` int64 flattened target cells in ``[0, m * m)``, ``valid (P, K)`` bool.
    ``normalization`` is ``"visible"`` or ``"fixed"`` (module docstring); ``"fixed"`` divides by
    ``fixed_normalizer``. Without any valid keypoint the loss is 0 (with a zero gradient), as the peers do.
    """
    if normalization not in KEYPOINT_LOSS_NORMALIZATIONS:
        raise ValueError(f"unknown keypoint loss normalization {normalization!r}, "
                         f"expected one of {KEYPOINT_LOSS_NORMALIZATIONS}")
    if normalization == "fixed" and (fixed_normalizer is None or fixed_normalizer <= 0):
        raise ValueError(f"normalization 'fixed' needs a positive fixed_normalizer, got {fixed_normalizer!r}")
    if keypoint_logits.dim() != 4:
        raise ValueError(f"keypoint_logits must be (P, K, m, m), got {tuple(keypoint_logits.shape)}")
    num_rois, num_keypoints = keypoint_logits.shape[:2]
    if gt_index.shape != (num_rois, num_keypoints) or valid.shape != (num_rois, num_keypoints):
        raise ValueError(f"gt_index and valid must be ({num_rois}, {num_keypoints}), "
                         f"got {tuple(gt_index.shape)} and {tuple(valid.shape)}")
    chosen = valid.reshape(-1).bool()
    num_valid = int(chosen.sum())
    if num_valid == 0:
        return keypoint_logits.sum() * 0
    flat_logits = keypoint_logits.reshape(num_rois * num_keypoints, -1)
    total = F.cross_entropy(flat_logits[chosen], gt_index.reshape(-1)[chosen], reduction="sum")
    return total / (num_valid if normalization == "visible" else fixed_normalizer)
