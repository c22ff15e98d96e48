"""COCO box and mask AP of instaseg results, with pycocotools doing the matching.

Frames and conventions:

* Results are COCO result dicts: ``image_id``, ``category_id`` (the dataset's own id, not the
  contiguous label), ``bbox`` ``[x, y, w, h]`` in absolute pixels of the original image,
  ``score``, ``segmentation`` (compressed RLE whose ``counts`` is a ``str``) and, for MS R-CNN /
  YOLACT++, ``mask_score``. Results made elsewhere may lack ``bbox`` (boxes are then taken from
  the masks, as pycocotools' ``loadRes`` does) or ``segmentation`` (box AP only), and may hold
  polygons or uncompressed RLE: see :mod:`instaseg.evaluation.results_file`.
* Box AP ranks detections by ``score``; mask AP ranks them by ``mask_score`` when present (the
  MS R-CNN paper's point: the rescored mask confidence ranks masks, the class score ranks boxes).
* Mask AP sizes objects (small / medium / large) by mask area, box AP by box area, as the COCO
  reference does when each result type is loaded alone.
* Metrics are fractions in ``[0, 1]``. pycocotools reports ``-1`` where a bucket has no ground
  truth (e.g. APl on a dataset without large objects); here that becomes ``float("nan")`` so it
  cannot be averaged by mistake.
* ``AP`` uses the largest ``max_dets`` value (pycocotools' ``summarize`` hard-codes 100 for AP,
  which is wrong for dense datasets evaluated with e.g. ``(100, 300, 1000)``); the stats are
  read here from ``COCOeval.eval["precision"]`` and ``["recall"]``, not from ``summarize``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from instaseg.evaluation.curves import curves_from_cocoeval
from instaseg.evaluation.results_file import complete_results, result_fields
from instaseg.structures.instances import CroppedInstances, Instances
from instaseg.structures.mask_crops import MaskCrops

__all__ = [
    "COCOEvaluator",
    "evaluate_coco",
    "format_ap",
    "format_metrics_table",
    "format_per_category_table",
    "instances_to_coco_results",
]

IOU_TYPES = ("bbox", "segm")
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
AR_SIZE_KEYS = ("ARs", "ARm", "ARl")  # recall at the largest maxDets per object size


def summary_keys(values: dict[str, Any], every_max_dets: bool = False) -> list[str]:
    """The AP keys, then average recall: ``AR@<largest maxDets>`` (every ``AR@m`` with
    ``every_max_dets``) and ``ARs`` / ``ARm`` / ``ARl``, those of them that ``values`` has.

    Recall is the number that shows a detection cap: AP can look fine while AR@100 stays far below
    what a dataset of 300 objects per image needs.
    """
    at = sorted((k for k in values if k.startswith("AR@")), key=lambda k: int(k[3:]))
    return [*AP_KEYS, *(at if every_max_dets else at[-1:]), *(k for k in AR_SIZE_KEYS if k in values)]
# pycocotools' area range labels, in the order of ``params.areaRng`` (COCO: 32^2 and 96^2 px).
_AREA_LABELS = ("all", "small", "medium", "large")


# --------------------------------------------------------------------------------------------
# Instances -> COCO result dicts
# --------------------------------------------------------------------------------------------
def instances_to_coco_results(
    instances: Instances | CroppedInstances, image_id: int, category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """One COCO result dict per detection of one image.

    Args:
        instances: detections in the original image frame: boxes (N, 4) xyxy absolute pixels,
            scores (N,), labels (N,) contiguous in [0, len(category_ids)), masks (N, H, W) bool
            (float masks are thresholded at 0.5), optional mask_scores (N,); or CroppedInstances
            (sliced inference), whose RLEs are made from the crops without full-image masks.
        image_id: COCO id of the image.
        category_ids: dataset category id of each contiguous label (label k -> category_ids[k]).

    Returns:
        N dicts with ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] floats, ``score``,
        ``segmentation`` (compressed RLE, ``counts`` as str) and ``mask_score`` when present.
    """
    n = len(instances)
    if n == 0:
        return []
    instances = instances.to("cpu")
    labels = instances.labels.tolist()
    if min(labels) < 0 or max(labels) >= len(category_ids):
        raise ValueError(f"labels must lie in [0, {len(category_ids)}), got {sorted(set(labels))}")
    boxes = instances.boxes.detach().to(torch.float64)
    boxes_xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = instances.scores.detach().tolist()
    mask_scores = None if instances.mask_scores is None else instances.mask_scores.detach().tolist()
    rles = _encode_masks(instances.masks)
    results = []
    for i in range(n):
        result = {
            "image_id": int(image_id),
            "category_id": int(category_ids[labels[i]]),
            "bbox": boxes_xywh[i],
            "score": float(scores[i]),
            "segmentation": rles[i],
        }
        if mask_scores is not None:
            result["mask_score"] = float(mask_scores[i])
        results.append(result)
    return results


def _encode_masks(masks: torch.Tensor | MaskCrops) -> list[dict[str, Any]]:
    """(N, H, W) masks -> N compressed RLEs with str counts (JSON-serializable)."""
    if isinstance(masks, MaskCrops):
        return masks.to_rles()
    if masks.is_floating_point():
        masks = masks >= 0.5
    # pycocotools wants (H, W, N) uint8 in Fortran order (column-major RLE). Viewing the bools as
    # uint8 in numpy avoids one full copy (about 2x faster for 100 masks of 480x640).
    array = np.asfortranarray(masks.detach().cpu().bool().numpy().view(np.uint8).transpose(1, 2, 0))
    rles = mask_util.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


# --------------------------------------------------------------------------------------------
# Loading ground truth and results
# --------------------------------------------------------------------------------------------
def _load_gt(gt: str | Path | dict | COCO) -> COCO:
    """A COCO api object; a dict is deep-copied because pycocotools edits annotations in place."""
    if isinstance(gt, COCO):
        return gt
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt, (str, Path)):
            return COCO(str(gt))
        if isinstance(gt, dict):
            coco = COCO()
            coco.dataset = copy.deepcopy(gt)
            coco.createIndex()
            return coco
    raise TypeError(f"gt must be a path, a dict or a pycocotools COCO, got {type(gt).__name__}")


def _load_results(results: list[dict] | str | Path) -> list[dict[str, Any]]:
    if isinstance(results, (str, Path)):
        with open(results) as f:
            results = json.load(f)
    if not isinstance(results, list):
        raise TypeError(f"results must be a list of dicts or a json path, got {type(results).__name__}")
    return results


def _check_results(coco_gt: COCO, results: list[dict[str, Any]], iou_types: Sequence[str]) -> None:
    """Clear errors for the mistakes pycocotools reports badly or not at all."""
    if any(ann.get("id", 1) == 0 for ann in coco_gt.dataset.get("annotations", [])):
        # pycocotools marks "unmatched" with gt id 0, so a gt with id 0 could never be matched.
        raise ValueError("ground-truth annotation ids must be non-zero")
    fields = result_fields(results)  # every result has its keys, bbox / segmentation all or none
    bad_images = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if bad_images:
        raise ValueError(f"results refer to image ids not in the ground truth: {sorted(bad_images)[:10]} "
                         "(`instaseg predict` writes the dataset's ids when given --json DATASET_JSON)")
    bad_cats = {r["category_id"] for r in results} - set(coco_gt.getCatIds())
    if bad_cats:
        raise ValueError(
            f"results refer to category ids not in the ground truth: {sorted(bad_cats)[:10]} "
            "(map contiguous labels back with category_ids[label])"
        )
    for iou_type in iou_types:
        if iou_type not in IOU_TYPES:
            raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    if "segm" in iou_types and results and not fields.has_segmentation:
        raise ValueError("segm evaluation needs 'segmentation' in every result; result 0 has none")


def _complete_results(coco_gt: COCO, results: list[dict[str, Any]], iou_types: Sequence[str]) -> list[dict[str, Any]]:
    """Masks as compressed RLE of the image's size, and boxes from the masks where there are none;
    the masks are left alone when nothing needs them."""
    if "segm" not in iou_types and (not results or "bbox" in results[0]):
        return results
    images = {r["image_id"]: coco_gt.imgs[r["image_id"]] for r in results}
    image_sizes = {image_id: (image["height"], image["width"]) for image_id, image in images.items()}
    return complete_results(results, image_sizes)


def _results_for_iou_type(results: list[dict[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    """Shallow copies shaped as pycocotools' ``loadRes`` would shape them for one iou type."""
    prepared = []
    for i, r in enumerate(results):
        d = {"id": i + 1, "image_id": r["image_id"], "category_id": r["category_id"], "iscrowd": 0}
        if iou_type == "bbox":
            d["bbox"] = list(r["bbox"])
            d["area"] = float(r["bbox"][2]) * float(r["bbox"][3])
            d["score"] = r["score"]
        else:
            # mask_score ranks masks (MS R-CNN / YOLACT++); area from the mask, not the box.
            d["segmentation"] = r["segmentation"]
            d["area"] = float(mask_util.area(r["segmentation"]))
            d["score"] = r.get("mask_score", r["score"])
        prepared.append(d)
    return prepared


def _results_to_coco(coco_gt: COCO, results: list[dict[str, Any]], iou_type: str) -> COCO:
    """A COCO api object holding the results; unlike ``loadRes`` it accepts an empty list."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": _results_for_iou_type(results, iou_type),
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt.createIndex()
    return coco_dt


# --------------------------------------------------------------------------------------------
# Metrics from COCOeval arrays
# --------------------------------------------------------------------------------------------
def _mean_valid(values: np.ndarray) -> float:
    """Mean over entries > -1 (pycocotools' "no ground truth" marker); NaN when none is valid."""
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else float("nan")


def _summarize(coco_eval: COCOeval) -> dict[str, float]:
    """AP / AP50 / AP75 / APs / APm / APl and AR@m / ARs / ARm / ARl at the largest maxDets."""
    p = coco_eval.params
    precision = coco_eval.eval["precision"]  # (T iou thrs, R recall thrs, K cats, A areas, M maxDets)
    recall = coco_eval.eval["recall"]  # (T, K, A, M)
    area = {label: p.areaRngLbl.index(label) for label in _AREA_LABELS}
    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(p.iouThrs - 0.75)))
    m = len(p.maxDets) - 1
    metrics = {
        "AP": _mean_valid(precision[:, :, :, area["all"], m]),
        "AP50": _mean_valid(precision[t50, :, :, area["all"], m]),
        "AP75": _mean_valid(precision[t75, :, :, area["all"], m]),
        "APs": _mean_valid(precision[:, :, :, area["small"], m]),
        "APm": _mean_valid(precision[:, :, :, area["medium"], m]),
        "APl": _mean_valid(precision[:, :, :, area["large"], m]),
    }
    for j, max_det in enumerate(p.maxDets):
        metrics[f"AR@{max_det}"] = _mean_valid(recall[:, :, area["all"], j])
    for label, key in (("small", "ARs"), ("medium", "ARm"), ("large", "ARl")):
        metrics[key] = _mean_valid(recall[:, :, area[label], m])
    return metrics


def _per_category_ap(coco_eval: COCOeval, coco_gt: COCO) -> dict[str, float]:
    """AP (IoU 0.50:0.95, area all, largest maxDets) of each category, keyed by its name."""
    p = coco_eval.params
    precision = coco_eval.eval["precision"]
    out = {}
    for k, cat_id in enumerate(p.catIds):
        name = coco_gt.cats[cat_id].get("name", str(cat_id))
        if name in out:  # two categories with one name: keep both, told apart by id
            name = f"{name} ({cat_id})"
        out[name] = _mean_valid(precision[:, :, k, _AREA_LABELS.index("all"), -1])
    return out


def _run_cocoeval(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    iou_type: str,
    max_dets: Sequence[int],
    image_ids: Sequence[int] | None,
) -> COCOeval:
    coco_eval = COCOeval(coco_gt, _results_to_coco(coco_gt, results, iou_type), iou_type)
    coco_eval.params.maxDets = list(max_dets)
    if image_ids is not None:
        coco_eval.params.imgIds = sorted(set(int(i) for i in image_ids))
    coco_eval.evaluate()
    coco_eval.accumulate()
    return coco_eval


# --------------------------------------------------------------------------------------------
# Public evaluation entry point
# --------------------------------------------------------------------------------------------
def evaluate_coco(
    gt: str | Path | dict | COCO,
    results: list[dict] | str | Path,
    iou_types: Sequence[str] = IOU_TYPES,
    max_dets: Sequence[int] = (1, 10, 100),
    verbose: bool = True,
    per_category: bool = False,
    image_ids: Sequence[int] | None = None,
    curves: bool = False,
) -> dict[str, dict[str, Any]]:
    """COCO AP of ``results`` against the ground truth ``gt``.

    Args:
        gt: COCO ground truth: a json path, the dataset dict (deep-copied) or a ``COCO`` object.
            Annotations need ``id`` (non-zero), ``image_id``, ``category_id``, ``bbox``,
            ``area``, ``iscrowd`` and, for segm, ``segmentation``.
        results: COCO result dicts (see the module docstring) or a json file of them. An empty
            list is allowed (every AP is 0 where ground truth exists). Without ``bbox``, box AP
            scores ``toBbox`` of the masks (as pycocotools' ``loadRes``); polygon and
            uncompressed-RLE masks are rasterized at the image's size.
        iou_types: any of ``"bbox"``, ``"segm"``.
        max_dets: ascending detection caps per image and category (COCO: (1, 10, 100); dense
            datasets e.g. (100, 300, 1000)). AP and APs/m/l use the largest.
        verbose: print pycocotools' progress and the classic 12-line table per iou type;
            otherwise nothing is printed.
        per_category: also return ``"per_category": {category name: AP}`` per iou type.
        image_ids: evaluate only these images (default: every image of ``gt``). Results on
            other images are ignored.
        curves: also return ``"curves"``: the :class:`~instaseg.evaluation.curves.PRCurves`
            (pycocotools' accumulated precision, scores and recall) per iou type.

    Returns:
        ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR@<m>" per max_dets,
        "ARs", "ARm", "ARl"[, "per_category"]}}``, fractions in [0, 1]; NaN where a bucket has
        no ground truth (pycocotools' -1).

    Raises:
        TypeError: ``results`` is not a list.
        ValueError: results on images or categories absent from ``gt``, masks not of the
            image's size or malformed, a result without ``image_id`` / ``category_id`` /
            ``score``, ``bbox`` or ``segmentation`` in some results only (the first offending
            result is named), segm asked of results without masks, bad ``max_dets``.
    """
    max_dets = [int(m) for m in max_dets]
    if not max_dets or max_dets != sorted(max_dets) or max_dets[0] < 1:
        raise ValueError(f"max_dets must be ascending positive ints, got {max_dets}")
    out = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with out:
        coco_gt = _load_gt(gt)
        results = _load_results(results)
        _check_results(coco_gt, results, iou_types)
        results = _complete_results(coco_gt, results, iou_types)
        metrics: dict[str, dict[str, Any]] = {}
        for iou_type in iou_types:
            coco_eval = _run_cocoeval(coco_gt, results, iou_type, max_dets, image_ids)
            metrics[iou_type] = _summarize(coco_eval)
            if verbose:
                print(f"Evaluate annotation type *{iou_type}*")
                print(_classic_table(metrics[iou_type], max_dets))
            if per_category:
                metrics[iou_type]["per_category"] = _per_category_ap(coco_eval, coco_gt)
            if curves:
                metrics[iou_type]["curves"] = curves_from_cocoeval(coco_eval, coco_gt, iou_type)
    return metrics


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def _classic_table(metrics: dict[str, Any], max_dets: Sequence[int]) -> str:
    """pycocotools' summarize() layout, with AP at the largest max_dets."""
    line = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
    ap, ar = ("Average Precision", "(AP)"), ("Average Recall", "(AR)")
    top = max_dets[-1]
    rows = [
        (*ap, "0.50:0.95", "all", top, metrics["AP"]),
        (*ap, "0.50", "all", top, metrics["AP50"]),
        (*ap, "0.75", "all", top, metrics["AP75"]),
        (*ap, "0.50:0.95", "small", top, metrics["APs"]),
        (*ap, "0.50:0.95", "medium", top, metrics["APm"]),
        (*ap, "0.50:0.95", "large", top, metrics["APl"]),
        *[(*ar, "0.50:0.95", "all", m, metrics[f"AR@{m}"]) for m in max_dets],
        (*ar, "0.50:0.95", "small", top, metrics["ARs"]),
        (*ar, "0.50:0.95", "medium", top, metrics["ARm"]),
        (*ar, "0.50:0.95", "large", top, metrics["ARl"]),
    ]
    return "\n".join(line.format(*row) for row in rows)


def format_ap(value: float | None) -> str:
    """An AP or AR as every output gives it: a fraction in [0, 1] with 3 decimals, as in
    ``metrics.json`` and pycocotools' summary (``0.545``, not ``54.5``); NaN / None -> ``"-"``."""
    return "-" if value is None or value != value else f"{value:.3f}"


def format_metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """Markdown table of ``evaluate_coco``'s output: one row per iou type, AP and AR columns as
    fractions (:func:`format_ap`)."""
    keys = summary_keys(next(iter(metrics.values()))) if metrics else list(AP_KEYS)
    header = "| type | " + " | ".join(keys) + " |"
    rule = "|------|" + "|".join("-" * (len(k) + 2) for k in keys) + "|"
    rows = [
        f"| {iou_type} | " + " | ".join(format_ap(values.get(k, float("nan"))) for k in keys) + " |"
        for iou_type, values in metrics.items()
    ]
    return "\n".join([header, rule, *rows])


def format_per_category_table(metrics: dict[str, dict[str, Any]]) -> str:
    """Markdown table of per-category AP (fractions): one row per category, one column per iou type.

    ``metrics`` is ``evaluate_coco(..., per_category=True)``'s output.
    """
    iou_types = [t for t, values in metrics.items() if "per_category" in values]
    if not iou_types:
        raise ValueError("no per-category AP in metrics: call evaluate_coco(per_category=True)")
    names = list(metrics[iou_types[0]]["per_category"])
    header = "| category | " + " | ".join(f"{t} AP" for t in iou_types) + " |"
    rule = "|----------|" + "|".join("-" * (len(t) + 5) for t in iou_types) + "|"
    rows = [
        f"| {name} | "
        + " | ".join(format_ap(metrics[t]["per_category"].get(name, float("nan"))) for t in iou_types)
        + " |"
        for name in names
    ]
    return "\n".join([header, rule, *rows])


# --------------------------------------------------------------------------------------------
# Accumulating evaluator
# --------------------------------------------------------------------------------------------
class COCOEvaluator:
    """Collects detections image by image, then computes COCO AP.

    Results are kept as compact COCO dicts (RLE masks, not bitmaps), grouped by image id.
    Only the processed images are evaluated, so a run over part of a dataset is not charged
    for the images it skipped.

    Distributed use: every rank calls ``process`` on its shard; then gather each rank's
    ``results`` and ``image_ids`` (e.g. ``torch.distributed.all_gather_object``) and, on the
    main rank, ``merge`` them into one evaluator before ``evaluate``. An image seen twice
    (a distributed sampler pads its shards by repeating images) keeps its first results.
    """

    def __init__(
        self,
        gt_json: str | Path,
        category_ids: Sequence[int] | None = None,
        iou_types: Sequence[str] = IOU_TYPES,
        max_dets: Sequence[int] = (1, 10, 100),
    ) -> None:
        """``category_ids[k]`` is the dataset id of label k; default: sorted ids of ``gt_json``."""
        self.coco_gt = _load_gt(gt_json)  # loaded once, reused by every evaluate()
        self.category_ids = sorted(self.coco_gt.getCatIds()) if category_ids is None else list(category_ids)
        self.iou_types = tuple(iou_types)
        self.max_dets = tuple(max_dets)
        self._results_by_image: dict[int, list[dict[str, Any]]] = {}

    def reset(self) -> None:
        self._results_by_image = {}

    def process(self, image_ids: Sequence[int], outputs: Sequence[Instances]) -> None:
        """Add the detections ``outputs[i]`` (original image frame) of image ``image_ids[i]``."""
        if len(image_ids) != len(outputs):
            raise ValueError(f"{len(image_ids)} image ids for {len(outputs)} outputs")
        for image_id, instances in zip(image_ids, outputs):
            image_id = int(image_id)
            if image_id not in self._results_by_image:
                self._results_by_image[image_id] = instances_to_coco_results(
                    instances, image_id, self.category_ids
                )

    def merge(self, other_results: list[dict[str, Any]], other_image_ids: Iterable[int] | None = None) -> None:
        """Add results gathered from another rank.

        ``other_image_ids`` lists the images that rank processed, including those without any
        detection (their ground truth still counts as missed); default: the results' image ids.
        """
        ids = {int(r["image_id"]) for r in other_results}
        if other_image_ids is not None:
            ids |= {int(i) for i in other_image_ids}
        new_ids = ids - set(self._results_by_image)
        for image_id in new_ids:
            self._results_by_image[image_id] = []
        for r in other_results:
            if int(r["image_id"]) in new_ids:
                self._results_by_image[int(r["image_id"])].append(r)

    @property
    def image_ids(self) -> list[int]:
        """Sorted ids of the processed images."""
        return sorted(self._results_by_image)

    @property
    def results(self) -> list[dict[str, Any]]:
        """All COCO result dicts, in image-id order."""
        return [r for image_id in self.image_ids for r in self._results_by_image[image_id]]

    def save_results(self, path: str | Path) -> None:
        """Write ``results`` as a COCO results json (atomically: write, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.results, f)
        os.replace(tmp, path)

    def evaluate(self, verbose: bool = True, per_category: bool = False,
                 curves: bool = False) -> dict[str, dict[str, Any]]:
        """``evaluate_coco`` over the processed images (every gt image if none was processed)."""
        return evaluate_coco(
            self.coco_gt,
            self.results,
            iou_types=self.iou_types,
            max_dets=self.max_dets,
            verbose=verbose,
            per_category=per_category,
            image_ids=self.image_ids or None,
            curves=curves,
        )
