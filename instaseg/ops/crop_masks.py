"""Cropping masks by boxes: YOLACT's ``crop`` (the masks assembled from prototypes keep only the
pixels inside their box), in training, in inference and in a traced graph alike."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CROP_RULES", "crop_masks"]

CROP_RULES = ("pixel_centre", "pixel_index")


def crop_masks(masks: Tensor, boxes: Tensor, padding: float = 0.0, rule: str = "pixel_centre") -> Tensor:
    """Zero ``masks (N, H, W)`` outside ``boxes (N, 4)`` (xyxy in the masks' own pixel frame).

    ``rule`` says which pixels ``(y, x)`` the box grown by ``padding`` pixels on every side keeps:

    * ``"pixel_centre"``: those whose centre lies in it, ``x1 - p <= x + 0.5 < x2 + p``;
    * ``"pixel_index"``: ``x1 - p <= x < x2 + p`` with the pixel's index, after putting each pair
      of coordinates in order (``x1 <= x2``): dbolya/yolact's ``crop`` (``sanitize_coordinates``
      with ``cast=False``; its clamps to ``[0, W]`` keep the same pixels).

    Differentiable in ``masks``.
    """
    if rule not in CROP_RULES:
        raise ValueError(f"unknown crop rule {rule!r}: use 'pixel_centre' or 'pixel_index'")
    h, w = masks.shape[-2:]
    offset = 0.5 if rule == "pixel_centre" else 0.0
    cols = torch.arange(w, device=masks.device, dtype=boxes.dtype) + offset
    rows = torch.arange(h, device=masks.device, dtype=boxes.dtype) + offset
    x1, y1, x2, y2 = (boxes[:, i, None] for i in range(4))
    if rule == "pixel_index":
        x1, x2 = torch.minimum(x1, x2), torch.maximum(x1, x2)
        y1, y2 = torch.minimum(y1, y2), torch.maximum(y1, y2)
    inside_x = (cols[None] >= x1 - padding) & (cols[None] < x2 + padding)  # (N, W)
    inside_y = (rows[None] >= y1 - padding) & (rows[None] < y2 + padding)  # (N, H)
    inside = inside_y[:, :, None] & inside_x[:, None, :]
    return masks * inside.to(masks.dtype)
