"""COCO box, mask and keypoint AP of instaseg results, with pycocotools doing the matching.

Frames and conventions:

* Results are COCO result dicts: ``image_id``, ``category_id`` (the dataset's own id, not the
  contiguous label), ``bbox`` ``[x, y, w, h]`` in absolute pixels of the original image,
  ``score``, ``segmentation`` (compressed RLE whose ``counts`` is a ``str``; none from a model
  without masks), for MS R-CNN / YOLACT++ ``mask_score`` and, for keypoint models, ``keypoints``
  (flat ``[x, y, score] * K`` in COCO's pixel-index frame: :mod:`instaseg.evaluation.keypoint_eval`).
  Results made elsewhere may lack ``bbox`` (boxes are then taken from the masks, as pycocotools'
  ``loadRes`` does) or ``segmentation`` (box AP only), may hold polygons or uncompressed RLE, or
  keypoints only: see :mod:`instaseg.evaluation.results_file`.
* Box AP ranks detections by ``score``; mask AP ranks them by ``mask_score`` when present (the
  MS R-CNN paper's point: the rescored mask confidence ranks masks, the class score ranks boxes).
* Mask AP sizes objects (small / medium / large) by mask area, box AP by box area, as the COCO
  reference does when each result type is loaded alone.
* Keypoint AP (OKS) uses pycocotools' keypoint parameters: its own maxDets (20) and the area
  ranges all / medium / large, so its summary has ``AR@20`` and no ``APs`` / ``ARs``.
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
from instaseg.evaluation.keypoint_eval import (
    KEYPOINT_MAX_DETS,
    check_keypoint_results,
    keypoint_category_ids,
    keypoint_ground_truth,
    keypoint_results_for_cocoeval,
    keypoint_sigmas,
    keypoints_to_coco,
)
from instaseg.evaluation.results_file import ResultFields, complete_results, result_fields
from instaseg.evaluation.tables import (  # the tables' names are imported from here too
    SIZE_KEYS,
    classic_table,
    format_ap,
    format_metrics_table,
    format_per_category_table,
    summary_keys,
)
from instaseg.structures.instances import CroppedInstances, Instances
from instaseg.structures.mask_crops import MaskCrops

__all__ = [
    "COCOEvaluator",
    "default_iou_types",
    "evaluate_coco",
    "format_ap",
    "format_metrics_table",
    "format_per_category_table",
    "instances_to_coco_results",
    "summary_keys",
]

IOU_TYPES = ("bbox", "segm", "keypoints")  # what evaluate_coco can score


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
            (float masks are thresholded at 0.5) or None (a model without a mask branch), optional
            mask_scores (N,), optional keypoints (N, K, 3) (x, y, score) in the continuous frame;
            or CroppedInstances (sliced inference), whose RLEs are made from the crops without
            full-image masks.
        image_id: COCO id of the image.
        category_ids: dataset category id of each contiguous label (label k -> category_ids[k]).

    Returns:
        N dicts with ``image_id``, ``category_id``, ``bbox`` [x, y, w, h] floats, ``score``,
        ``segmentation`` (compressed RLE, ``counts`` as str) when there are masks, ``mask_score``
        when present and ``keypoints`` (flat ``[x1, y1, s1, ...]``, x and y minus 0.5: COCO's
        pixel-index frame) when present.
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
    rles = None if instances.masks is None else _encode_masks(instances.masks)
    keypoints = None if instances.keypoints is None else keypoints_to_coco(instances.keypoints)
    results = []
    for i in range(n):
        result = {
            "image_id": int(image_id),
            "category_id": int(category_ids[labels[i]]),
            "bbox": boxes_xywh[i],
            "score": float(scores[i]),
        }
        if rles is not None:
            result["segmentation"] = rles[i]
        if mask_scores is not None:
            result["mask_score"] = float(mask_scores[i])
        if keypoints is not None:
            result["keypoints"] = keypoints[i]
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
    if "bbox" in iou_types and results and not (fields.has_bbox or fields.has_segmentation):
        raise ValueError("bbox evaluation needs 'bbox' or 'segmentation' in every result; result 0 has neither")
    if "keypoints" in iou_types:
        categories = coco_gt.dataset.get("categories", [])
        if not keypoint_category_ids(categories):
            raise ValueError("keypoints evaluation needs ground truth whose categories declare keypoint names")
        if results and not fields.has_keypoints:
            raise ValueError("keypoints evaluation needs 'keypoints' in every result; result 0 has none")


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
    categories = coco_gt.dataset["categories"]
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(categories),
        "annotations": (keypoint_results_for_cocoeval(results, keypoint_category_ids(categories))
                        if iou_type == "keypoints" else _results_for_iou_type(results, iou_type)),
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
    """AP / AP50 / AP75, AP per area range (APs / APm / APl; keypoints: APm / APl), AR@m per
    maxDets and AR per area range at the largest maxDets."""
    p = coco_eval.params
    precision = coco_eval.eval["precision"]  # (T iou thrs, R recall thrs, K cats, A areas, M maxDets)
    recall = coco_eval.eval["recall"]  # (T, K, A, M)
    sizes = {SIZE_KEYS[label]: a for a, label in enumerate(p.areaRngLbl) if label in SIZE_KEYS}
    everything = list(p.areaRngLbl).index("all")
    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(p.iouThrs - 0.75)))
    m = len(p.maxDets) - 1
    metrics = {
        "AP": _mean_valid(precision[:, :, :, everything, m]),
        "AP50": _mean_valid(precision[t50, :, :, everything, m]),
        "AP75": _mean_valid(precision[t75, :, :, everything, m]),
        **{f"AP{size}": _mean_valid(precision[:, :, :, a, m]) for size, a in sizes.items()},
    }
    for j, max_det in enumerate(p.maxDets):
        metrics[f"AR@{max_det}"] = _mean_valid(recall[:, :, everything, j])
    for size, a in sizes.items():
        metrics[f"AR{size}"] = _mean_valid(recall[:, :, a, m])
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
        out[name] = _mean_valid(precision[:, :, k, list(p.areaRngLbl).index("all"), -1])
    return out


def _run_cocoeval(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    iou_type: str,
    max_dets: Sequence[int],
    image_ids: Sequence[int] | None,
    sigmas: np.ndarray | None = None,
) -> COCOeval:
    """An evaluated and accumulated COCOeval; keypoints: ``coco_gt`` is :func:`keypoint_ground_truth`'s,
    ``sigmas`` the (K,) OKS sigmas, and only the keypoint categories are scored."""
    coco_eval = COCOeval(coco_gt, _results_to_coco(coco_gt, results, iou_type), iou_type)
    coco_eval.params.maxDets = list(max_dets)
    if iou_type == "keypoints":
        coco_eval.params.catIds = keypoint_category_ids(coco_gt.dataset["categories"])
        coco_eval.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)  # an array: computeOks doubles it
    if image_ids is not None:
        coco_eval.params.imgIds = sorted(set(int(i) for i in image_ids))
    coco_eval.evaluate()
    coco_eval.accumulate()
    return coco_eval


# --------------------------------------------------------------------------------------------
# Public evaluation entry point
# --------------------------------------------------------------------------------------------
def default_iou_types(categories: Sequence[dict[str, Any]], has_boxes: bool, has_masks: bool,
                      has_keypoints: bool) -> tuple[str, ...]:
    """What predictions are scored for when nobody says: ``bbox`` when they have boxes (or masks),
    ``segm`` when they have masks, ``keypoints`` when they have keypoints and one of the ground
    truth's ``categories`` declares keypoint names."""
    types = ("bbox",) if has_boxes or has_masks else ()
    types += ("segm",) * has_masks
    return types + ("keypoints",) * (has_keypoints and bool(keypoint_category_ids(categories)))


def _results_iou_types(coco_gt: COCO, fields: ResultFields) -> tuple[str, ...]:
    """The default iou types of a results list (empty results: ``bbox`` and ``segm``, as before keypoints)."""
    if fields.count == 0:
        return ("bbox", "segm")
    return default_iou_types(coco_gt.dataset.get("categories", []), fields.has_bbox, fields.has_segmentation,
                             fields.has_keypoints)


def evaluate_coco(
    gt: str | Path | dict | COCO,
    results: list[dict] | str | Path,
    iou_types: Sequence[str] | None = None,
    max_dets: Sequence[int] = (1, 10, 100),
    verbose: bool = True,
    per_category: bool = False,
    image_ids: Sequence[int] | None = None,
    curves: bool = False,
    keypoint_max_dets: Sequence[int] = KEYPOINT_MAX_DETS,
) -> dict[str, dict[str, Any]]:
    """COCO AP of ``results`` against the ground truth ``gt``.

    Args:
        gt: COCO ground truth: a json path, the dataset dict (deep-copied) or a ``COCO`` object.
            Annotations need ``id`` (non-zero), ``image_id``, ``category_id``, ``bbox``,
            ``area``, ``iscrowd``, for segm ``segmentation`` and, for keypoints, ``keypoints``
            (and ``num_keypoints``; both filled in when absent) in the categories that declare
            keypoint names (OKS sigmas: :func:`~instaseg.evaluation.keypoint_eval.keypoint_sigmas`).
        results: COCO result dicts (see the module docstring) or a json file of them. An empty
            list is allowed (every AP is 0 where ground truth exists). Without ``bbox``, box AP
            scores ``toBbox`` of the masks (as pycocotools' ``loadRes``); polygon and
            uncompressed-RLE masks are rasterized at the image's size.
        iou_types: any of ``"bbox"``, ``"segm"``, ``"keypoints"``; default
            :func:`default_iou_types` of what the results carry (empty results: bbox and segm).
        max_dets: ascending detection caps per image and category (COCO: (1, 10, 100); dense
            datasets e.g. (100, 300, 1000)). AP and APs/m/l use the largest.
        verbose: print pycocotools' progress and the classic 12-line table per iou type;
            otherwise nothing is printed.
        per_category: also return ``"per_category": {category name: AP}`` per iou type.
        image_ids: evaluate only these images (default: every image of ``gt``). Results on
            other images are ignored.
        curves: also return ``"curves"``: the :class:`~instaseg.evaluation.curves.PRCurves`
            (pycocotools' accumulated precision, scores and recall) per iou type.
        keypoint_max_dets: the maxDets of keypoint AP (pycocotools': 20).

    Returns:
        ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR@<m>" per max_dets,
        "ARs", "ARm", "ARl"[, "per_category"]}}``, fractions in [0, 1]; NaN where a bucket has
        no ground truth (pycocotools' -1). ``keypoints`` has no ``APs`` / ``ARs`` and its
        ``AR@<m>`` follow ``keypoint_max_dets``; its per-category AP and curves cover the
        keypoint categories only.

    Raises:
        TypeError: ``results`` is not a list.
        ValueError: results on images or categories absent from ``gt``, masks not of the
            image's size or malformed, a result without ``image_id`` / ``category_id`` /
            ``score``, ``bbox`` or ``segmentation`` in some results only (the first offending
            result is named), segm asked of results without masks, keypoints asked of results
            without keypoints or of ground truth without keypoint categories, keypoints that are
            not 3K numbers, keypoint categories with different sigmas, bad ``max_dets``.
    """
    max_dets, keypoint_max_dets = _checked_max_dets(max_dets), _checked_max_dets(keypoint_max_dets)
    out = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with out:
        coco_gt = _load_gt(gt)
        results = _load_results(results)
        if iou_types is None:
            iou_types = _results_iou_types(coco_gt, result_fields(results))
        _check_results(coco_gt, results, iou_types)
        results = _complete_results(coco_gt, results, iou_types)
        metrics: dict[str, dict[str, Any]] = {}
        for iou_type in iou_types:
            type_gt, sigmas, caps = coco_gt, None, max_dets
            if iou_type == "keypoints":
                sigmas = keypoint_sigmas(coco_gt.dataset["categories"])
                type_gt, caps = keypoint_ground_truth(coco_gt, len(sigmas)), keypoint_max_dets
                check_keypoint_results(results, keypoint_category_ids(coco_gt.dataset["categories"]), len(sigmas))
            coco_eval = _run_cocoeval(type_gt, results, iou_type, caps, image_ids, sigmas)
            metrics[iou_type] = _summarize(coco_eval)
            if verbose:
                print(f"Evaluate annotation type *{iou_type}*")
                print(classic_table(metrics[iou_type], caps))
            if per_category:
                metrics[iou_type]["per_category"] = _per_category_ap(coco_eval, type_gt)
            if curves:
                metrics[iou_type]["curves"] = curves_from_cocoeval(coco_eval, type_gt, iou_type)
    return metrics


def _checked_max_dets(max_dets: Sequence[int]) -> list[int]:
    checked = [int(m) for m in max_dets]
    if not checked or checked != sorted(checked) or checked[0] < 1:
        raise ValueError(f"max_dets must be ascending positive ints, got {checked}")
    return checked


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
        iou_types: Sequence[str] | None = None,
        max_dets: Sequence[int] = (1, 10, 100),
        keypoint_max_dets: Sequence[int] = KEYPOINT_MAX_DETS,
    ) -> None:
        """``category_ids[k]`` is the dataset id of label k; default: sorted ids of ``gt_json``.
        ``iou_types`` default: see :attr:`iou_types`."""
        self.coco_gt = _load_gt(gt_json)  # loaded once, reused by every evaluate()
        self.category_ids = sorted(self.coco_gt.getCatIds()) if category_ids is None else list(category_ids)
        self._iou_types = None if iou_types is None else tuple(iou_types)
        self.max_dets = tuple(max_dets)
        self.keypoint_max_dets = tuple(keypoint_max_dets)
        self._results_by_image: dict[int, list[dict[str, Any]]] = {}
        self._carried: set[str] | None = None  # "masks" / "keypoints" the detections had; None: none seen

    def reset(self) -> None:
        self._results_by_image = {}
        self._carried = None

    @property
    def iou_types(self) -> tuple[str, ...]:
        """The types ``evaluate`` scores: those given, else :func:`default_iou_types` of what the
        processed detections carry (bbox, segm with masks, keypoints with keypoints and keypoint
        categories in the ground truth); bbox and segm before any detection was seen."""
        if self._iou_types is not None:
            return self._iou_types
        if self._carried is None:
            return ("bbox", "segm")
        return default_iou_types(self.coco_gt.dataset.get("categories", []), True, "masks" in self._carried,
                                 "keypoints" in self._carried)

    def _saw(self, carried: set[str]) -> None:
        self._carried = (self._carried or set()) | carried

    def process(self, image_ids: Sequence[int], outputs: Sequence[Instances]) -> None:
        """Add the detections ``outputs[i]`` (original image frame) of image ``image_ids[i]``."""
        if len(image_ids) != len(outputs):
            raise ValueError(f"{len(image_ids)} image ids for {len(outputs)} outputs")
        for image_id, instances in zip(image_ids, outputs):
            image_id = int(image_id)
            self._saw({kind for kind, value in (("masks", instances.masks), ("keypoints", instances.keypoints))
                       if value is not None})
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
        if other_results:
            self._saw({kind for kind, key in (("masks", "segmentation"), ("keypoints", "keypoints"))
                       if key in other_results[0]})
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
            keypoint_max_dets=self.keypoint_max_dets,
        )
