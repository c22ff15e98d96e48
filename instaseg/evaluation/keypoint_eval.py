"""COCO keypoint evaluation (OKS AP): the sigmas of a dataset's keypoints, keypoints as COCO
results, and the ground truth and results shaped as pycocotools' ``COCOeval(iouType="keypoints")``
reads them.

OKS, the object keypoint similarity (pycocotools ``COCOeval.computeOks``), plays the part of IoU::

    OKS(d, g) = mean over the keypoints k that g labels (v > 0) of
                exp(-dist_k^2 / (2 * area_g * (2 * sigma_k)^2))

``dist_k`` is the pixel distance of keypoint k of the detection d to that of the ground truth g,
``area_g`` g's ``area`` (its segment's area: the squared object scale). A ground truth that labels
no keypoint is ignored by the evaluation (``num_keypoints == 0``); a detection is matched to it (and
so neither a true nor a false positive) by the distance of its keypoints outside g's box grown by
one box size on every side, averaged over all K keypoints.

Sigmas, the per-keypoint spread in units of the object scale, come from the keypoint categories
(those whose ``keypoints`` list is not empty), by :func:`keypoint_sigmas`:

1. the category's own ``"sigmas"`` (K positive numbers; a COCO extension MMPose and others use);
2. else COCO's 17 person sigmas when its K names are COCO's person keypoint names, in order;
3. else :data:`DEFAULT_KEYPOINT_SIGMA` for every keypoint, with a warning.

pycocotools uses one sigma vector for every category, so keypoint categories that differ in K or in
sigmas are an error.

Frames: ``Instances.keypoints`` are continuous pixel coordinates (a keypoint at pixel index ``x``
is ``x + 0.5``: :mod:`instaseg.structures.keypoints`); COCO files (ground truth and results) hold
pixel indices, so results subtract 0.5 (Detectron2's ``instances_to_coco_json`` does the same).

Keypoint AP uses pycocotools' keypoint parameters: 20 detections per image
(:data:`KEYPOINT_MAX_DETS`) and the area ranges all / medium / large (no small: COCO does not
label the keypoints of people under 32^2 pixels), so its summary has no ``APs`` / ``ARs``.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from instaseg.structures.keypoints import COCO_PERSON_KEYPOINT_NAMES

__all__ = ["COCO_PERSON_SIGMAS", "DEFAULT_KEYPOINT_SIGMA", "KEYPOINT_MAX_DETS", "keypoint_category_ids",
           "keypoint_sigmas", "keypoints_to_coco", "keypoint_ground_truth", "keypoint_results_for_cocoeval",
           "check_keypoint_results"]

# pycocotools' Params.setKpParams (Ronchi & Perona 2017), in COCO_PERSON_KEYPOINT_NAMES order.
COCO_PERSON_SIGMAS: tuple[float, ...] = (
    0.026,
    0.025, 0.025,
    0.035, 0.035,
    0.079, 0.079,
    0.072, 0.072,
    0.062, 0.062,
    0.107, 0.107,
    0.087, 0.087,
    0.089, 0.089,
)  # fmt: skip
# Sigma of a keypoint nobody gave one: about the mean of COCO's 17 person sigmas (0.067), i.e. a
# body joint rather than a face point.
DEFAULT_KEYPOINT_SIGMA = 0.07
KEYPOINT_MAX_DETS = (20,)  # pycocotools' maxDets for keypoints


def _keypoint_names(category: Mapping[str, Any]) -> list | None:
    names = category.get("keypoints")
    return names if isinstance(names, list) and names else None


def keypoint_category_ids(categories: Sequence[Mapping[str, Any]]) -> list[int]:
    """Sorted ids of the categories that declare keypoints (a non-empty ``keypoints`` list)."""
    return sorted(int(c["id"]) for c in categories if _keypoint_names(c) is not None)


def _category_sigmas(category: Mapping[str, Any], names: list) -> tuple[np.ndarray, bool]:
    """``((K,) float64 sigmas, whether they are the default)`` of a category declaring K ``names``."""
    what = f"category {category.get('id')} ({category.get('name', '?')!r})"
    if "sigmas" in category:
        sigmas = category["sigmas"]
        if not (isinstance(sigmas, list) and len(sigmas) == len(names)
                and all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0
                        for s in sigmas)):
            raise ValueError(f"{what} has 'sigmas' {sigmas!r}: expected a list of {len(names)} positive numbers, "
                             f"one per keypoint name")
        return np.asarray(sigmas, dtype=np.float64), False
    if tuple(names) == COCO_PERSON_KEYPOINT_NAMES:
        return np.asarray(COCO_PERSON_SIGMAS, dtype=np.float64), False
    return np.full(len(names), DEFAULT_KEYPOINT_SIGMA, dtype=np.float64), True


def keypoint_sigmas(categories: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``(K,)`` float64 OKS sigmas of the keypoint categories (rules in the module docstring).

    Warns (``UserWarning``; Python shows one message once) when a category falls back to
    :data:`DEFAULT_KEYPOINT_SIGMA`, saying how to set its own.

    Raises:
        ValueError: no category declares keypoints; a category's ``sigmas`` is not K positive
            numbers; keypoint categories that differ in K or in sigmas.
    """
    found = [(c, *_category_sigmas(c, names)) for c in categories if (names := _keypoint_names(c)) is not None]
    if not found:
        raise ValueError("keypoint evaluation needs a category that declares keypoint names ('keypoints')")
    first, sigmas, _ = found[0]
    for category, other, _ in found[1:]:
        if other.shape != sigmas.shape or not np.array_equal(other, sigmas):
            raise ValueError(
                f"keypoint categories {first.get('id')} and {category.get('id')} have different OKS sigmas "
                f"({len(sigmas)} vs {len(other)} keypoints: {sigmas.tolist()} vs {other.tolist()}); COCO keypoint "
                "evaluation uses one sigma vector for all categories: give them the same 'sigmas'")
    defaulted = [c for c, _, default in found if default]
    if defaulted:
        ids = ", ".join(str(c.get("id")) for c in defaulted)
        warnings.warn(f"keypoint evaluation: category {ids} has no 'sigmas' and its keypoints are not COCO's person "
                      f"keypoints; OKS uses sigma {DEFAULT_KEYPOINT_SIGMA} for each of its {len(sigmas)} keypoints. "
                      "Set the category's \"sigmas\" (one per keypoint, in units of the object scale sqrt(area); "
                      "COCO's person sigmas run from 0.025 (eyes) to 0.107 (hips)) in the ground-truth json",
                      UserWarning, stacklevel=2)
    return sigmas


def keypoints_to_coco(keypoints: torch.Tensor) -> list[list[float]]:
    """``(N, K, 3)`` (x, y, score) in the continuous frame -> N flat ``[x1, y1, s1, ..., xK, yK, sK]``
    lists in COCO's pixel-index frame (x - 0.5, y - 0.5; the score column kept)."""
    points = keypoints.detach().to("cpu", torch.float64).clone()
    points[:, :, :2] -= 0.5
    return points.flatten(1).tolist()


def _ground_truth_annotation(ann: dict[str, Any], num_keypoints: int) -> dict[str, Any]:
    """A copy of a keypoint category's annotation with ``keypoints`` (all unlabelled when absent)
    and ``num_keypoints`` (the count of v > 0 when absent; pycocotools ignores ground truth with 0)."""
    raw = ann.get("keypoints")
    keypoints = [0] * (3 * num_keypoints) if raw is None else raw
    if not isinstance(keypoints, list) or len(keypoints) != 3 * num_keypoints:
        count = len(keypoints) if isinstance(keypoints, list) else type(keypoints).__name__
        raise ValueError(f"ground-truth annotation {ann.get('id')} has 'keypoints' of {count} values: "
                         f"expected 3 x {num_keypoints}")
    labelled = sum(v > 0 for v in keypoints[2::3])
    return {**ann, "keypoints": keypoints, "num_keypoints": ann.get("num_keypoints", labelled)}


def keypoint_ground_truth(coco_gt: COCO, num_keypoints: int) -> COCO:
    """The ground truth of the keypoint categories as pycocotools' keypoint evaluation reads it:
    every annotation with ``keypoints`` and ``num_keypoints`` (see :func:`_ground_truth_annotation`).

    Raises:
        ValueError: an annotation of a keypoint category whose keypoints are not 3 x ``num_keypoints`` values.
    """
    categories = coco_gt.dataset.get("categories", [])
    wanted = set(keypoint_category_ids(categories))
    coco = COCO()
    coco.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": list(categories),
        "annotations": [_ground_truth_annotation(a, num_keypoints)
                        for a in coco_gt.dataset.get("annotations", []) if a.get("category_id") in wanted],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def check_keypoint_results(results: Sequence[dict[str, Any]], category_ids: Sequence[int],
                           num_keypoints: int) -> None:
    """Raise ``ValueError`` naming the first result of a category in ``category_ids`` whose
    ``keypoints`` is not a flat list of 3 x ``num_keypoints`` finite numbers."""
    wanted = set(int(c) for c in category_ids)
    for i, r in enumerate(results):
        if r["category_id"] not in wanted:
            continue
        values = r.get("keypoints")
        if not (isinstance(values, list) and len(values) == 3 * num_keypoints
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            count = len(values) if isinstance(values, list) else type(values).__name__
            raise ValueError(f"result {i} has 'keypoints' of {count} values: expected 3 x {num_keypoints} finite "
                             "numbers [x1, y1, s1, ...] (pixel indices of the original image)")


def keypoint_results_for_cocoeval(results: Sequence[dict[str, Any]],
                                  category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The results of ``category_ids`` as pycocotools' ``loadRes`` shapes keypoint results: ``id``
    (1-based index in ``results``), the box ``[x0, y0, x1 - x0, y1 - y0]`` of the K keypoints and its
    area (which sorts an unmatched detection into medium / large), ranked by ``score``."""
    wanted = set(int(c) for c in category_ids)
    prepared = []
    for i, r in enumerate(results):
        if r["category_id"] not in wanted:
            continue
        x, y = r["keypoints"][0::3], r["keypoints"][1::3]
        x0, x1, y0, y1 = min(x), max(x), min(y), max(y)
        prepared.append({"id": i + 1, "image_id": r["image_id"], "category_id": r["category_id"], "iscrowd": 0,
                         "keypoints": r["keypoints"], "score": r["score"], "area": (x1 - x0) * (y1 - y0),
                         "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return prepared
