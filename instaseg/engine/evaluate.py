"""COCO evaluation of a model on a dataset, single- or multi-process, and the ``metrics.json`` file.

``metrics.json`` (one place for its format)::

    {"bbox": {"AP": .., "AP50": .., "AP75": .., "APs": .., "APm": .., "APl": ..,
              "AR@1": .., "AR@10": .., "AR@100": .., "ARs": .., "ARm": .., "ARl": ..},
     "segm": {"AP": .., ...},
     "keypoints": {"AP": .., "AP50": .., "AP75": .., "APm": .., "APl": .., "AR@20": .., "ARm": .., "ARl": ..},
     "notes": {"bbox": "computed from the masks (results have no 'bbox')"}}

Each type is there when it was scored: ``segm`` for models with masks, ``keypoints`` (OKS AP, no
small objects, 20 detections per image: :mod:`instaseg.evaluation.keypoint_eval`) for keypoint
models on a dataset whose categories declare keypoints.

``AR@m`` is the average recall with at most ``m`` detections per image, one per COCO maxDets (the
caps that hide a crowded dataset's misses show there first). Values are fractions in [0, 1]; ``null`` where COCO has nothing to measure (e.g. APl on a dataset
without large objects: pycocotools' -1, NaN in memory). ``notes`` is there only when a type was not
scored from the results' own field (``instaseg eval --results`` of a masks-only or boxes-only file:
see :class:`instaseg.evaluation.ResultFields`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from instaseg.detectors.base import Detector
from instaseg.engine.distributed import all_gather_objects, broadcast_object, is_main_process, unwrap_model
from instaseg.engine.logging import get_logger
from instaseg.engine.run_data import val_samples
from instaseg.engine.run_report import NUM_VAL_SAMPLES, SCORE_THRESH, save_evaluation_data
from instaseg.evaluation.coco_eval import COCOEvaluator
from instaseg.evaluation.tables import summary_keys
from instaseg.evaluation.confusion import confusion_from_coco

__all__ = ["evaluate_model", "write_metrics_json", "read_metrics_json", "METRIC_TYPES", "main_metric_type"]

METRIC_TYPES = ("bbox", "segm", "keypoints")


def main_metric_type(metrics: Mapping[str, Any]) -> str:
    """The iou type whose AP ranks checkpoints (``best.pt``) and leads the log: ``segm`` when the
    model has masks (as before keypoints existed), else ``keypoints`` (a boxes + keypoints model:
    its keypoints are what it is for), else ``bbox``."""
    for iou_type in ("segm", "keypoints", "bbox"):
        if iou_type in metrics:
            return iou_type
    raise ValueError(f"no bbox, segm or keypoints metrics in {sorted(metrics)}")


def evaluate_model(
    model: Detector,
    dataset: Any,
    num_workers: int = 0,
    progress: bool = True,
    distributed: bool = False,
    loader: Iterable[Any] | None = None,
    verbose: bool = False,
    max_dets: Sequence[int] = (1, 10, 100),
    per_category: bool = False,
    results_path: str | Path | None = None,
    curves: bool = False,
    plots_dir: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """COCO box, mask and keypoint AP of ``model`` on ``dataset``.

    Args:
        model: a detector (or its DDP wrapper) with ``predict(images) -> list[Instances]``;
            images are the dataset's original ``(3, H, W)`` RGB floats in [0, 255] and the
            results come back in the original image frame.
        dataset: has ``json_path`` (COCO ground truth) and ``category_ids`` (dataset id of each
            contiguous label).
        num_workers: data-loading worker processes.
        progress: a progress bar (main process only).
        distributed: each rank predicts its shard (the test loader shards by rank); results are
            gathered with ``all_gather_object``, the main rank evaluates and broadcasts the metrics.
        loader: batches with ``images`` and ``image_ids`` (default:
            ``instaseg.data.loader.build_test_loader(dataset, num_workers, distributed=distributed)``).
        verbose: print pycocotools' tables (main process).
        max_dets: COCO detection caps per image (dense datasets: e.g. (100, 300, 1000)).
        per_category: add ``"per_category": {name: AP}`` to each iou type.
        results_path: also write the COCO results json there (main process).
        curves: add ``"curves"`` (:class:`~instaseg.evaluation.curves.PRCurves`) to each iou type.
        plots_dir: also store what the run folder's evaluation pictures are drawn from (PR arrays,
            confusion counts, the first few images holding objects, with their predictions) in
            ``plots_dir/plot_data`` (main process; see :mod:`instaseg.engine.run_report`).

    Returns:
        ``{"bbox": {...}, "segm": {...}, "keypoints": {...}}`` as
        :func:`instaseg.evaluation.evaluate_coco` returns them (AP, AP50, AP75, APs, APm, APl,
        AR...), identical on every rank: ``segm`` when the model predicts masks, ``keypoints``
        when it predicts keypoints and the dataset's categories declare keypoint names.
    """
    net = unwrap_model(model)
    if loader is None:
        from instaseg.data.loader import build_test_loader

        loader = build_test_loader(dataset, num_workers, batch_size=1, distributed=distributed)
    evaluator = COCOEvaluator(dataset.json_path, dataset.category_ids, max_dets=max_dets)
    main = is_main_process()
    seen: set[int] = set()
    sample_images: dict[int, np.ndarray] = {}  # the first few images, for the run folder's pictures
    for batch in tqdm(loader, desc="eval", unit="img", leave=False, disable=not (progress and main)):
        # a skip_bad dataset replaces an unreadable image by the next good one: score each image once
        # (the skipped image's ground truth then counts as missed, which is what happened)
        keep = [i for i, image_id in enumerate(batch.image_ids) if image_id not in seen]
        seen.update(batch.image_ids)
        if keep:
            evaluator.process([batch.image_ids[i] for i in keep], net.predict([batch.images[i] for i in keep]))
        if plots_dir is not None and main:  # the first few images that hold objects
            for i in keep:
                image_id = int(batch.image_ids[i])
                holds_objects = evaluator.coco_gt.getAnnIds(imgIds=[image_id], iscrowd=False)
                if len(sample_images) < NUM_VAL_SAMPLES and holds_objects:
                    sample_images[image_id] = _as_uint8_image(batch.images[i])
    if distributed:
        shards = all_gather_objects((evaluator.results, evaluator.image_ids))
        if main:
            for results, image_ids in shards[1:]:
                evaluator.merge(results, image_ids)
    metrics = None
    if main or not distributed:
        metrics = evaluator.evaluate(verbose=verbose, per_category=per_category,
                                     curves=curves or plots_dir is not None)
        if results_path is not None:
            Path(results_path).parent.mkdir(parents=True, exist_ok=True)
            evaluator.save_results(results_path)
        if plots_dir is not None:
            pr_curves = {t: values["curves"] if curves else values.pop("curves") for t, values in metrics.items()}
            try:
                _save_plot_data(plots_dir, pr_curves, evaluator, sample_images)
            except Exception as error:  # noqa: BLE001 - pictures never cost the metrics
                get_logger().warning(f"run folder pictures: could not store the evaluation data ({error})")
    return broadcast_object(metrics) if distributed else metrics


def _as_uint8_image(image: Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 255] -> (H, W, 3) uint8."""
    return image.detach().cpu().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _save_plot_data(folder: str | Path, curves: dict[str, Any], evaluator: COCOEvaluator,
                    sample_images: dict[int, np.ndarray]) -> None:
    """The evaluation's part of a run folder's picture data (see :mod:`instaseg.engine.run_report`)."""
    coco_gt, results = evaluator.coco_gt, evaluator.results
    names = [str(coco_gt.cats[c].get("name", c)) for c in evaluator.category_ids]
    iou_type = "segm" if "segm" in evaluator.iou_types else "bbox"
    confusion = confusion_from_coco(coco_gt, results, evaluator.category_ids, SCORE_THRESH, iou_type=iou_type,
                                    image_ids=evaluator.image_ids or None)
    samples = val_samples(sample_images, coco_gt, results, evaluator.category_ids)
    save_evaluation_data(folder, curves, confusion, samples, names)


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def write_metrics_json(
    metrics: dict[str, dict[str, Any]], path: str | Path, notes: Mapping[str, str] | None = None
) -> None:
    """Write ``metrics.json`` (format in the module docstring), atomically (write, then rename).

    The AP and AR keys of ``bbox``, ``segm`` and ``keypoints`` are kept; missing types are left out. ``notes``
    (``{iou_type: note}``) is written when not empty.
    """
    out: dict[str, Any] = {
        iou_type: {key: _finite_or_none(metrics[iou_type][key]) for key in summary_keys(metrics[iou_type], True)}
        for iou_type in METRIC_TYPES
        if iou_type in metrics
    }
    if notes:
        out["notes"] = dict(notes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp, path)


def read_metrics_json(path: str | Path) -> dict[str, dict[str, float]]:
    """Read the metrics of ``metrics.json`` (not its ``notes``); ``null`` comes back as NaN."""
    data = json.loads(Path(path).read_text())
    return {
        t: {k: float("nan") if v is None else float(v) for k, v in values.items()}
        for t, values in data.items()
        if t in METRIC_TYPES
    }
