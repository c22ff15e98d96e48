"""Turning the RoI heads' per-detection outputs (mask probabilities, keypoints) into full-image results."""

from __future__ import annotations

import torch
from torch import Tensor

from instaseg.detectors.rcnn_inference import Detections
from instaseg.ops.paste_masks import paste_masks_in_image, paste_masks_torchvision_style
from instaseg.structures.image_list import rescale_boxes, rescale_keypoints
from instaseg.structures.instances import Instances

__all__ = ["paste_detections"]


def paste_detections(
    detections: list[Detections],
    mask_probs: Tensor | None,
    mask_scores: Tensor | None,
    model_sizes: list[tuple[int, int]],
    image_sizes: list[tuple[int, int]],
    paste: str = "centres",
    mask_threshold: float = 0.5,
    keypoints: Tensor | None = None,
) -> list[Instances]:
    """One :class:`Instances` per image: boxes (and keypoints) rescaled to ``image_sizes`` and masks pasted there.

    ``mask_probs (N, M, M)`` are the detections' mask probabilities, image-major (None: a model
    without a mask branch, whose results have ``masks=None``); ``paste`` is ``"centres"`` (bilinear
    sampling at pixel centres) or ``"torchvision"`` (its legacy paste). ``keypoints (N, K, 3)``
    ``(x, y, score)`` in the resized images' frame, image-major, or None.
    """
    results = []
    start = 0
    for det, model_size, image_size in zip(detections, model_sizes, image_sizes):
        n = det.boxes.shape[0]
        # float32 ratios, as torchvision's resize_boxes (float64 boxes then match its to the last bit)
        boxes = rescale_boxes(det.boxes, model_size, image_size, ratio_dtype=torch.float32)
        masks = None
        if mask_probs is not None:
            masks = _paste(mask_probs[start : start + n], boxes, image_size, paste, mask_threshold)
        results.append(
            Instances(
                boxes=boxes,
                scores=det.scores,
                labels=det.labels,
                masks=masks,
                mask_scores=None if mask_scores is None else mask_scores[start : start + n],
                keypoints=None if keypoints is None else rescale_keypoints(
                    keypoints[start : start + n], model_size, image_size, ratio_dtype=torch.float32),
            )
        )
        start += n
    return results


def _paste(probs: Tensor, boxes: Tensor, image_size: tuple[int, int], paste: str, threshold: float) -> Tensor:
    """``(N, M, M)`` probabilities over ``boxes (N, 4)`` -> ``(N, H, W)`` bool masks of the image."""
    if paste == "torchvision":
        return paste_masks_torchvision_style(probs, boxes, image_size) >= threshold
    if paste == "centres":
        return paste_masks_in_image(probs, boxes, image_size, threshold=threshold).bool()
    raise ValueError(f"unknown paste {paste!r}: use 'centres' or 'torchvision'")
