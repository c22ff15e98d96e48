"""Turning per-detection mask probabilities into full-image results."""

from __future__ import annotations

import torch
from torch import Tensor

from instaseg.detectors.rcnn_inference import Detections
from instaseg.ops.paste_masks import paste_masks_in_image, paste_masks_torchvision_style
from instaseg.structures.instances import Instances

__all__ = ["rescale_boxes", "paste_detections"]


def rescale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Map ``boxes (N, 4)`` from an image of ``from_size = (h, w)`` to one of ``to_size``.

    The ratios are float32 divisions, as torchvision's ``resize_boxes`` computes them (and the
    exported graph), so float64 boxes match torchvision's to the last bit.
    """
    ratios = torch.tensor(to_size, dtype=torch.float32) / torch.tensor(from_size, dtype=torch.float32)
    ratio_h, ratio_w = ratios.tolist()
    scale = torch.tensor([ratio_w, ratio_h, ratio_w, ratio_h], dtype=boxes.dtype, device=boxes.device)
    return boxes * scale


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
        boxes = rescale_boxes(det.boxes, model_size, image_size)
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
