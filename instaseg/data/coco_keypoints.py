"""COCO keypoint annotations: the categories' keypoint names and skeleton, and per-annotation checks.

A COCO ``person_keypoints`` json adds, per category, ``keypoints`` (the K names, in order) and
``skeleton`` (pairs of 1-based keypoint indices), and per annotation ``keypoints`` (a flat list
``[x1, y1, v1, ..., xK, yK, vK]`` of integer pixel indices and COCO visibilities 0/1/2) and
``num_keypoints`` (the count of ``v > 0``).

Frame of the result: ``(K, 3)`` float32 ``(x, y, v)`` in continuous pixel coordinates, the frame of
boxes: a labelled keypoint at pixel index ``x`` becomes ``x + 0.5`` (Detectron2's ``load_coco_json``
does the same); an unlabelled one (``v == 0``) is ``(0, 0, 0)`` whatever the file says.

Checks (each message names what is wrong; the dataset adds the file and annotation id): 3K finite
numbers, visibilities in {0, 1, 2}, labelled keypoints inside the image (within ``tolerance``
pixels, then clipped to it, as boxes are). ``num_keypoints`` disagreeing with the labelled count is
not an error: pycocotools never checks it and training reads the visibilities; the dataset warns
once (:func:`num_keypoints_mismatch`), since COCO evaluation uses ``num_keypoints == 0`` to ignore
a ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instaseg.errors import DatasetError
from instaseg.structures.keypoints import keypoint_flip_map

__all__ = ["KeypointSchema", "parse_keypoint_schema", "parse_keypoints", "num_keypoints_mismatch"]


@dataclass(frozen=True)
class KeypointSchema:
    """The keypoints a dataset annotates: K names and the skeleton as 0-based index pairs."""

    names: tuple[str, ...]  # (K,) in annotation order
    skeleton: tuple[tuple[int, int], ...]  # 0-based pairs (a, b), a != b, both < K

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def flip_map(self) -> list[int]:
        """``keypoint_flip_map(names)``: the left/right swap a horizontal flip applies.

        Raises:
            ValueError: a ``left_`` name without its ``right_`` twin (or the reverse).
        """
        return keypoint_flip_map(self.names)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _category_schema(path: Path, category: dict) -> KeypointSchema | None:
    """One category's schema, None when it declares no (or an empty list of) keypoints."""
    names, cid = category.get("keypoints"), category.get("id")
    if names is None or names == []:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DatasetError(f"{path}: category id {cid} has 'keypoints' {names!r}: expected a list of names")
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: category id {cid} repeats keypoint names: {names}")
    skeleton = category.get("skeleton", [])
    pairs = []
    for pair in skeleton if isinstance(skeleton, list) else [skeleton]:
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and \
            all(isinstance(i, int) and not isinstance(i, bool) and 1 <= i <= len(names) for i in pair)
        if not ok or pair[0] == pair[1]:
            raise DatasetError(f"{path}: category id {cid} has skeleton entry {pair!r}: expected a pair of "
                               f"different 1-based keypoint indices in 1..{len(names)}")
        pairs.append((pair[0] - 1, pair[1] - 1))
    return KeypointSchema(tuple(names), tuple(pairs))


def parse_keypoint_schema(path: Path, categories: list) -> KeypointSchema | None:
    """The keypoint names and skeleton the categories declare; None when none declares keypoints.

    Categories without ``keypoints`` may sit beside keypoint categories (their annotations get
    unlabelled keypoints); those that declare them must agree on names and skeleton, since one
    head predicts one set of K keypoints. Problems always stop (as for the category list).
    """
    found: dict[int, KeypointSchema] = {}
    for category in categories:
        schema = _category_schema(path, category)
        if schema is not None:
            found[category.get("id")] = schema
    if not found:
        return None
    (first_id, first), *others = found.items()
    for cid, schema in others:
        if schema != first:
            what = "keypoint names" if schema.names != first.names else "skeleton"
            raise DatasetError(f"{path}: categories {first_id} and {cid} declare different {what} "
                               f"({list(first.names) if what == 'keypoint names' else list(first.skeleton)} vs "
                               f"{list(schema.names) if what == 'keypoint names' else list(schema.skeleton)}); "
                               "one dataset needs one keypoint list")
    return first


def parse_keypoints(raw: Any, num_keypoints: int, height: int, width: int,
                    tolerance: float = 1.0) -> tuple[np.ndarray | None, str | None]:
    """An annotation's ``keypoints`` -> ``((K, 3) float32 in the continuous frame, None)`` or ``(None, problem)``.

    ``raw`` is the flat COCO list (None or missing: every keypoint unlabelled). A labelled point
    more than ``tolerance`` pixels outside the ``height x width`` image is a problem; within it, it is
    clipped to the image.
    """
    if raw is None:
        return np.zeros((num_keypoints, 3), np.float32), None
    if not isinstance(raw, list) or len(raw) != 3 * num_keypoints or not all(_is_number(v) for v in raw):
        count = len(raw) if isinstance(raw, list) else type(raw).__name__
        return None, (f"has 'keypoints' of {count} values: expected 3 x {num_keypoints} = {3 * num_keypoints} "
                      "finite numbers [x1, y1, v1, ...]")
    points = np.asarray(raw, np.float64).reshape(num_keypoints, 3)
    bad_v = [k for k, v in enumerate(points[:, 2]) if v not in (0, 1, 2)]
    if bad_v:
        return None, f"has keypoint {bad_v[0]} with visibility {raw[3 * bad_v[0] + 2]!r}: expected 0, 1 or 2"
    labelled = points[:, 2] > 0
    xy = points[:, :2] + 0.5  # integer pixel index -> pixel centre (module docstring)
    outside = labelled & ((xy[:, 0] < -tolerance) | (xy[:, 0] > width + tolerance) |
                          (xy[:, 1] < -tolerance) | (xy[:, 1] > height + tolerance))
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        return None, (f"has keypoint {k} at ({raw[3 * k]}, {raw[3 * k + 1]}) outside the image "
                      f"({width}x{height}, width x height)")
    xy = np.clip(xy, 0.0, [float(width), float(height)])
    result = np.concatenate([xy, points[:, 2:]], axis=1) * labelled[:, None]
    return result.astype(np.float32), None


def num_keypoints_mismatch(declared: Any, keypoints: np.ndarray) -> bool:
    """Whether an annotation's ``num_keypoints`` (when present) differs from its count of ``v > 0``."""
    return declared is not None and declared != int((keypoints[:, 2] > 0).sum())
