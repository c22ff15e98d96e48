"""Training-time transforms on ``(image (3, H, W) float RGB in [0, 255], Targets)`` pairs.

Every transform is a callable ``t(image, targets, generator=None) -> (image, targets)``. All of its
randomness is drawn from ``generator`` (a ``torch.Generator``), or from torch's global RNG when it is
None; the train loader passes a generator seeded per sample, so an augmented sample is a pure
function of ``(seed, epoch, dataset index)`` whatever worker makes it (see ``loader.py``).

Boxes are absolute-pixel ``xyxy`` in continuous coordinates, masks ``(G, H, W)`` bool, both in the
frame of the image they come with. Geometric transforms drop instances left with an empty box or
an empty mask. ``Targets.crowd_boxes`` (crowd regions, boxes only) move with the image too.

Keypoints (``Targets.keypoints``, ``(G, K, 3)`` ``(x, y, v)`` in the boxes' frame, or None) move with
the image: resizing scales ``x, y``; the flip mirrors them and swaps left and right by the flip map
the transform was given (``RandomHorizontalFlip(p, flip_map)``; ``build_transforms`` takes the
dataset's ``keypoint_flip_map``); expand shifts them; a crop shifts them and makes the points it
cuts off unlabelled ``(0, 0, 0)``. Unlabelled points stay ``(0, 0, 0)`` throughout. The YOLACT
augmentation carries them like the R-CNN one (every geometric step above), so any model may train
on keypoint data with either.

Mask resizing uses nearest neighbour at pixel centres (``nearest-exact``: output pixel ``d`` reads
input pixel ``floor((d + 0.5) * in / out)``), on the bool masks directly: it keeps masks binary,
needs no float copy of ``G x H x W``, and its centre convention matches the exact per-axis box
scaling, so a mask's box stays within one pixel of the scaled box.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from instaseg.config.schema import IMAGENET_MEAN_RGB, Config
from instaseg.errors import ConfigError
from instaseg.structures.boxes import box_iou, nonempty
from instaseg.structures.image_list import resize_image, resized_shape
from instaseg.structures.instances import Targets
from instaseg.structures.keypoints import flip_keypoints

__all__ = [
    "Transform",
    "Compose",
    "ResizeShortestEdge",
    "ResizeSquare",
    "RandomHorizontalFlip",
    "PhotometricDistort",
    "Expand",
    "RandomSampleCrop",
    "build_transforms",
]


class Transform(Protocol):
    def __call__(self, image: Tensor, targets: Targets,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Targets]: ...


# --- random draws (all through one generator) ------------------------------------------------------


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator | None, high: int) -> int:
    """An int in ``[0, high)``."""
    return int(torch.randint(high, (), generator=generator))


def _coin(generator: torch.Generator | None, p: float = 0.5) -> bool:
    return float(torch.rand((), generator=generator)) < p


# --- geometry helpers --------------------------------------------------------------------------------


def _select(targets: Targets, keep: Tensor) -> Targets:
    """The instances where ``keep (G,)`` bool is True. ``index_select`` rather than bool indexing:
    the latter is orders of magnitude slower on small CPU tensors with several threads."""
    index = torch.nonzero(keep).flatten()
    keypoints = None if targets.keypoints is None else targets.keypoints.index_select(0, index)
    return Targets(targets.boxes.index_select(0, index), targets.labels.index_select(0, index),
                   targets.masks.index_select(0, index), targets.crowd_boxes, keypoints)


def _move_keypoints(keypoints: Tensor | None, scale: tuple[float, float] = (1.0, 1.0),
                    shift: tuple[float, float] = (0.0, 0.0)) -> Tensor | None:
    """``(G, K, 3)`` keypoints with labelled ``(x, y)`` -> ``(x, y) * scale + shift``; ``v`` unchanged and
    unlabelled points ``(0, 0, 0)``. None stays None."""
    if keypoints is None:
        return None
    moved = torch.cat([keypoints[..., :1] * scale[0] + shift[0], keypoints[..., 1:2] * scale[1] + shift[1],
                       keypoints[..., 2:]], dim=-1)
    return torch.where(keypoints[..., 2:] > 0, moved, torch.zeros_like(moved))


def _keypoints_inside(keypoints: Tensor | None, height: int, width: int) -> Tensor | None:
    """``(G, K, 3)`` keypoints with those outside ``[0, width] x [0, height]`` made unlabelled ``(0, 0, 0)``."""
    if keypoints is None:
        return None
    x, y = keypoints[..., 0], keypoints[..., 1]
    inside = (x >= 0) & (x <= width) & (y >= 0) & (y <= height)
    return torch.where(inside[..., None], keypoints, torch.zeros_like(keypoints))


def _keep_nonempty(targets: Targets) -> Targets:
    """Drop instances whose box or mask became empty."""
    keep = nonempty(targets.boxes) & targets.masks.flatten(1).any(dim=1)
    return targets if bool(keep.all()) else _select(targets, keep)


def _resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """``(G, H, W)`` bool -> ``(G, h, w)`` bool by nearest neighbour at pixel centres."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    return F.interpolate(masks[None].to(torch.uint8), size=size, mode="nearest-exact")[0].bool()


def _resize(image: Tensor, targets: Targets, size: tuple[int, int]) -> tuple[Tensor, Targets]:
    """Resize to ``size = (h, w)``; boxes scaled by the exact per-axis ratio ``new / old``."""
    height, width = image.shape[-2:]
    if (height, width) == tuple(size):
        return image, targets
    scale = targets.boxes.new_tensor([size[1] / width, size[0] / height] * 2)
    keypoints = _move_keypoints(targets.keypoints, (size[1] / width, size[0] / height))
    resized = Targets(targets.boxes * scale, targets.labels, _resize_masks(targets.masks, size),
                      targets.crowd_boxes * scale, keypoints)
    return resize_image(image, size), _keep_nonempty(resized)


class Compose:
    """Apply transforms in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, targets: Targets,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Targets]:
        for transform in self.transforms:
            image, targets = transform(image, targets, generator)
        return image, targets

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class ResizeShortestEdge:
    """Scale the shorter side to a size drawn from ``min_sizes`` (multi-scale training) unless the
    longer side would exceed ``max_size`` (torchvision's rule, :func:`resized_shape`)."""

    def __init__(self, min_sizes: tuple[int, ...], max_size: int) -> None:
        if not min_sizes or min(min_sizes) <= 0 or max_size <= 0:
            raise ValueError(f"need positive min_sizes and max_size, got {min_sizes}, {max_size}")
        self.min_sizes, self.max_size = tuple(int(s) for s in min_sizes), int(max_size)

    def __call__(self, image: Tensor, targets: Targets,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Targets]:
        min_size = self.min_sizes[_randint(generator, len(self.min_sizes))] if len(self.min_sizes) > 1 \
            else self.min_sizes[0]
        size = resized_shape(int(image.shape[-2]), int(image.shape[-1]), min_size, self.max_size)
        return _resize(image, targets, size)

    def __repr__(self) -> str:
        return f"ResizeShortestEdge({self.min_sizes}, {self.max_size})"


class ResizeSquare:
    """Resize to ``size x size`` ignoring the aspect ratio (YOLACT trains and infers at 550x550)."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        self.size = int(size)

    def __call__(self, image: Tensor, targets: Targets,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Targets]:
        return _resize(image, targets, (self.size, self.size))

    def __repr__(self) -> str:
        return f"ResizeSquare({self.size})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``: ``x1' = W - x2``, ``x2' = W - x1``.

    Keypoints mirror ``x -> W - x`` and swap by ``flip_map`` (``flip_map[k]``: the keypoint that ``k``
    becomes, :func:`~instaseg.structures.keypoints.keypoint_flip_map` of the dataset's names, e.g.
    ``CocoDataset.keypoint_flip_map``). Flipping targets with keypoints but no ``flip_map`` raises
    ``ValueError``: a mirrored left hand must become the right one.
    """

    def __init__(self, p: float = 0.5, flip_map: Sequence[int] | None = None) -> None:
        self.p = float(p)
        self.flip_map = None if flip_map is None else [int(k) for k in flip_map]

    def __call__(self, image: Tensor, targets: Targets,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Targets]:
        if not _coin(generator, self.p):
            return image, targets
        width = image.shape[-1]

        def mirror(boxes: Tensor) -> Tensor:
            return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)

        keypoints = targets.keypoints
        if keypoints is not None:
            if self.flip_map is None:
                raise ValueError("RandomHorizontalFlip got targets with keypoints but no flip_map: give "
                                 "RandomHorizontalFlip(p, flip_map=dataset.keypoint_flip_map) (left and right "
                                 "keypoints swap on a flip)")
            keypoints = flip_keypoints(keypoints, width, self.flip_map)
        return image.flip(-1), Targets(mirror(targets.boxes), targets.labels, targets.masks.flip(-1),
                                       mirror(targets.crowd_boxes), keypoints)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip({self.p}{'' if self.flip_map is None else f', flip_map={self.flip_map}'})"


# --- photometric distortion (SSD, Liu et al. 2016; YOLACT's augmentations.py uses the same) --------


def _rgb_to_hsv(image: Tensor) -> Tensor:
    """``(3, H, W)`` RGB in [0, 1] -> HSV with hue in degrees [0, 360), saturation and value in [0, 1]."""
    r, g, b = image
    # Elementwise max/min: a dim-0 reduction with indices is far slower on CPU for 3 channels.
    maxc, minc = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    # The first channel holding the max decides, as in colorsys.rgb_to_hsv.
    hue = torch.where(r == maxc, ((g - b) / safe) % 6,
                      torch.where(g == maxc, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue * 60.0, torch.zeros_like(delta))
    saturation = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)),
                             torch.zeros_like(maxc))
    return torch.stack([hue, saturation, maxc])


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of :func:`_rgb_to_hsv`: channel n of RGB is ``v - v s clamp(min(k, 4 - k), 0, 1)``
    with ``k = (n + h / 60) mod 6`` and n = 5, 3, 1 for R, G, B."""
    hue, saturation, value = hsv
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device)[:, None, None]
    k = (offsets + hue / 60.0) % 6
    return value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1)


# Channel orders of SSD's RandomLightingNoise (a random permutation of the channels).
_CHANNEL_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


class PhotometricDistort:
    """SSD/YOLACT photometric distortion; each step applied with probability 1/2:

    brightness ``+ U(-32, 32)``; contrast ``x U(0.5, 1.5)`` either first or last (a coin decides);
    saturation ``x U(0.5, 1.5)`` and hue ``+ U(-18, 18)`` degrees in HSV; a random channel swap.
    Unlike SSD, the image is clamped to [0, 255] after each step (pixel values outside it never
    occur at test time) and saturation to [0, 1].
    """

    def __init__(self, brightness_delta: float = 32.0, contrast: tuple[float, float] = (0.5, 1.5),
                 saturation: tuple[float, float] = (0.5, 1.5), hue_delta: float = 18.0) -> None:
        self.brightness_delta, self.contrast = brightness_delta, contrast
        self.saturation, self.hue_delta = saturation, hue_delta

    def _contrast(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        if _coin(generator):
            image = (image * _uniform(generator, *self.contrast)).clamp(0, 255)
        return image

    def _hsv(self, image: Tensor, generator: torch.Generator | None) -> Tensor:
        scale = _uniform(generator, *self.saturation) if _coin(generator) else None
        shift = _uniform(generator, -self.hue_delta, self.hue_delta) if _coin(generator) else None
        if scale is None and shift is None:
            return image
        hue, saturation, value = _rgb_to_hsv(image / 255.0)
        if scale is not None:
            saturation = (saturation * scale).clamp(0, 1)
        if shift is not None:
            hue = (hue + shift) % 360.0
        return (_hsv_to_rgb(torch.stack([hue, saturation, value])) * 255.0).clamp(0, 255)

    def __call__(self, image: Tensor, targets: Targets,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Targets]:
        if _coin(generator):
            image = (image + _uniform(generator, -self.brightness_delta, self.brightness_delta)).clamp(0, 255)
        contrast_first = _coin(generator)
        if contrast_first:
            image = self._contrast(image, generator)
        image = self._hsv(image, generator)
        if not contrast_first:
            image = self._contrast(image, generator)
        if _coin(generator):
            order = _CHANNEL_PERMUTATIONS[_randint(generator, len(_CHANNEL_PERMUTATIONS))]
            image = image.index_select(0, torch.tensor(order))
        return image, targets

    def __repr__(self) -> str:
        return "PhotometricDistort()"


# --- SSD zoom out / zoom in --------------------------------------------------------------------------


class Expand:
    """SSD "zoom out": with probability ``p``, place the image at a random spot of a canvas
    ``U(1, max_ratio)`` times larger filled with ``fill`` (the pixel mean, RGB 0-255, so the padding
    becomes 0 after normalisation); boxes and masks move with it."""

    def __init__(self, max_ratio: float = 4.0, fill: tuple[float, float, float] = IMAGENET_MEAN_RGB,
                 p: float = 0.5) -> None:
        self.max_ratio, self.fill, self.p = float(max_ratio), tuple(float(v) for v in fill), float(p)

    def __call__(self, image: Tensor, targets: Targets,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Targets]:
        if not _coin(generator, self.p):
            return image, targets
        height, width = image.shape[-2:]
        ratio = _uniform(generator, 1.0, self.max_ratio)
        new_h, new_w = int(height * ratio), int(width * ratio)
        left = int(_uniform(generator, 0, new_w - width))
        top = int(_uniform(generator, 0, new_h - height))
        canvas = torch.tensor(self.fill, dtype=image.dtype).view(3, 1, 1).expand(3, new_h, new_w).clone()
        canvas[:, top:top + height, left:left + width] = image
        masks = targets.masks.new_zeros((targets.masks.shape[0], new_h, new_w))
        masks[:, top:top + height, left:left + width] = targets.masks
        shift = targets.boxes.new_tensor([left, top, left, top])
        keypoints = _move_keypoints(targets.keypoints, shift=(left, top))
        return canvas, Targets(targets.boxes + shift, targets.labels, masks, targets.crowd_boxes + shift, keypoints)

    def __repr__(self) -> str:
        return f"Expand({self.max_ratio}, fill={self.fill}, p={self.p})"


class RandomSampleCrop:
    """SSD "zoom in" (Liu et al. 2016, sec. 2.2): pick a mode among keep-the-image and crops whose
    best IoU with a ground-truth box is at least 0.1, 0.3, 0.7, 0.9 or anything; try up to
    ``trials`` crops of ``U(0.3, 1)`` times each side with aspect in [1/2, 2]; keep the instances
    whose box centre lies inside the crop (YOLACT's rule), clip their boxes and cut their masks;
    their keypoints outside the crop become unlabelled ``(0, 0, 0)``.
    Images without instances are returned unchanged.
    """

    # None keeps the whole image; 0.0 accepts any crop (SSD's (None, None) option).
    _MODES: tuple[float | None, ...] = (None, 0.1, 0.3, 0.7, 0.9, 0.0)

    def __init__(self, min_scale: float = 0.3, max_aspect: float = 2.0, trials: int = 50,
                 max_mode_draws: int = 50) -> None:
        self.min_scale, self.max_aspect = min_scale, max_aspect
        self.trials, self.max_mode_draws = trials, max_mode_draws

    def _draw_rect(self, height: int, width: int, generator: torch.Generator | None) -> tuple[int, ...] | None:
        crop_w = _uniform(generator, self.min_scale * width, width)
        crop_h = _uniform(generator, self.min_scale * height, height)
        if not 1.0 / self.max_aspect <= crop_h / crop_w <= self.max_aspect:
            return None
        left, top = _uniform(generator, 0, width - crop_w), _uniform(generator, 0, height - crop_h)
        rect = (int(left), int(top), int(left + crop_w), int(top + crop_h))
        return rect if rect[2] > rect[0] and rect[3] > rect[1] else None

    def __call__(self, image: Tensor, targets: Targets,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Targets]:
        if len(targets) == 0:
            return image, targets
        height, width = int(image.shape[-2]), int(image.shape[-1])
        boxes = targets.boxes
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        for _ in range(self.max_mode_draws):
            min_iou = self._MODES[_randint(generator, len(self._MODES))]
            if min_iou is None:
                return image, targets
            for _ in range(self.trials):
                rect = self._draw_rect(height, width, generator)
                if rect is None:
                    continue
                rect_t = boxes.new_tensor(rect)
                if float(box_iou(boxes, rect_t[None]).max()) < min_iou:
                    continue
                inside = ((centres > rect_t[:2]) & (centres < rect_t[2:])).all(dim=1)
                if bool(inside.any()):
                    return self._crop(image, targets, rect, inside)
        return image, targets

    @staticmethod
    def _crop(image: Tensor, targets: Targets, rect: tuple[int, ...],
              keep: Tensor) -> tuple[Tensor, Targets]:
        left, top, right, bottom = rect
        kept = _select(targets, keep)

        def clip(boxes: Tensor) -> Tensor:
            return torch.stack([boxes[:, 0].clamp(left, right) - left, boxes[:, 1].clamp(top, bottom) - top,
                                boxes[:, 2].clamp(left, right) - left, boxes[:, 3].clamp(top, bottom) - top], dim=1)

        crowd = clip(kept.crowd_boxes)  # an ignore region keeps its part inside the crop
        keypoints = _keypoints_inside(_move_keypoints(kept.keypoints, shift=(-left, -top)), bottom - top, right - left)
        cropped = Targets(clip(kept.boxes), kept.labels, kept.masks[:, top:bottom, left:right], crowd[nonempty(crowd)],
                          keypoints)
        return image[:, top:bottom, left:right], _keep_nonempty(cropped)

    def __repr__(self) -> str:
        return f"RandomSampleCrop(min_scale={self.min_scale}, trials={self.trials})"


# --- from a config -----------------------------------------------------------------------------------


def _final_resize(config: Config) -> Transform:
    """Square resize when ``input.square`` is set (YOLACT), else multi-scale shortest-edge resize."""
    if config.input.square > 0:
        return ResizeSquare(config.input.square)
    return ResizeShortestEdge(tuple(config.input.min_size_train), config.input.max_size_train)


def build_transforms(config: Config, train: bool, keypoint_flip_map: Sequence[int] | None = None) -> Compose:
    """The transforms of ``config.train.augmentation``; at evaluation an identity (the model resizes).

    ``keypoint_flip_map``: the dataset's left/right keypoint swap (``CocoDataset.keypoint_flip_map``),
    needed when its targets carry keypoints and ``train.flip_prob > 0``.

    - ``"rcnn"``: resize (multi-scale shortest edge from ``input.min_size_train``/``max_size_train``,
      or square when ``input.square > 0``), then horizontal flip with ``train.flip_prob``.
    - ``"yolact"``: SSD photometric distortion, expand (fill = pixel mean), SSD crop, flip, then
      the same final resize (``input.square`` = 550 for YOLACT).
    """
    if not train:
        return Compose([])
    augmentation = config.train.augmentation
    flip = RandomHorizontalFlip(config.train.flip_prob, keypoint_flip_map)
    if augmentation == "rcnn":
        return Compose([_final_resize(config), flip])
    if augmentation == "yolact":
        mean = tuple(config.input.pixel_mean)
        fill = mean[::-1] if config.input.channel_order.upper() == "BGR" else mean  # images here are RGB
        return Compose([PhotometricDistort(), Expand(4.0, fill), RandomSampleCrop(), flip, _final_resize(config)])
    raise ConfigError(f"train.augmentation must be 'rcnn' or 'yolact', got {augmentation!r}")
