"""Precision-recall curves as pycocotools accumulated them, kept for pictures and per-class tables.

Nothing here recomputes a curve: :func:`curves_from_cocoeval` copies slices of
``COCOeval.eval["precision"]``, ``["scores"]`` and ``["recall"]`` (after ``accumulate()``), so the
area under a saved curve is pycocotools' AP to the last bit.

Frames and conventions (those of ``COCOeval.accumulate``):

* ``T`` IoU thresholds (0.50:0.05:0.95), ``R`` recall thresholds (COCO's 101 points 0:0.01:1),
  ``K`` categories in the order of ``category_ids`` (contiguous label ``k`` is ``category_ids[k]``
  when the evaluator's ids are sorted, as instaseg's are).
* Only the area range "all" and the largest maxDets are kept: what ``AP`` and ``AP50`` use.
* ``precision[t, r, k]`` is the interpolated precision (the best precision at recall >=
  ``recall_thresholds[r]``); ``-1`` where category ``k`` has no ground truth in the evaluated images,
  ``0`` at recall thresholds the detections never reach.
* ``scores[t, r, k]`` is the score of the detection at which recall first reaches
  ``recall_thresholds[r]`` (``0`` where it is never reached, ``-1`` where there is no ground truth).
* ``recall[t, k]`` is the recall reached with every detection (``-1`` without ground truth).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PRCurves", "curves_from_cocoeval", "save_curves", "load_curves", "class_ap", "mean_ap",
           "precision_at_recall", "confidence_curves"]


@dataclass(frozen=True)
class PRCurves:
    """COCOeval's accumulated arrays of one iou type (area "all", largest maxDets)."""

    iou_type: str  # "bbox" or "segm"
    precision: np.ndarray  # (T, R, K) float64 interpolated precision; -1 where class k has no gt
    scores: np.ndarray  # (T, R, K) float64 score where recall reaches recall_thresholds[r]
    recall: np.ndarray  # (T, K) float64 recall with every detection; -1 where no gt
    iou_thresholds: np.ndarray  # (T,) float64
    recall_thresholds: np.ndarray  # (R,) float64
    category_ids: np.ndarray  # (K,) int64 dataset category ids
    category_names: tuple[str, ...]  # (K,)
    gt_instances: np.ndarray  # (K,) int64 non-crowd ground-truth instances in the evaluated images
    gt_images: np.ndarray  # (K,) int64 evaluated images holding at least one such instance
    num_images: int  # evaluated images
    max_dets: int  # the detections per image these curves allowed

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def iou_index(self, iou: float) -> int:
        """Index of the IoU threshold closest to ``iou`` (e.g. 0.5)."""
        return int(np.argmin(np.abs(self.iou_thresholds - iou)))


def curves_from_cocoeval(coco_eval: Any, coco_gt: Any, iou_type: str) -> PRCurves:
    """The arrays of an accumulated ``COCOeval`` (after ``evaluate()`` and ``accumulate()``).

    ``coco_gt`` is the ground truth's ``COCO`` object: class names and the ground-truth counts
    of the evaluated images come from it.
    """
    p = coco_eval.params
    area = list(p.areaRngLbl).index("all")
    image_ids = set(p.imgIds)
    category_ids = np.asarray(p.catIds, dtype=np.int64)
    label_of = {c: k for k, c in enumerate(category_ids.tolist())}
    instances = np.zeros(len(category_ids), dtype=np.int64)
    holding: list[set[int]] = [set() for _ in label_of]
    for image_id in image_ids:  # one pass over the evaluated images' annotations
        for ann in coco_gt.imgToAnns.get(image_id, []):
            k = label_of.get(ann["category_id"])
            if k is not None and not ann.get("iscrowd", 0):
                instances[k] += 1
                holding[k].add(image_id)
    images = np.array([len(h) for h in holding], dtype=np.int64)
    names = tuple(str(coco_gt.cats[c].get("name", c)) for c in category_ids.tolist())
    return PRCurves(
        iou_type=iou_type,
        precision=np.array(coco_eval.eval["precision"][:, :, :, area, -1], dtype=np.float64),
        scores=np.array(coco_eval.eval["scores"][:, :, :, area, -1], dtype=np.float64),
        recall=np.array(coco_eval.eval["recall"][:, :, area, -1], dtype=np.float64),
        iou_thresholds=np.array(p.iouThrs, dtype=np.float64),
        recall_thresholds=np.array(p.recThrs, dtype=np.float64),
        category_ids=category_ids, category_names=names, gt_instances=instances, gt_images=images,
        num_images=len(image_ids), max_dets=int(p.maxDets[-1]),
    )


def save_curves(curves: PRCurves, path: str | Path) -> Path:
    """Write ``curves`` as an uncompressed ``.npz`` (one array per field)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez(handle, iou_type=np.array(curves.iou_type), precision=curves.precision, scores=curves.scores,
                 recall=curves.recall, iou_thresholds=curves.iou_thresholds,
                 recall_thresholds=curves.recall_thresholds, category_ids=curves.category_ids,
                 category_names=np.array(curves.category_names, dtype=str), gt_instances=curves.gt_instances,
                 gt_images=curves.gt_images, num_images=np.array(curves.num_images),
                 max_dets=np.array(curves.max_dets))
    return path


def load_curves(path: str | Path) -> PRCurves:
    """The :class:`PRCurves` :func:`save_curves` wrote."""
    with np.load(path, allow_pickle=False) as data:
        return PRCurves(
            iou_type=str(data["iou_type"]), precision=data["precision"], scores=data["scores"], recall=data["recall"],
            iou_thresholds=data["iou_thresholds"], recall_thresholds=data["recall_thresholds"],
            category_ids=data["category_ids"], category_names=tuple(str(n) for n in data["category_names"]),
            gt_instances=data["gt_instances"], gt_images=data["gt_images"], num_images=int(data["num_images"]),
            max_dets=int(data["max_dets"]),
        )


def _mean_valid(values: np.ndarray, axis: tuple[int, ...] | int) -> np.ndarray:
    """Mean over entries > -1 (pycocotools' "no ground truth") along ``axis``; NaN where none is valid."""
    valid = values > -1
    count = valid.sum(axis=axis)
    total = np.where(valid, values, 0.0).sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _precision_slice(curves: PRCurves, iou: float | None) -> np.ndarray:
    """(T', R, K): every IoU threshold (``iou=None``) or the one closest to ``iou``."""
    return curves.precision if iou is None else curves.precision[curves.iou_index(iou)][None]


def class_ap(curves: PRCurves, iou: float | None = None) -> np.ndarray:
    """(K,) AP of each class: at IoU ``iou`` (e.g. 0.5) or averaged over 0.50:0.95 (``None``);
    NaN where the class has no ground truth."""
    return _mean_valid(_precision_slice(curves, iou), axis=(0, 1))


def mean_ap(curves: PRCurves, iou: float | None = None) -> float:
    """The AP over classes as pycocotools' summary computes it: the mean of the valid entries."""
    values = _precision_slice(curves, iou)
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def precision_at_recall(curves: PRCurves, iou: float | None = None) -> np.ndarray:
    """(R, K) precision at each recall threshold, at IoU ``iou`` or averaged over the IoU thresholds
    (``None``); NaN for classes without ground truth. The mean of column ``k`` is ``class_ap(k)``."""
    return _mean_valid(_precision_slice(curves, iou), axis=0)


def confidence_curves(curves: PRCurves, iou: float = 0.5,
                      grid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall of each class against the score threshold, read off the 101 points.

    At a score threshold ``c`` the kept detections reach the largest recall threshold whose
    ``scores`` entry is ``>= c``; precision is COCO's interpolated precision there.

    Returns:
        ``grid (S,)`` score thresholds (default 0:0.01:1), ``precision (S, K)`` (NaN where no
        detection scores ``>= c`` or the class has no ground truth) and ``recall (S, K)`` (0 where
        none scores ``>= c``; NaN without ground truth).
    """
    grid = np.linspace(0.0, 1.0, 101) if grid is None else np.asarray(grid, dtype=np.float64)
    t = curves.iou_index(iou)
    precision = np.full((len(grid), curves.num_classes), np.nan)
    recall = np.full((len(grid), curves.num_classes), np.nan)
    for k in range(curves.num_classes):
        if curves.recall[t, k] < 0:
            continue
        reached = curves.recall_thresholds <= curves.recall[t, k]
        scores = np.where(reached, curves.scores[t, :, k], -np.inf)
        # scores fall as recall rises: the last recall point still scoring >= c is where c stops
        last = np.array([np.nonzero(scores >= c)[0][-1] if (scores >= c).any() else -1 for c in grid])
        hit = last >= 0
        recall[:, k] = np.where(hit, curves.recall_thresholds[np.maximum(last, 0)], 0.0)
        precision[:, k] = np.where(hit, curves.precision[t, np.maximum(last, 0), k], np.nan)
    return grid, precision, recall
