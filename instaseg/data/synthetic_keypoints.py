"""A synthetic keypoint dataset in COCO ``person_keypoints`` format: articulated stick figures.

``generate_keypoint_dataset`` draws a few stick figures per image on the textured background of
:mod:`instaseg.data.synthetic` and writes the same layout (``train/``, ``val/``,
``annotations/{train,val}.json``), with one category, ``figure`` (id 4), that declares
:data:`FIGURE_KEYPOINT_NAMES` (13 joints), :data:`FIGURE_SKELETON` and the OKS ``sigmas`` of keypoint
evaluation (:data:`FIGURE_KEYPOINT_SIGMAS`), so a keypoint model can learn on the CPU in minutes.

What the data looks like (and why):

- A figure faces the viewer: its ``left_`` limbs are on the image's right when it stands upright
  (as COCO's people facing the camera), and the whole body tilts by at most about 23 degrees, so
  left and right stay decidable and a horizontal flip swaps them (:func:`keypoint_flip_map`).
- Random pose (arm, forearm, thigh and shin angles), size (35%-70% of the shorter image side),
  position, limb thickness and colour; 1-3 figures per image (``max_figures``), about 5% negatives.
- The mask is the drawn figure: limbs are capsules (segments of half-width >= 1 px between joints),
  the head a disc. Later figures cover earlier ones; each annotation is the visible part, and a
  figure left with under 25% of its pixels is not drawn (as in the shapes dataset).
- Keypoints are COCO integer pixel indices ``(floor(x), floor(y))`` of the joints (the loader adds
  0.5): ``v = 2`` when that pixel shows the figure, ``v = 1`` when a later figure covers it,
  ``v = 0`` (with ``x = y = 0``) when the joint lies outside the image. The half-width >= 1 puts
  the pixel holding a joint on the figure's full mask, so every ``v = 2`` point lies on its
  annotation's mask. ``num_keypoints`` counts ``v > 0``.

- ``sigmas`` (keypoint AP, :mod:`instaseg.evaluation.keypoint_eval`): 0.05 for every joint. The joints
  are exact points, so the only label noise is the integer pixel; 0.05 is the smallest round value at
  which the true joint positions score OKS above 0.95 against their integer-pixel labels (measured:
  OKS >= 0.959 over 382 figures of 200 images of 128 px, seed 0; ``sqrt(area)`` 18-36 px). A model
  that finds the joints therefore reaches AP 1 at every OKS threshold, and one pixel of error at the
  median figure size costs about 0.07 OKS. COCO's person sigmas (0.025 for eyes to 0.107 for hips)
  are set for annotators' disagreement on real people and would be looser for the limbs. On smaller
  images (``sqrt(area)`` shrinks with the side) the integer pixel weighs more.

Each image has its own random stream seeded by ``(seed, image_id)``; the same arguments give
identical JSON and PNG bytes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from instaseg.data.synthetic import (
    SyntheticDataset,
    _background,
    _colour_pair,
    _drop_hidden,
    _Layer,
    _plan,
    _segmentation,
    _texture,
    _tight_bbox,
    _visible_masks,
    _write_json,
)

__all__ = ["FIGURE_KEYPOINT_NAMES", "FIGURE_KEYPOINT_SIGMAS", "FIGURE_SKELETON", "generate_keypoint_dataset"]

FIGURE_CATEGORY_ID = 4
FIGURE_KEYPOINT_NAMES: tuple[str, ...] = (
    "head", "neck",
    "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow",
    "left_hand", "right_hand",
    "hip",
    "left_knee", "right_knee",
    "left_foot", "right_foot",
)  # fmt: skip
# OKS sigma of each joint, in units of sqrt(area) (module docstring: why 0.05)
FIGURE_KEYPOINT_SIGMAS: tuple[float, ...] = (0.05,) * len(FIGURE_KEYPOINT_NAMES)
_J = {name: k for k, name in enumerate(FIGURE_KEYPOINT_NAMES)}
# 0-based limbs (the json stores them 1-based, as COCO does)
FIGURE_SKELETON: tuple[tuple[int, int], ...] = tuple((_J[a], _J[b]) for a, b in (
    ("head", "neck"), ("neck", "left_shoulder"), ("neck", "right_shoulder"),
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_hand"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_hand"), ("neck", "hip"),
    ("hip", "left_knee"), ("left_knee", "left_foot"), ("hip", "right_knee"), ("right_knee", "right_foot"),
))

_MAX_TILT = 0.4  # radians of whole-body tilt: left and right stay on their sides
# Segment lengths as fractions of the figure size S (head to feet is about 0.95 S).
_TORSO, _NECK_TO_HEAD, _SHOULDER, _UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.33, 0.15, 0.11, 0.17, 0.15, 0.23, 0.22
_HEAD_RADIUS = 0.08


def _limb(start: np.ndarray, length: float, angle: float, side: float, down: np.ndarray,
          right: np.ndarray) -> np.ndarray:
    """The end of a limb leaving ``start`` at ``angle`` from ``down``, turned towards ``side * right``."""
    return start + length * (math.cos(angle) * down + side * math.sin(angle) * right)


def _pose(rng: np.random.Generator, hip: np.ndarray, size: float) -> np.ndarray:
    """``(K, 2)`` joint positions (x, y) of a random pose with its hip at ``hip``."""
    tilt = rng.uniform(-_MAX_TILT, _MAX_TILT)
    up, right = np.array([math.sin(tilt), -math.cos(tilt)]), np.array([math.cos(tilt), math.sin(tilt)])
    joints = np.zeros((len(FIGURE_KEYPOINT_NAMES), 2))
    joints[_J["hip"]] = hip
    joints[_J["neck"]] = neck = hip + _TORSO * size * up
    joints[_J["head"]] = neck + _NECK_TO_HEAD * size * up
    for side, name in ((1.0, "left"), (-1.0, "right")):  # the figure's left is the image's right
        shoulder = neck + side * _SHOULDER * size * right
        arm = rng.uniform(0.2, 2.6)  # from hanging down to raised
        elbow = _limb(shoulder, _UPPER_ARM * size, arm, side, -up, right)
        hand = _limb(elbow, _FOREARM * size, arm + rng.uniform(-1.2, 1.2), side, -up, right)
        thigh = rng.uniform(0.05, 0.7)
        knee = _limb(hip, _THIGH * size, thigh, side, -up, right)
        foot = _limb(knee, _SHIN * size, thigh + rng.uniform(-0.6, 0.4), side, -up, right)
        for part, point in (("shoulder", shoulder), ("elbow", elbow), ("hand", hand), ("knee", knee),
                            ("foot", foot)):
            joints[_J[f"{name}_{part}"]] = point
    return joints


def _segment_distance(xs: np.ndarray, ys: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of the points ``(xs, ys)`` to the segment ``a``-``b``."""
    d = b - a
    t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    return np.hypot(xs - a[0] - t * d[0], ys - a[1] - t * d[1])


def _figure_mask(joints: np.ndarray, size: float, half_width: float, h: int, w: int) -> np.ndarray:
    """``(H, W)`` bool: the limbs as capsules of ``half_width`` and a head disc, tested at pixel centres."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    mask = np.hypot(xs - joints[_J["head"], 0], ys - joints[_J["head"], 1]) <= max(_HEAD_RADIUS * size, half_width)
    for a, b in FIGURE_SKELETON:
        mask |= _segment_distance(xs, ys, joints[a], joints[b]) <= half_width
    return mask


def _figures(rng: np.random.Generator, base: np.ndarray, h: int, w: int,
             max_figures: int) -> list[tuple[_Layer, np.ndarray]]:
    """1..``max_figures`` random figures, bottom first: their layer and ``(K, 2)`` joints."""
    side, used, figures = min(h, w), [], []
    for _ in range(int(rng.integers(1, max_figures + 1))):
        size = rng.uniform(0.35, 0.7) * side
        hip = np.array([rng.uniform(0.15 * w, 0.85 * w), rng.uniform(0.35 * h, 0.75 * h)])
        joints = _pose(rng, hip, size)
        half_width = max(1.0, rng.uniform(0.025, 0.045) * size)
        mask = _figure_mask(joints, size, half_width, h, w)
        if not mask.any():
            continue
        first, second = _colour_pair(rng, base, used)
        used.append(first)
        fill = _texture(rng, first, second, mask, float(hip[0]), float(hip[1]), size / 2)
        figures.append((_Layer(FIGURE_CATEGORY_ID, mask, None, fill), joints))
    return figures


def _coco_keypoints(joints: np.ndarray, visible: np.ndarray) -> list[int]:
    """Flat COCO ``[x, y, v] * K`` of ``joints (K, 2)``: integer pixel indices, v from ``visible (H, W)``."""
    h, w = visible.shape
    flat: list[int] = []
    for x, y in joints:
        col, row = math.floor(x), math.floor(y)
        if not (0 <= col < w and 0 <= row < h):
            flat += [0, 0, 0]
        else:
            flat += [col, row, 2 if visible[row, col] else 1]
    return flat


def _render_figures(rng: np.random.Generator, h: int, w: int, negative: bool,
                    max_figures: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Draw one image: ``(H, W, 3)`` uint8 and its annotations (without ids)."""
    image, base = _background(rng, h, w)
    figures = [] if negative else _figures(rng, base, h, w, max_figures)
    kept = {id(layer) for layer in _drop_hidden([layer for layer, _ in figures])}
    figures = [(layer, joints) for layer, joints in figures if id(layer) in kept]
    annotations = []
    for (layer, joints), visible in zip(figures, _visible_masks([layer for layer, _ in figures])):
        image[visible] = layer.fill[visible[layer.full_mask]]
        keypoints = _coco_keypoints(joints, visible)
        annotations.append({
            "category_id": layer.category_id, "segmentation": _segmentation(layer, visible),
            "area": float(visible.sum()), "bbox": _tight_bbox(visible), "iscrowd": 0,
            "keypoints": keypoints, "num_keypoints": sum(v > 0 for v in keypoints[2::3]),
        })
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), annotations


def _categories() -> list[dict[str, Any]]:
    return [{"id": FIGURE_CATEGORY_ID, "name": "figure", "supercategory": "figure",
             "keypoints": list(FIGURE_KEYPOINT_NAMES), "skeleton": [[a + 1, b + 1] for a, b in FIGURE_SKELETON],
             "sigmas": list(FIGURE_KEYPOINT_SIGMAS)}]


def generate_keypoint_dataset(
    out_dir: str | Path,
    num_images: int = 200,
    seed: int = 0,
    image_size: int | tuple[int, int] = 128,
    val_fraction: float = 0.2,
    max_figures: int = 3,
    progress: bool = False,
) -> SyntheticDataset:
    """Draw a stick-figure keypoint dataset and write it in COCO format under ``out_dir``.

    Args:
        out_dir: root folder; ``train/``, ``val/`` and ``annotations/`` are created in it and
            existing files of the same names are overwritten.
        num_images: total images; image ids ``1..num_images``, the first go to train.
        seed: non-negative seed; the same arguments give identical JSON and PNG bytes.
        image_size: side, or ``(height, width)``, in pixels (at least 16).
        val_fraction: share of the images in the validation split, in [0, 1).
        max_figures: at most this many figures per image (at least 1).
        progress: show a tqdm progress bar.

    Returns:
        The written paths and the category (``figure``); the keypoint names and skeleton are in the
        json and :data:`FIGURE_KEYPOINT_NAMES` / :data:`FIGURE_SKELETON`.
    """
    h, w = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else image_size
    if not 0.0 <= val_fraction < 1.0 or num_images < 1 or seed < 0 or min(h, w) < 16 or max_figures < 1:
        raise ValueError("need 0 <= val_fraction < 1, num_images >= 1, seed >= 0, sides >= 16, max_figures >= 1")
    h, w, root = int(h), int(w), Path(out_dir)
    splits, negatives, _ = _plan(num_images, val_fraction, seed, crowd=False)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    next_ann_id = 1
    with tqdm(total=num_images, desc="synthetic figures", disable=not progress) as bar:
        for split, image_ids in splits.items():
            (root / split).mkdir(parents=True, exist_ok=True)
            images, annotations = [], []
            for image_id in image_ids:
                rng = np.random.default_rng([seed, image_id])
                pixels, anns = _render_figures(rng, h, w, image_id in negatives, max_figures)
                file_name = f"{image_id:06d}.png"
                Image.fromarray(pixels).save(root / split / file_name, format="PNG", compress_level=1)
                images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
                annotations += [{"id": next_ann_id + i, "image_id": image_id, **a} for i, a in enumerate(anns)]
                next_ann_id += len(anns)
                bar.update(1)
            info = {"description": f"instaseg synthetic stick figures, seed {seed}", "version": "1"}
            _write_json(root / "annotations" / f"{split}.json",
                        {"info": info, "licenses": [], "images": images, "annotations": annotations,
                         "categories": _categories()})
    return SyntheticDataset(
        train_images=root / "train", val_images=root / "val",
        train_annotations=root / "annotations" / "train.json", val_annotations=root / "annotations" / "val.json",
        category_names=("figure",), category_ids=(FIGURE_CATEGORY_ID,),
    )
