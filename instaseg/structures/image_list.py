"""Batching images of different sizes into one padded tensor."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ImageList", "batch_images", "resized_shape", "resize_image", "resize_shortest_side", "image_size_tensor",
           "size_tensor", "rescale_boxes", "rescale_keypoints", "pad_to_multiple", "RESIZE_ROUNDINGS", "RESIZE_FILTERS"]


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


RESIZE_ROUNDINGS = ("floor", "round", "mmcv")
RESIZE_FILTERS = ("bilinear", "pil_bilinear")


def resized_shape(
    height: int, width: int, min_size: int, max_size: int, rounding: str = "floor"
) -> tuple[int, int]:
    """Shape ``(h, w)`` after scaling the shortest side to ``min_size`` unless the longest would
    exceed ``max_size``. Publishers round differently, and a one-pixel change moves every anchor:

    - ``"floor"`` (torchvision's ``GeneralizedRCNNTransform``): ``scale = min(min_size / short,
      max_size / long)`` in float64 and each side ``floor(side * scale)``, the size
      ``F.interpolate(scale_factor=scale, recompute_scale_factor=True)`` gives (480x640 -> 800x1066);
    - ``"round"`` (Detectron2's ``ResizeShortestEdge``): the short side becomes ``min_size`` and the
      long one ``long * min_size / short``; when that exceeds ``max_size`` both are multiplied by
      ``max_size / long'``; each side is then ``int(x + 0.5)`` (480x640 -> 800x1067);
    - ``"mmcv"`` (MMDetection's ``Resize(keep_ratio=True)``, mmcv's ``rescale_size``): one factor
      ``scale = min(max_size / long, min_size / short)`` and each side ``int(side * scale + 0.5)``.
      The same sizes as ``"round"`` except where ``side * scale`` lands within float rounding of
      ``x.5`` (22x124 -> 237x1333 here, 236x1333 by Detectron2's order of operations).
    """
    if rounding == "floor":
        scale = min(min_size / min(height, width), max_size / max(height, width))
        return max(math.floor(height * scale), 1), max(math.floor(width * scale), 1)
    if rounding == "round":
        scale = min_size / min(height, width)
        new_h, new_w = (min_size, scale * width) if height < width else (scale * height, min_size)
        if max(new_h, new_w) > max_size:
            cap = max_size / max(new_h, new_w)
            new_h, new_w = new_h * cap, new_w * cap
        return max(int(new_h + 0.5), 1), max(int(new_w + 0.5), 1)
    if rounding == "mmcv":
        scale = min(max_size / max(height, width), min_size / min(height, width))
        return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)
    raise ValueError(f"unknown resize rounding {rounding!r}: use one of {RESIZE_ROUNDINGS}")


def resize_image(image: Tensor, size: tuple[int, int], resize_filter: str = "bilinear") -> Tensor:
    """Resize ``image (C, H, W)`` (float, values in [0, 255]) to ``size = (h, w)``.

    - ``"bilinear"``: bilinear interpolation of the float image at half-pixel centres, no
      antialiasing (``F.interpolate``; torchvision's transform, instaseg's own presets);
    - ``"pil_bilinear"``: the image rounded to uint8 and resized by Pillow's bilinear filter, which
      widens its support when shrinking (antialiasing) and rounds its output to uint8: what
      Detectron2's ``ResizeTransform.apply_image`` does to the uint8 images it reads. Not
      differentiable, and not exportable.
    """
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"unknown resize filter {resize_filter!r}: use one of {RESIZE_FILTERS}")
    # At equal size bilinear resampling is the identity; a traced graph (symbolic sides) resamples.
    if not torch.compiler.is_exporting() and tuple(image.shape[-2:]) == tuple(size):
        return image
    if resize_filter == "pil_bilinear":
        return _resize_pil_bilinear(image, size)
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def size_tensor(size: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
    """``(2,)`` float64 ``[H, W]`` of ``size = (H, W)``; the sides may be symbolic (a traced graph)."""
    return torch.stack([torch.scalar_tensor(s, dtype=torch.float64, device=device) for s in size])


def image_size_tensor(image: Tensor) -> Tensor:
    """``(2,)`` float64 ``[H, W]`` of ``image (C, H, W)``, traced from its (symbolic) shape."""
    return size_tensor(tuple(image.shape[-2:]), image.device)


def rescale_boxes(
    boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int], ratio_dtype: torch.dtype = torch.float64
) -> Tensor:
    """Map ``boxes (N, 4)`` from an image of ``from_size = (h, w)`` to one of ``to_size`` (the sides
    may be symbolic): the ratios ``to / from`` are divisions in ``ratio_dtype``, then cast to the
    boxes' dtype. float32 is torchvision's ``resize_boxes`` (float64 boxes then match torchvision's
    to the last bit); float64 is Python's ``w / in_w`` (YOLACT's)."""
    ratios = size_tensor(to_size, boxes.device).to(ratio_dtype) / size_tensor(from_size, boxes.device).to(ratio_dtype)
    ratio_h, ratio_w = ratios.unbind()
    return boxes * torch.stack((ratio_w, ratio_h, ratio_w, ratio_h)).to(boxes.dtype)


def rescale_keypoints(
    keypoints: Tensor, from_size: tuple[int, int], to_size: tuple[int, int], ratio_dtype: torch.dtype = torch.float64
) -> Tensor:
    """Map ``keypoints (N, K, 3)`` ``(x, y, score)`` as :func:`rescale_boxes` maps boxes; the score stays.

    float32 ratios are torchvision's ``resize_keypoints``."""
    device = keypoints.device
    ratios = size_tensor(to_size, device).to(ratio_dtype) / size_tensor(from_size, device).to(ratio_dtype)
    ratio_h, ratio_w = ratios.unbind()
    scale = torch.stack((ratio_w, ratio_h, torch.ones_like(ratio_w))).to(keypoints.dtype)
    return keypoints * scale


def resize_shortest_side(image: Tensor, min_size: int, max_size: int) -> tuple[Tensor, Tensor]:
    """:func:`resized_shape` (``"floor"``) and :func:`resize_image` (``"bilinear"``) for an image
    whose sides are symbolic (a traced graph).

    ``image (3, H, W)`` -> ``(resized (3, h, w), size (2,) float64 [h, w])``. The scale and the
    sizes are float64 arithmetic, as the eager rule (torchvision's) does, so both pick the same
    size for every input size.
    """
    size = image_size_tensor(image)
    short, long = size.min(), size.max()
    scale = torch.minimum(torch.full_like(short, min_size) / short, torch.full_like(long, max_size) / long)
    new_size = torch.floor(size * scale).clamp(min=1)
    height, width = (v.item() for v in new_size.long().unbind())  # data-dependent sizes
    torch._check(height >= 1)
    torch._check(width >= 1)
    return resize_image(image, (height, width)), new_size


def pad_to_multiple(batch: Tensor, divisor: int) -> Tensor:
    """:func:`batch_images`' padding for one traced image: zero-pad ``batch (B, C, H, W)`` at the
    bottom/right to multiples of ``divisor``.

    The padded sides are ``divisor * blocks`` with ``blocks`` a fresh symbol: every feature map's
    size is then a plain multiple of it, which keeps ``torch.export``'s shape algebra (and so the
    export time) small for inputs whose size is itself data-dependent.
    """
    if divisor <= 1:
        return batch
    height, width = batch.shape[-2:]
    sides = torch.stack([torch.scalar_tensor(s, dtype=torch.int64, device=batch.device) for s in (height, width)])
    blocks_h, blocks_w = (v.item() for v in ((sides + divisor - 1) // divisor).unbind())
    for blocks, side in ((blocks_h, height), (blocks_w, width)):
        torch._check(blocks >= 1)
        torch._check(blocks * divisor >= side)
    return F.pad(batch, (0, blocks_w * divisor - width, 0, blocks_h * divisor - height))


def _resize_pil_bilinear(image: Tensor, size: tuple[int, int]) -> Tensor:
    from PIL import Image  # only this path needs Pillow at call time

    pixels = image.detach().round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    channels = [Image.fromarray(pixels[..., c]) for c in range(pixels.shape[-1])]  # any channel count
    resized = [torch.from_numpy(np.array(c.resize((size[1], size[0]), Image.BILINEAR))) for c in channels]
    return torch.stack(resized).to(device=image.device, dtype=image.dtype)
