"""Turning per-detection mask probabilities into full-image results."""

from __future__ import annotations

import torch
from torch import Tensor

from instaseg.detectors.rcnn_inference import Detections
from instaseg.ops.paste_masks import paste_masks_in_image, paste_masks_torchvision_style
from instaseg.structures.image_list import rescale_boxes
from instaseg.structures.instances import Instances

__all__ = ["paste_detections"]


def paste_detections(
    detections: list[Detections],
    mask_probs: Tensor,
    mask_scores: Tensor | None,
    model_sizes: list[tuple[int, int]],
    image_sizes: list[tuple[int, int]],
    paste: str = "centres",
    mask_threshold: float = 0.5,
) -> list[Instances]:
    """One :class:`Instances` per image: boxes rescaled to ``image_sizes`` and masks pasted there.

    ``mask_probs (N, M, M)`` are the detections' mask probabilities, image-major; ``paste`` is
    ``"centres"`` (bilinear sampling at pixel centres) or ``"torchvision"`` (its legacy paste).
    """
    results = []
    start = 0
    for det, model_size, image_size in zip(detections, model_sizes, image_sizes):
        n = det.boxes.shape[0]
        # float32 ratios, as torchvision's resize_boxes (float64 boxes then match its to the last bit)
        boxes = rescale_boxes(det.boxes, model_size, image_size, ratio_dtype=torch.float32)
        probs = mask_probs[start : start + n]
        if paste == "torchvision":
            masks = paste_masks_torchvision_style(probs, boxes, image_size) >= mask_threshold
        elif paste == "centres":
            masks = paste_masks_in_image(probs, boxes, image_size, threshold=mask_threshold)
        else:
            raise ValueError(f"unknown paste {paste!r}: use 'centres' or 'torchvision'")
        results.append(
            Instances(
                boxes=boxes,
                scores=det.scores,
                labels=det.labels,
                masks=masks.bool(),
                mask_scores=None if mask_scores is None else mask_scores[start : start + n],
            )
        )
        start += n
    return results
