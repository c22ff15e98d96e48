"""A built-in synthetic instance-segmentation dataset in COCO format (no download needed).

``generate_synthetic_dataset`` draws RGB images of coloured, textured shapes on a textured
background and writes them with COCO instance annotations::

    out_dir/train/000001.png ...        out_dir/annotations/train.json
    out_dir/val/000161.png ...          out_dir/annotations/val.json

What the data looks like (and why):

- Six shape classes: ``triangle``, ``square_frame`` (a hollow square), ``ellipse``, ``ring`` (an
  annulus), ``star`` and ``cross``. Colour and texture (solid, stripes, gradient, blotches) are
  random per object, so only the *shape* tells the class: the task cannot be solved by colour.
- Category ids are deliberately neither contiguous nor starting at 0 or 1 (3, 7, 12, 18, 25, 31),
  so every consumer must map ids to contiguous labels ``0..C-1`` and back (a wrong map gives AP 0).
- Objects overlap: later objects are drawn on top and each annotation is the *visible* part only.
  An object whose visible part is under 25% of its full (in-image) area, or under a few pixels, is
  not drawn at all, so every foreground pixel of an image belongs to exactly one annotation and
  no annotation overlaps another.
- Masks are exact: no anti-aliasing, so the binary masks match the drawn pixels one to one.
- Segmentations mix both COCO encodings: an unoccluded polygon-like shape lying fully inside the
  image (triangle, ellipse, star, cross) is stored as a polygon whose pycocotools rasterisation *is*
  its mask; rings, frames (they have holes), occluded and truncated shapes are compressed RLE
  (``counts`` a str). ``area`` is the mask's pixel count and ``bbox`` the tight ``[x, y, w, h]``
  box of the mask in continuous coordinates (``x + w`` = last column + 1).
- About 5% of the images of each split are negatives (no objects). With ``crowd=True`` about 5% of
  the training images also hold one ``iscrowd=1`` region: a cluster of tiny blobs annotated as one
  uncompressed RLE (as COCO stores crowds), category ``ellipse``.
- ``difficulty="standard"``: 1-6 objects per image, sizes 12%-50% of the shorter image side.
  ``difficulty="hard"``: 4-15 objects clustered for heavy occlusion, sizes 5%-20% of the side, and
  thin structures (1-2 px rings, frames and cross arms).
  ``difficulty="crowded"``: 240-320 small objects per image (3%-5% of the side, about 200-300
  left visible on a 320 px image), to measure what the detection caps cost.

Each image has its own random stream seeded by ``(seed, image_id)``; the same arguments give
identical JSON and PNG bytes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from instaseg.structures.masks import bitmap_to_rle, polygons_to_bitmap

__all__ = ["SyntheticDataset", "generate_synthetic_dataset", "synthetic_category_names"]

# (category id, name): ids deliberately non-contiguous and not starting at 0/1 (see module doc).
_CATEGORIES: tuple[tuple[int, str], ...] = ((3, "triangle"), (7, "square_frame"), (12, "ellipse"),
                                             (18, "ring"), (25, "star"), (31, "cross"))
_CROWD_CATEGORY_ID = 12  # crowd blobs are tiny ellipses (discs)

_NEGATIVE_FRACTION = 0.05  # share of images per split with no objects
_CROWD_FRACTION = 0.05  # share of training images with one iscrowd region
_MIN_VISIBLE_FRACTION = 0.25  # drop objects occluded by more than 75%
_MIN_VISIBLE_PIXELS = 6  # ... or with fewer visible pixels than this

# Colour model (uint8 units). Background pixels stay within _BG_SPREAD of the background base
# colour; every object colour is at least _COLOUR_MARGIN away from it (L-inf) on one channel, on
# the same side for both colours of a texture, so any blend of them is too. Objects therefore stand
# out from the background by >= _COLOUR_MARGIN - _OBJECT_NOISE - (sum of _BG_*) = 53 everywhere.
_BG_GRADIENT = 15.0
_BG_BLOTCH = 10.0
_BG_NOISE = 4.0
_COLOUR_MARGIN = 90
_OBJECT_NOISE = 8.0
_TEXTURES = ("solid", "stripes", "gradient", "blotches")


@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`generate_synthetic_dataset` wrote a dataset (json ``file_name`` entries are
    relative to the matching image folder); names and ids are in contiguous-label order."""

    train_images: Path
    val_images: Path
    train_annotations: Path
    val_annotations: Path
    category_names: tuple[str, ...]
    category_ids: tuple[int, ...]


@dataclass(frozen=True)
class _Difficulty:
    min_objects: int
    max_objects: int
    min_size: float  # object diameter as a fraction of the shorter image side
    max_size: float
    thin: bool  # 1-2 px rings, frames and cross arms
    clustered: bool  # place objects around a few centres for heavy occlusion


_DIFFICULTIES = {
    "standard": _Difficulty(1, 6, 0.12, 0.50, thin=False, clustered=False),
    "hard": _Difficulty(4, 15, 0.05, 0.20, thin=True, clustered=True),
    "crowded": _Difficulty(240, 320, 0.03, 0.05, thin=False, clustered=False),
}


@dataclass
class _Layer:
    """One drawn region: its full in-image mask, colours and how to encode it."""

    category_id: int
    full_mask: np.ndarray  # (H, W) bool, before occlusion
    polygon: list[float] | None  # set when the full mask is exactly this polygon's rasterisation
    fill: np.ndarray  # (K, 3) float colours of the K full-mask pixels, row-major order
    iscrowd: int = 0


def synthetic_category_names() -> list[str]:
    """The class names in category-id order (the order of contiguous labels 0..C-1)."""
    return [name for _, name in _CATEGORIES]


# --- Shapes: each returns (full mask (H, W) bool, polygon or None). Pixel (r, c) covers
# [c, c+1] x [r, r+1]; its centre is (c + 0.5, r + 0.5). ------------------------------------------
_ShapeMask = tuple[np.ndarray, "list[float] | None"]
_Point = tuple[float, float]
_Size = tuple[int, int]


def _place(local_xy: np.ndarray, centre: _Point, angle: float) -> np.ndarray:
    """Rotate ``(K, 2)`` local points by ``angle`` and move them to ``centre`` (x, y)."""
    cos, sin = math.cos(angle), math.sin(angle)
    x, y = local_xy[:, 0], local_xy[:, 1]
    return np.stack([centre[0] + cos * x - sin * y, centre[1] + sin * x + cos * y], axis=1)


def _polygon_shape(points: np.ndarray, size: _Size) -> _ShapeMask:
    # Round first and rasterise the rounded polygon, so the JSON polygon decodes to the very mask.
    (h, w), flat = size, [round(float(v), 2) for v in points.reshape(-1)]
    mask = polygons_to_bitmap([flat], h, w)
    inside = points.min() >= 0 and points[:, 0].max() <= w and points[:, 1].max() <= h
    return mask, (flat if inside else None)


def _radial_polygon(radii: np.ndarray, angles: np.ndarray, centre: _Point, angle: float,
                    size: _Size) -> _ShapeMask:
    local = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return _polygon_shape(_place(local, centre, angle), size)


def _triangle(rng: np.random.Generator, c: _Point, r: float, thin: bool, size: _Size) -> _ShapeMask:
    angles = np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
    radii = r * rng.uniform(0.75, 1.0, 3)
    return _radial_polygon(radii, angles, c, rng.uniform(0, 2 * math.pi), size)


def _ellipse(rng: np.random.Generator, c: _Point, r: float, thin: bool, size: _Size) -> _ShapeMask:
    t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
    minor = r * rng.uniform(0.45, 1.0)
    radii = r * minor / np.hypot(minor * np.cos(t), r * np.sin(t))  # polar form of an ellipse
    return _radial_polygon(radii, t, c, rng.uniform(0, math.pi), size)


def _star(rng: np.random.Generator, c: _Point, r: float, thin: bool, size: _Size) -> _ShapeMask:
    t = np.linspace(0, 2 * math.pi, 10, endpoint=False)
    radii = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.38, 0.55))
    return _radial_polygon(radii, t, c, rng.uniform(0, 2 * math.pi), size)


def _cross(rng: np.random.Generator, c: _Point, r: float, thin: bool, size: _Size) -> _ShapeMask:
    a = r * rng.uniform(0.18, 0.3) if not thin else rng.uniform(0.6, 1.2)  # arm half-width
    r2 = r * rng.uniform(0.7, 1.0)  # second arm half-length
    local = np.array([(-a, -r2), (a, -r2), (a, -a), (r, -a), (r, a), (a, a),
                      (a, r2), (-a, r2), (-a, a), (-r, a), (-r, -a), (-a, -a)])
    return _polygon_shape(_place(local, c, rng.uniform(0, math.pi)), size)


def _square_frame(rng: np.random.Generator, c: _Point, r: float, thin: bool,
                  size: _Size) -> _ShapeMask:
    half = r / math.sqrt(2.0)  # circumscribed radius r
    border = half * rng.uniform(0.22, 0.4) if not thin else rng.uniform(1.0, 2.0)
    angle = rng.uniform(0, math.pi / 2)
    square = np.array([(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])
    outer, _ = _polygon_shape(_place(square * half, c, angle), size)
    inner, _ = _polygon_shape(_place(square * max(half - border, 0.5), c, angle), size)
    return outer & ~inner, None  # a polygon with a hole: RLE only


def _ring(rng: np.random.Generator, c: _Point, r: float, thin: bool, size: _Size) -> _ShapeMask:
    """An elliptic annulus, tested analytically at pixel centres."""
    width = r * rng.uniform(0.25, 0.45) if not thin else rng.uniform(1.0, 2.0)
    minor, angle = r * rng.uniform(0.75, 1.0), rng.uniform(0, math.pi)
    ys, xs = np.mgrid[0:size[0], 0:size[1]].astype(np.float64) + 0.5
    dx, dy = xs - c[0], ys - c[1]
    u = math.cos(angle) * dx + math.sin(angle) * dy
    v = -math.sin(angle) * dx + math.cos(angle) * dy
    inner_r, inner_minor = max(r - width, 0.1), max(minor - width, 0.1)
    inside_inner = (u / inner_r) ** 2 + (v / inner_minor) ** 2 < 1.0
    return ((u / r) ** 2 + (v / minor) ** 2 <= 1.0) & ~inside_inner, None


_SHAPES = {3: _triangle, 7: _square_frame, 12: _ellipse, 18: _ring, 25: _star, 31: _cross}


# --- Colours and textures -------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1], ``(H, W)``: a coarse random grid, bilinearly upsampled."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR), np.float64)


def _linear_ramp(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A linear ramp in a random direction, ``(H, W)``, spanning [-1, 1] over the image."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    angle = rng.uniform(0, 2 * math.pi)
    proj = math.cos(angle) * (xs - w / 2) + math.sin(angle) * (ys - h / 2)
    return proj / max(np.abs(proj).max(), 1e-6)


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured background ``(H, W, 3)`` float and its base colour ``(3,)``."""
    base = rng.uniform(40, 215, 3)
    image = base + _linear_ramp(rng, h, w)[..., None] * rng.uniform(-_BG_GRADIENT, _BG_GRADIENT, 3)
    image += _smooth_noise(rng, h, w, 6)[..., None] * rng.uniform(-_BG_BLOTCH, _BG_BLOTCH, 3)
    image += (rng.random((h, w, 3), dtype=np.float32) * 2.0 - 1.0) * _BG_NOISE
    return image, base


def _far_channel_value(rng: np.random.Generator, base_value: float, side: int) -> float:
    """A channel value at least _COLOUR_MARGIN above (side=+1) or below (side=-1) ``base_value``."""
    if side > 0:
        return rng.uniform(base_value + _COLOUR_MARGIN, 255.0)
    return rng.uniform(0.0, base_value - _COLOUR_MARGIN)


def _colour_pair(rng: np.random.Generator, base: np.ndarray,
                 used: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two colours far from the background on a shared channel and side (see _COLOUR_MARGIN).

    Retries a few times to keep the first colour away from colours already in the image, so
    touching objects stay distinguishable.
    """
    for _ in range(20):
        channel = int(rng.integers(3))
        sides = [s for s in (1, -1) if 0 <= base[channel] + s * _COLOUR_MARGIN <= 255]
        side = sides[int(rng.integers(len(sides)))]
        first = rng.uniform(0, 255, 3)
        first[channel] = _far_channel_value(rng, base[channel], side)
        if all(np.abs(first - other).max() >= 60 for other in used):
            break
    second = np.clip(first + rng.uniform(-100, 100, 3), 0, 255)
    second[channel] = _far_channel_value(rng, base[channel], side)
    return first, second


def _texture(rng: np.random.Generator, first: np.ndarray, second: np.ndarray, mask: np.ndarray,
             cx: float, cy: float, r: float) -> np.ndarray:
    """Colours ``(K, 3)`` of the K pixels of ``mask`` (row-major order): a blend of the two colours
    by a random texture (solid, stripes, gradient or blotches), plus pixel noise."""
    rows, cols = np.nonzero(mask)
    kind = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
    if kind in ("stripes", "gradient"):
        angle = rng.uniform(0, 2 * math.pi)
        u = math.cos(angle) * (cols + 0.5 - cx) + math.sin(angle) * (rows + 0.5 - cy)
    if kind == "solid":
        blend = np.zeros(rows.shape)
    elif kind == "stripes":
        blend = (np.floor(u / rng.uniform(2.0, 5.0)) % 2).astype(np.float64)
    elif kind == "gradient":
        blend = np.clip((u + r) / (2 * r), 0.0, 1.0)
    else:  # blotches
        noise = _smooth_noise(rng, *mask.shape, int(rng.integers(4, 10)))
        blend = (noise[rows, cols] + 1.0) / 2.0
    fill = first + blend[:, None] * (second - first)
    return fill + rng.uniform(-_OBJECT_NOISE, _OBJECT_NOISE, fill.shape)


# --- Composition of one image ---------------------------------------------------------------------


def _object_centres(rng: np.random.Generator, count: int, spec: _Difficulty, h: int,
                    w: int) -> np.ndarray:
    """``(count, 2)`` object centres (x, y): uniform, or around 1-3 cluster centres when hard."""
    if not spec.clustered:
        return np.stack([rng.uniform(0.1 * w, 0.9 * w, count),
                         rng.uniform(0.1 * h, 0.9 * h, count)], axis=1)
    clusters = np.stack([rng.uniform(0.2 * w, 0.8 * w, 3), rng.uniform(0.2 * h, 0.8 * h, 3)], 1)
    which = rng.integers(int(rng.integers(1, 4)), size=count)
    centres = clusters[which] + rng.normal(0.0, 0.12 * min(h, w), (count, 2))
    return np.clip(centres, [0.05 * w, 0.05 * h], [0.95 * w, 0.95 * h])


def _object_layers(rng: np.random.Generator, spec: _Difficulty, base: np.ndarray, h: int,
                   w: int) -> list[_Layer]:
    """Random objects, bottom first."""
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    side = min(h, w)
    layers, used = [], []
    for cx, cy in _object_centres(rng, count, spec, h, w):
        category_id = _CATEGORIES[int(rng.integers(len(_CATEGORIES)))][0]
        radius = rng.uniform(spec.min_size, spec.max_size) * side / 2
        mask, polygon = _SHAPES[category_id](rng, (cx, cy), radius, spec.thin, (h, w))
        first, second = _colour_pair(rng, base, used)
        used.append(first)
        fill = _texture(rng, first, second, mask, cx, cy, radius)
        layers.append(_Layer(category_id, mask, polygon, fill))
    return layers


def _crowd_layer(rng: np.random.Generator, base: np.ndarray, h: int, w: int) -> _Layer:
    """A cluster of 8-20 tiny discs in one colour, to be annotated as a single iscrowd region."""
    side = min(h, w)
    cx, cy = rng.uniform(0.25 * w, 0.75 * w), rng.uniform(0.25 * h, 0.75 * h)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(8, 21))):
        bx, by = rng.normal([cx, cy], 0.08 * side)
        mask |= (xs - bx) ** 2 + (ys - by) ** 2 <= rng.uniform(1.0, 2.5) ** 2
    first, _ = _colour_pair(rng, base, [])
    fill = first + rng.uniform(-_OBJECT_NOISE, _OBJECT_NOISE, (int(mask.sum()), 3))
    return _Layer(_CROWD_CATEGORY_ID, mask, None, fill, iscrowd=1)


def _visible_masks(layers: list[_Layer]) -> list[np.ndarray]:
    """Each layer's mask minus everything drawn above it."""
    covered, visible = np.zeros_like(layers[0].full_mask) if layers else None, []
    for layer in reversed(layers):
        visible.append(layer.full_mask & ~covered)
        covered = covered | layer.full_mask
    return visible[::-1]


def _drop_hidden(layers: list[_Layer]) -> list[_Layer]:
    """Remove, topmost first, layers whose visible part is too small, until all pass.

    Removing a layer only uncovers the layers below it, so the loop ends with every kept layer
    passing; removed layers are never drawn (no unannotated objects in the image).
    """
    while True:
        visible = _visible_masks(layers)
        failing = [i for i, (layer, vis) in enumerate(zip(layers, visible))
                   if vis.sum() < max(_MIN_VISIBLE_PIXELS,
                                      _MIN_VISIBLE_FRACTION * layer.full_mask.sum())]
        if not failing:
            return layers
        layers = layers[:failing[-1]] + layers[failing[-1] + 1:]


def _segmentation(layer: _Layer, visible: np.ndarray) -> list[list[float]] | dict:
    """Polygon when the visible part is the whole, in-image polygon; RLE otherwise."""
    if layer.iscrowd:
        return _uncompressed_rle(visible)
    if layer.polygon is not None and np.array_equal(visible, layer.full_mask):
        return [layer.polygon]
    return bitmap_to_rle(visible)


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of an ``(H, W)`` bool mask: run lengths in column-major order,
    starting with a (possibly empty) run of zeros, as COCO stores ``iscrowd`` regions."""
    flat = mask.T.reshape(-1).astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = ([0] if flat[0] else []) + [int(c) for c in np.diff(bounds)]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _tight_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` of a non-empty mask, continuous coordinates (x2 = last col + 1)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x0, y0 = int(cols[0]), int(rows[0])
    return [float(x0), float(y0), float(cols[-1] + 1 - x0), float(rows[-1] + 1 - y0)]


def _render(rng: np.random.Generator, spec: _Difficulty, h: int, w: int, negative: bool,
            crowd: bool) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one image: ``(H, W, 3)`` uint8 and its annotations (without ids)."""
    image, base = _background(rng, h, w)
    layers: list[_Layer] = []
    if not negative:
        layers = ([_crowd_layer(rng, base, h, w)] if crowd else []) + \
            _object_layers(rng, spec, base, h, w)
        layers = _drop_hidden(layers)
    annotations = []
    for layer, visible in zip(layers, _visible_masks(layers)):
        image[visible] = layer.fill[visible[layer.full_mask]]
        annotations.append({
            "category_id": layer.category_id,
            "segmentation": _segmentation(layer, visible),
            "area": float(visible.sum()),
            "bbox": _tight_bbox(visible),
            "iscrowd": layer.iscrowd,
        })
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), annotations


# --- Dataset writing ------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, candidates: list[int], fraction: float) -> set[int]:
    """About ``fraction`` of the candidates (at least one when there are 5 or more)."""
    if len(candidates) < 5:
        return set()
    count = max(1, int(round(fraction * len(candidates))))
    return {int(i) for i in rng.choice(candidates, size=count, replace=False)}


def _write_json(path: Path, data: dict) -> None:
    """Write atomically (temporary file, then rename) so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, path)


def _plan(num_images: int, val_fraction: float, seed: int,
          crowd: bool) -> tuple[dict[str, list[int]], set[int], set[int]]:
    """Image ids per split, and which ids are negatives and which hold a crowd region."""
    num_val = int(round(num_images * val_fraction))
    splits = {"train": list(range(1, num_images - num_val + 1)),
              "val": list(range(num_images - num_val + 1, num_images + 1))}
    rng = np.random.default_rng(seed)
    negatives = _pick(rng, splits["train"], _NEGATIVE_FRACTION) | \
        _pick(rng, splits["val"], _NEGATIVE_FRACTION)
    positives = [i for i in splits["train"] if i not in negatives]
    return splits, negatives, (_pick(rng, positives, _CROWD_FRACTION) if crowd else set())


def generate_synthetic_dataset(
    out_dir: str | Path,
    num_images: int = 200,
    seed: int = 0,
    image_size: int | tuple[int, int] = 128,
    val_fraction: float = 0.2,
    difficulty: str = "standard",
    progress: bool = False,
    crowd: bool = True,
) -> SyntheticDataset:
    """Draw a synthetic shapes dataset and write it in COCO format under ``out_dir``.

    Args:
        out_dir: root folder; ``train/``, ``val/`` and ``annotations/`` are created in it and
            existing files of the same names are overwritten (other files are left alone).
        num_images: total images; image ids are ``1..num_images``, the first go to train.
        seed: non-negative seed; the same arguments give identical JSON and PNG bytes.
        image_size: side, or ``(height, width)``, in pixels.
        val_fraction: share of the images in the validation split, in [0, 1).
        difficulty: ``"standard"``, ``"hard"`` or ``"crowded"`` (see the module docstring).
        progress: show a tqdm progress bar.
        crowd: add one ``iscrowd=1`` region to about 5% of the training images.

    Returns:
        The written paths and the category names and ids (in contiguous-label order).
    """
    h, w = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else image_size
    if difficulty not in _DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(_DIFFICULTIES)}, got {difficulty!r}")
    if not 0.0 <= val_fraction < 1.0 or num_images < 1 or seed < 0 or min(h, w) < 16:
        raise ValueError("need 0 <= val_fraction < 1, num_images >= 1, seed >= 0 and sides >= 16")
    spec, (h, w), root = _DIFFICULTIES[difficulty], (int(h), int(w)), Path(out_dir)
    splits, negatives, crowded = _plan(num_images, val_fraction, seed, crowd)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=num_images, desc="synthetic images", disable=not progress)
    next_ann_id = 1
    for split, image_ids in splits.items():
        images, annotations = _draw_split(root / split, image_ids, seed, spec, (h, w), negatives,
                                          crowded, next_ann_id, bar)
        next_ann_id += len(annotations)
        _write_json(root / "annotations" / f"{split}.json",
                    _coco_document(images, annotations, seed, difficulty))
    bar.close()
    return SyntheticDataset(
        train_images=root / "train", val_images=root / "val",
        train_annotations=root / "annotations" / "train.json",
        val_annotations=root / "annotations" / "val.json",
        category_names=tuple(synthetic_category_names()),
        category_ids=tuple(cid for cid, _ in _CATEGORIES),
    )


def _draw_split(image_dir: Path, image_ids: list[int], seed: int, spec: _Difficulty,
                size: tuple[int, int], negatives: set[int], crowded: set[int], first_ann_id: int,
                bar: tqdm) -> tuple[list[dict], list[dict]]:
    """Draw and save one split's images; return its COCO ``images`` and ``annotations`` lists."""
    image_dir.mkdir(parents=True, exist_ok=True)
    h, w = size
    images, annotations = [], []
    for image_id in image_ids:
        rng = np.random.default_rng([seed, image_id])  # per image: independent of num_images
        pixels, anns = _render(rng, spec, h, w, image_id in negatives, image_id in crowded)
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(image_dir / file_name, format="PNG",
                                      compress_level=1)  # noisy pixels: level 6 is 10x slower
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for ann in anns:
            annotations.append({"id": first_ann_id + len(annotations), "image_id": image_id, **ann})
        bar.update(1)
    return images, annotations


def _coco_document(images: list[dict], annotations: list[dict], seed: int,
                   difficulty: str) -> dict:
    info = {"description": f"instaseg synthetic shapes, {difficulty}, seed {seed}", "version": "1"}
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in _CATEGORIES]
    return {"info": info, "licenses": [], "images": images, "annotations": annotations,
            "categories": categories}
