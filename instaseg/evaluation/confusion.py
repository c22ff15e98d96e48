"""Confusion matrix of detections against ground truth: which class each object was taken for.

Frames and conventions:

* ``counts`` is ``(C + 1, C + 1)``: **rows are the ground truth**, columns the prediction, index
  ``C`` is "background". ``counts[i, j]`` (``i, j < C``): objects of class ``i`` detected as class
  ``j``; ``counts[i, C]``: objects of class ``i`` missed; ``counts[C, j]``: detections of class
  ``j`` matching no object (false positives). ``counts[C, C]`` is always 0.
* Only detections scoring ``>= score_thresh`` take part (the matrix is a picture of the model at
  one operating point, unlike AP which sweeps every score).
* Matching is class-agnostic (a class confusion must be able to match) and greedy by IoU: pairs
  with IoU ``>= iou_thresh`` are taken in decreasing IoU, each detection and object at most once.
* Crowd regions (``iscrowd=1``) are not objects: a detection left unmatched that lies mostly in one
  (pycocotools' crowd IoU, intersection over the detection's area, ``>= iou_thresh``) is not
  counted, as COCO's evaluation ignores it.
* IoU is pycocotools' (``mask.iou``): of the masks (``iou_type="segm"``) or of the boxes.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util

from instaseg.evaluation.coco_eval import _load_gt  # the one ground-truth loader of every evaluation

__all__ = ["ConfusionMatrix", "match_confusion", "confusion_from_coco", "save_confusion", "load_confusion"]


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts of ground-truth class (rows) against predicted class (columns), background last."""

    counts: np.ndarray  # (C + 1, C + 1) int64
    class_names: tuple[str, ...]  # (C,)
    score_thresh: float
    iou_thresh: float
    iou_type: str  # "segm" (mask IoU) or "bbox" (box IoU)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalized(self) -> np.ndarray:
        """(C + 1, C + 1) float: each row divided by its sum (what became of the objects of class
        ``i``; the background row: how the false positives split by class); 0 in empty rows."""
        totals = self.counts.sum(axis=1, keepdims=True)
        return self.counts / np.maximum(totals, 1)


def match_confusion(iou: np.ndarray, pred_labels: np.ndarray, gt_labels: np.ndarray, num_classes: int,
                    iou_thresh: float, pred_ignored: np.ndarray | None = None) -> np.ndarray:
    """(C + 1, C + 1) int64 counts of one image (rows ground truth, columns prediction).

    Args:
        iou: ``(P, G)`` IoU of each detection with each object.
        pred_labels: ``(P,)`` ints in ``[0, C)``; gt_labels: ``(G,)`` ints in ``[0, C)``.
        num_classes: ``C`` (background not counted).
        iou_thresh: a pair matches when its IoU is at least this.
        pred_ignored: ``(P,)`` bool, detections not to count as false positives when unmatched
            (those on crowd regions).
    """
    counts = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    num_pred, num_gt = len(pred_labels), len(gt_labels)
    iou = np.asarray(iou, dtype=np.float64).reshape(num_pred, num_gt)
    pred_used, gt_used = np.zeros(num_pred, bool), np.zeros(num_gt, bool)
    pairs = np.argwhere(iou >= iou_thresh)
    order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")
    for p, g in pairs[order]:
        if not pred_used[p] and not gt_used[g]:
            pred_used[p] = gt_used[g] = True
            counts[gt_labels[g], pred_labels[p]] += 1
    for g in np.nonzero(~gt_used)[0]:
        counts[gt_labels[g], num_classes] += 1
    ignored = np.zeros(num_pred, bool) if pred_ignored is None else np.asarray(pred_ignored, bool)
    for p in np.nonzero(~pred_used & ~ignored)[0]:
        counts[num_classes, pred_labels[p]] += 1
    return counts


def _pairwise_iou(dets: list[Any], gts: list[Any], crowd: Sequence[int]) -> np.ndarray:
    """(len(dets), len(gts)) pycocotools IoU (crowd columns: intersection over the detection's area)."""
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    return np.asarray(mask_util.iou(dets, gts, list(crowd)), dtype=np.float64).reshape(len(dets), len(gts))


def _geometry(item: dict[str, Any], iou_type: str, coco_gt: Any, is_gt: bool) -> Any:
    if iou_type == "bbox":
        return list(item["bbox"])
    return coco_gt.annToRLE(item) if is_gt else item["segmentation"]


def confusion_from_coco(gt: Any, results: list[dict[str, Any]], category_ids: Sequence[int] | None = None,
                        score_thresh: float = 0.5, iou_thresh: float = 0.5, iou_type: str = "segm",
                        image_ids: Sequence[int] | None = None) -> ConfusionMatrix:
    """The confusion matrix of COCO results against COCO ground truth.

    Args:
        gt: COCO ground truth (json path, dict or pycocotools ``COCO``).
        results: COCO result dicts (``category_id`` the dataset's ids; masks as compressed RLE of
            the image's size for ``"segm"``, as :class:`~instaseg.evaluation.COCOEvaluator` keeps them).
        category_ids: dataset id of each class, in label order (default: the sorted ids of ``gt``).
        score_thresh: detections scoring below this are left out.
        iou_thresh: the IoU at which a detection matches an object.
        iou_type: ``"segm"`` (mask IoU) or ``"bbox"`` (box IoU).
        image_ids: the images to count (default: every image of ``gt``).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    coco_gt = _load_gt(gt)
    category_ids = sorted(coco_gt.getCatIds()) if category_ids is None else list(category_ids)
    label_of = {int(c): k for k, c in enumerate(category_ids)}
    num_classes = len(category_ids)
    dets_by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r["score"] >= score_thresh and int(r["category_id"]) in label_of:
            dets_by_image[int(r["image_id"])].append(r)
    counts = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for image_id in (coco_gt.getImgIds() if image_ids is None else image_ids):
        anns = [a for a in coco_gt.imgToAnns.get(int(image_id), []) if int(a["category_id"]) in label_of]
        objects = [a for a in anns if not a.get("iscrowd", 0)]
        crowds = [a for a in anns if a.get("iscrowd", 0)]
        dets = dets_by_image.get(int(image_id), [])
        geoms = [_geometry(d, iou_type, coco_gt, False) for d in dets]
        iou = _pairwise_iou(geoms, [_geometry(a, iou_type, coco_gt, True) for a in objects], [0] * len(objects))
        on_crowd = _pairwise_iou(geoms, [_geometry(a, iou_type, coco_gt, True) for a in crowds], [1] * len(crowds))
        counts += match_confusion(
            iou, np.array([label_of[int(d["category_id"])] for d in dets], dtype=np.int64),
            np.array([label_of[int(a["category_id"])] for a in objects], dtype=np.int64), num_classes, iou_thresh,
            pred_ignored=(on_crowd >= iou_thresh).any(axis=1) if crowds else None,
        )
    names = tuple(str(coco_gt.cats[c].get("name", c)) for c in category_ids)
    return ConfusionMatrix(counts, names, float(score_thresh), float(iou_thresh), iou_type)


def save_confusion(matrix: ConfusionMatrix, path: str | Path) -> Path:
    """Write the matrix as json (counts as nested lists), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {"rows": "ground truth", "columns": "prediction", "class_names": list(matrix.class_names),
            "score_thresh": matrix.score_thresh, "iou_thresh": matrix.iou_thresh, "iou_type": matrix.iou_type}
    rows = ",\n  ".join(json.dumps(row) for row in matrix.counts.tolist())  # one matrix row per line
    text = json.dumps(head, indent=1)[:-2] + f',\n "counts": [\n  {rows}\n ]\n}}\n'
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def load_confusion(path: str | Path) -> ConfusionMatrix:
    """The :class:`ConfusionMatrix` :func:`save_confusion` wrote."""
    data = json.loads(Path(path).read_text())
    return ConfusionMatrix(np.asarray(data["counts"], dtype=np.int64), tuple(data["class_names"]),
                           float(data["score_thresh"]), float(data["iou_thresh"]), str(data["iou_type"]))
