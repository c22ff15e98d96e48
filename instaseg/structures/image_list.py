"""Batching images of different sizes into one padded tensor."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ImageList", "batch_images", "resized_shape", "resize_image"]


@dataclass
class ImageList:
    """A padded batch and the size of each image inside it.

    ``tensor`` is ``(B, C, Hp, Wp)`` with every image at the top-left corner and zeros elsewhere;
    ``image_sizes[i] = (h_i, w_i)`` is the unpadded size of image ``i`` (what boxes are clipped to).
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.image_sizes)

    def to(self, device: torch.device | str) -> "ImageList":
        return ImageList(self.tensor.to(device), list(self.image_sizes))


def batch_images(images: list[Tensor], size_divisibility: int = 32, pad_value: float = 0.0) -> ImageList:
    """Pad ``images`` (each ``(C, H_i, W_i)``) to a common size, a multiple of ``size_divisibility``.

    Returns an :class:`ImageList` with ``tensor (B, C, Hp, Wp)``. ``size_divisibility`` is the
    largest backbone stride, so that every FPN level of every image lines up.
    """
    if len(images) == 0:
        raise ValueError("batch_images needs at least one image")
    channels = {img.shape[0] for img in images}
    if len(channels) != 1 or any(img.dim() != 3 for img in images):
        raise ValueError(f"images must all be (C, H, W) with the same C, got {[tuple(i.shape) for i in images]}")
    max_h = max(int(img.shape[1]) for img in images)
    max_w = max(int(img.shape[2]) for img in images)
    if size_divisibility > 1:
        max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
        max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
    sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
    if len(images) == 1:
        h, w = sizes[0]
        tensor = F.pad(images[0], (0, max_w - w, 0, max_h - h), value=pad_value)[None]
    else:
        tensor = images[0].new_full((len(images), images[0].shape[0], max_h, max_w), pad_value)
        for i, img in enumerate(images):
            tensor[i, :, : img.shape[1], : img.shape[2]].copy_(img)
    return ImageList(tensor, sizes)


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Shape after scaling the shortest side to ``min_size`` unless the longest would exceed ``max_size``.

    ``scale = min(min_size / short, max_size / long)`` and each side is ``floor(side * scale)``
    (torchvision's rule, computed in float32 as it does, so imported weights see the same input).
    """
    short, long = float(min(height, width)), float(max(height, width))
    scale = torch.minimum(
        torch.tensor(min_size / short, dtype=torch.float32), torch.tensor(max_size / long, dtype=torch.float32)
    ).item()
    return max(int(math.floor(height * scale)), 1), max(int(math.floor(width * scale)), 1)


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``image (C, H, W)`` float to ``size = (h, w)`` (half-pixel centres)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
