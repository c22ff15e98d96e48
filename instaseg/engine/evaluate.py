"""COCO evaluation of a model on a dataset, single- or multi-process, and the ``metrics.json`` file.

``metrics.json`` (one place for its format)::

    {"bbox": {"AP": .., "AP50": .., "AP75": .., "APs": .., "APm": .., "APl": ..,
              "AR@1": .., "AR@10": .., "AR@100": .., "ARs": .., "ARm": .., "ARl": ..},
     "segm": {"AP": .., ...},
     "notes": {"bbox": "computed from the masks (results have no 'bbox')"}}

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

from torch import nn
from tqdm import tqdm

from instaseg.engine.distributed import all_gather_objects, broadcast_object, is_main_process, unwrap_model
from instaseg.evaluation.coco_eval import COCOEvaluator, summary_keys

__all__ = ["evaluate_model", "write_metrics_json", "read_metrics_json", "METRIC_TYPES"]

METRIC_TYPES = ("bbox", "segm")


def evaluate_model(
    model: nn.Module,
    dataset: Any,
    num_workers: int = 0,
    progress: bool = True,
    distributed: bool = False,
    loader: Iterable[Any] | None = None,
    verbose: bool = False,
    max_dets: Sequence[int] = (1, 10, 100),
    per_category: bool = False,
    results_path: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """COCO box and mask AP of ``model`` on ``dataset``.

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

    Returns:
        ``{"bbox": {...}, "segm": {...}}`` as :func:`instaseg.evaluation.evaluate_coco` returns
        them (AP, AP50, AP75, APs, APm, APl, AR...), identical on every rank.
    """
    net = unwrap_model(model)
    if loader is None:
        from instaseg.data.loader import build_test_loader

        loader = build_test_loader(dataset, num_workers, batch_size=1, distributed=distributed)
    evaluator = COCOEvaluator(dataset.json_path, dataset.category_ids, max_dets=max_dets)
    main = is_main_process()
    seen: set[int] = set()
    for batch in tqdm(loader, desc="eval", unit="img", leave=False, disable=not (progress and main)):
        # a skip_bad dataset replaces an unreadable image by the next good one: score each image once
        # (the skipped image's ground truth then counts as missed, which is what happened)
        keep = [i for i, image_id in enumerate(batch.image_ids) if image_id not in seen]
        seen.update(batch.image_ids)
        if keep:
            evaluator.process([batch.image_ids[i] for i in keep], net.predict([batch.images[i] for i in keep]))
    if distributed:
        shards = all_gather_objects((evaluator.results, evaluator.image_ids))
        if main:
            for results, image_ids in shards[1:]:
                evaluator.merge(results, image_ids)
    metrics = None
    if main or not distributed:
        metrics = evaluator.evaluate(verbose=verbose, per_category=per_category)
        if results_path is not None:
            Path(results_path).parent.mkdir(parents=True, exist_ok=True)
            evaluator.save_results(results_path)
    return broadcast_object(metrics) if distributed else metrics


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def write_metrics_json(
    metrics: dict[str, dict[str, Any]], path: str | Path, notes: Mapping[str, str] | None = None
) -> None:
    """Write ``metrics.json`` (format in the module docstring), atomically (write, then rename).

    The AP and AR keys of ``bbox`` and ``segm`` are kept; missing types are left out. ``notes``
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
