"""COCO results made by anything: which fields they carry, and completing them as pycocotools'
``COCO.loadRes`` does before COCOeval scores them.

A result is a dict with ``image_id``, ``category_id``, ``score`` and at least one of ``bbox``
``[x, y, w, h]`` (absolute pixels of the original image), ``segmentation`` and ``keypoints`` (a flat
``[x1, y1, s1, ..., xK, yK, sK]`` list of pixel indices, as in COCO keypoint files). The rules:

* ``bbox``, ``segmentation`` and ``keypoints`` are each in every result or in none. The first result that differs
  from result 0 is named in the error (``loadRes`` decides from result 0 alone, then fails with a
  ``KeyError`` or silently fills in the rest).
* Masks only (e.g. cocoapi's ``instances_val2014_fakesegm100_results.json``): the box of a result is
  ``pycocotools.mask.toBbox`` of its mask, as ``loadRes`` does; box AP then sizes objects
  (small / medium / large) by that box's area (``loadRes`` uses the mask's area there), so a
  masks-only file scores exactly as the same file with those boxes written in.
* Boxes only: box AP alone; mask AP is skipped.
* Keypoints: keypoint (OKS) AP beside the others, when the ground truth declares keypoints
  (:mod:`instaseg.evaluation.keypoint_eval`). Keypoints only (as bottom-up pose estimators write
  them): keypoint AP alone; box AP is skipped (``loadRes`` would score the keypoints' extent as boxes).
* ``segmentation`` is compressed RLE (``counts`` a str, ``size`` the image's ``[h, w]``),
  uncompressed RLE (``counts`` a list of run lengths, column-major, zeros first) or polygons (a list
  of flat ``[x0, y0, x1, y1, ...]`` lists in absolute pixels). The last two are rasterized at the
  image's size, as pycocotools' ``annToRLE`` does for COCOeval. (``loadRes`` accepts them only
  beside a ``bbox``; without one, the box here comes from the rasterized mask.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pycocotools.mask as mask_util

__all__ = ["ResultFields", "result_fields", "complete_results"]

REQUIRED_KEYS = ("image_id", "category_id", "score")
GEOMETRY_KEYS = ("bbox", "segmentation", "keypoints")  # what a result is scored by: at least one


@dataclass(frozen=True)
class ResultFields:
    """Which optional fields a list of COCO results carries (each in every result or in none)."""

    has_bbox: bool
    has_segmentation: bool
    count: int  # number of results
    has_keypoints: bool = False

    @property
    def iou_types(self) -> tuple[str, ...]:
        """What the results can be scored for: ``bbox`` when they have boxes or masks (from the
        masks when there is no ``bbox``), ``segm`` when they have masks, ``keypoints`` when they
        have keypoints (scored only against ground truth that declares keypoints). Empty results:
        ``bbox`` alone."""
        types = ("bbox",) if self.has_bbox or self.has_segmentation or self.count == 0 else ()
        return types + ("segm",) * self.has_segmentation + ("keypoints",) * self.has_keypoints

    @property
    def notes(self) -> dict[str, str]:
        """``{iou_type: note}`` for each type not scored from the results' own field."""
        if self.count == 0:
            return {"segm": "skipped (the results are empty)"}
        notes = {}
        if not self.has_bbox:
            notes["bbox"] = ("computed from the masks (results have no 'bbox')" if self.has_segmentation
                             else "skipped (results have neither 'bbox' nor 'segmentation')")
        if not self.has_segmentation:
            notes["segm"] = "skipped (results have no 'segmentation')"
        return notes


def result_fields(results: Sequence[Any]) -> ResultFields:
    """Check every result's keys and say which of ``bbox`` / ``segmentation`` / ``keypoints`` the
    results carry.

    Raises:
        TypeError: ``results`` is not a list.
        ValueError: naming the first result (0-based index) that is not a dict, lacks one of
            ``image_id`` / ``category_id`` / ``score``, has none of ``bbox``, ``segmentation`` and
            ``keypoints``, or has one of them where result 0 has not (or the other way round).
    """
    if not isinstance(results, list):
        raise TypeError(f"results must be a list of dicts, got {type(results).__name__}")
    for i, result in enumerate(results):
        if not isinstance(result, dict):
            raise ValueError(f"result {i} is not a dict but a {type(result).__name__}")
        missing = [key for key in REQUIRED_KEYS if key not in result]
        if missing:
            raise ValueError(f"result {i} has no {missing[0]!r}")
        if not any(key in result for key in GEOMETRY_KEYS):
            raise ValueError(f"result {i} has neither 'bbox' nor 'segmentation' (nor 'keypoints')")
        for key in GEOMETRY_KEYS:
            _check_like_first(results, i, key)
    first = results[0] if results else {}
    return ResultFields(has_bbox="bbox" in first, has_segmentation="segmentation" in first, count=len(results),
                        has_keypoints="keypoints" in first)


def _check_like_first(results: Sequence[dict], index: int, key: str) -> None:
    in_first, in_this = key in results[0], key in results[index]
    if in_first and not in_this:
        raise ValueError(f"result {index} has no {key!r} (result 0 has one: give every result one, or none)")
    if in_this and not in_first:
        raise ValueError(f"result {index} has a {key!r} but result 0 has none (give every result one, or none)")


def complete_results(
    results: Sequence[dict[str, Any]], image_sizes: Mapping[int, tuple[int, int]]
) -> list[dict[str, Any]]:
    """Shallow copies of the results, shaped as COCOeval needs them.

    Args:
        results: COCO results (module docstring), their image ids present in ``image_sizes``.
            Results without masks come back as plain copies.
        image_sizes: ``{image_id: (height, width)}`` of the ground-truth images.

    Returns:
        The results with every ``segmentation`` as compressed RLE (``counts`` a str) of the
        image's ``(height, width)`` and, when the results have no ``bbox``, ``bbox`` =
        ``toBbox`` of that mask ``[x, y, w, h]``: the pixels' extent, e.g. ``[0, 0, W, H]`` for
        a full mask (a mask without pixels gets ``[0, 0, 0, 0]``).

    Raises:
        ValueError: naming the first result whose segmentation is malformed or whose RLE size is
            not its image's.
    """
    fields = result_fields(list(results))
    if not fields.has_segmentation:
        return [dict(result) for result in results]
    completed = []
    for i, result in enumerate(results):
        height, width = image_sizes[result["image_id"]]
        rle = _to_compressed_rle(result["segmentation"], height, width, i, result["image_id"])
        completed.append({**result, "segmentation": rle})
    if not fields.has_bbox and completed:
        boxes = mask_util.toBbox([r["segmentation"] for r in completed]).tolist()  # (N, 4) x, y, w, h
        for result, box in zip(completed, boxes):
            result["bbox"] = box
    return completed


def _to_compressed_rle(segmentation: Any, height: int, width: int, index: int, image_id: int) -> dict[str, Any]:
    """One result's mask as compressed RLE of an (height, width) image, ``counts`` a str."""
    bad = f"result {index} has a bad 'segmentation'"
    if isinstance(segmentation, list):
        if not segmentation or not all(_is_polygon(p) for p in segmentation):
            raise ValueError(f"{bad}: polygons are a list of flat [x0, y0, x1, y1, ...] lists of 3 or more points")
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = list(segmentation["size"])
        if size != [height, width]:
            raise ValueError(
                f"mask of result {index} (image {image_id}) has size {size}, the image is {[height, width]} "
                "(masks must be in the original image frame)"
            )
        counts = segmentation["counts"]
        if isinstance(counts, str):
            return segmentation
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise ValueError(f"{bad}: uncompressed RLE counts must be run lengths adding up to h * w")
            rle = mask_util.frPyObjects(segmentation, height, width)
        elif isinstance(counts, bytes):
            rle = dict(segmentation)
        else:
            raise ValueError(f"{bad}: RLE counts must be a str or a list of ints")
    else:
        raise ValueError(f"{bad}: expected an RLE dict with 'size' and 'counts', or a list of polygons")
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _is_polygon(polygon: Any) -> bool:
    """A flat ``[x0, y0, x1, y1, ...]`` list of 3 or more points (4 numbers would read as a box)."""
    return (
        isinstance(polygon, list)
        and len(polygon) >= 6
        and len(polygon) % 2 == 0
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in polygon)
    )
