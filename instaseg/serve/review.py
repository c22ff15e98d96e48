"""Dataset review: every image's ground truth beside the model's prediction, ranked by error.

:class:`DatasetReview` predicts the whole dataset once, in a background thread that shares the
server's :class:`~instaseg.serve.service.InferenceGate` (requests keep being answered meanwhile), and
keeps, per image, the ground truth and predictions as JSON-ready dicts and the mask IoU of every
(prediction, ground truth) pair (box IoU for a model without masks: Keypoint R-CNN with boxes and
keypoints only). Per-image errors at any score threshold are then cheap
(:func:`image_errors`): the cache is computed once for the server's life.

Matching (as COCO's at IoU 0.5, per image): predictions above the threshold, best score first, each
take the unmatched ground-truth instance of their class with the highest IoU >= 0.5. Unmatched
ground truth is *missed*, unmatched predictions are *false positives*; ``error = missed +
false_positives + sum(1 - IoU)`` over the matches, so an image with poor masks but no miss still
ranks above a perfect one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch

from instaseg.data.coco import CocoDataset
from instaseg.data.image_io import IMAGE_EXTENSIONS
from instaseg.serve.service import ModelService, instances_to_json
from instaseg.structures.instances import Instances, Targets

__all__ = ["DatasetReview", "ImageReview", "image_errors", "safe_image_path", "SORT_KEYS"]

_LOG = logging.getLogger("instaseg.serve")
IOU_THRESHOLD = 0.5
# sort key -> (summary field, descending): the worst images first
SORT_KEYS = {"error": ("error", True), "missed": ("missed", True), "false_positives": ("false_positives", True),
             "mean_iou": ("mean_iou", False), "id": ("image_id", False)}


@dataclass
class ImageReview:
    """One image's ground truth and predictions (JSON-ready dicts, see ``instances_to_json``) and
    ``iou``, the ``(P, G)`` mask IoU (box IoU without predicted masks) of every prediction with every
    ground-truth instance."""

    image_id: int
    file_name: str
    width: int
    height: int
    truth: list[dict[str, Any]]
    predictions: list[dict[str, Any]]
    iou: np.ndarray


def image_errors(review: ImageReview, score_threshold: float, iou_threshold: float = IOU_THRESHOLD) -> dict[str, Any]:
    """``missed``, ``false_positives``, ``matched``, ``mean_iou`` (of the matches; None without any) and
    ``error`` of one image at ``score_threshold`` (the rule is in the module docstring)."""
    kept = [i for i, p in enumerate(review.predictions) if p["score"] >= score_threshold]
    kept.sort(key=lambda i: -review.predictions[i]["score"])
    taken: set[int] = set()
    ious: list[float] = []
    for i in kept:
        label = review.predictions[i]["label"]
        candidates = [(review.iou[i, g], g) for g, t in enumerate(review.truth)
                      if g not in taken and t["label"] == label and review.iou[i, g] >= iou_threshold]
        if candidates:
            best_iou, best = max(candidates)
            taken.add(best)
            ious.append(float(best_iou))
    missed, false_positives = len(review.truth) - len(taken), len(kept) - len(taken)
    return {"missed": missed, "false_positives": false_positives, "matched": len(taken),
            "mean_iou": float(np.mean(ious)) if ious else None,
            "error": float(missed + false_positives + sum(1.0 - v for v in ious))}


def _pair_iou(predictions: list[dict[str, Any]], truth: list[dict[str, Any]]) -> np.ndarray:
    """``(P, G)`` IoU of the predictions' and ground truth's RLE masks, or of their boxes when an
    instance has no mask (a model without a mask branch)."""
    if not predictions or not truth:
        return np.zeros((len(predictions), len(truth)))
    if all(m["mask"] is not None for m in (*predictions, *truth)):
        encoded = [[{"size": m["mask"]["size"], "counts": m["mask"]["counts"].encode("ascii")} for m in side]
                   for side in (predictions, truth)]
    else:  # pycocotools' box IoU takes [x, y, w, h]
        encoded = [np.array([[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in (m["box"] for m in side)], np.float64)
                   for side in (predictions, truth)]
    return np.asarray(mask_util.iou(encoded[0], encoded[1], [0] * len(truth)), dtype=np.float64).reshape(
        len(predictions), len(truth))


def safe_image_path(root: Path, relative: str) -> Path | None:
    """The image file ``relative`` names under ``root``, or None when it is not one: absolute paths,
    ``..`` parts, anything whose real path (symlinks followed) leaves ``root``, non-image suffixes
    and missing files are all refused."""
    if not relative or "\\" in relative or "\x00" in relative:
        return None
    parts = PurePosixPath(relative)
    if parts.is_absolute() or ".." in parts.parts or parts.suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    real_root = root.resolve()
    real = (real_root / parts).resolve()
    if not real.is_relative_to(real_root) or not real.is_file():
        return None
    return real


class DatasetReview:
    """The dataset's predictions, computed once in the background and cached (see the module docstring)."""

    def __init__(self, dataset: CocoDataset, service: ModelService, score_threshold: float = 0.5) -> None:
        if dataset.num_classes != len(service.names):
            raise ValueError(f"the model predicts {len(service.names)} classes but the dataset has "
                             f"{dataset.num_classes}")
        self.dataset, self.service, self.score_threshold = dataset, service, score_threshold
        self.image_dir = Path(dataset.image_dir)
        self.names = list(dataset.category_names)
        self._done: dict[int, ImageReview] = {}
        self._failed: dict[int, str] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Start predicting the dataset in a daemon thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="instaseg-review", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the background thread to stop after its current image and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _work(self) -> None:
        for index in range(len(self.dataset)):
            if self._stop.is_set():
                return
            try:
                review = self._review(index)
            except Exception as error:  # noqa: BLE001 - one bad image must not end the review
                _LOG.warning("review: %s: %s", self.dataset.describe(index), error)
                with self._lock:
                    self._failed[index] = f"{type(error).__name__}: {error}"
                continue
            with self._lock:
                self._done[review.image_id] = review

    def _review(self, index: int) -> ImageReview:
        sample = self.dataset[index]
        pixels = sample.image.permute(1, 2, 0).numpy()
        found, _ = self.service.gate.run(self.service.predict, pixels)
        t = sample.targets
        truth = instances_to_json(_as_instances(t), self.dataset.category_ids, self.names)
        for item in truth:
            item.pop("score"), item.pop("mask_score")
        predictions = self.service.to_json(found)
        height, width = pixels.shape[:2]
        return ImageReview(sample.image_id, self.dataset.file_name(index), width, height, truth, predictions,
                           _pair_iou(predictions, truth))

    def status(self) -> dict[str, Any]:
        """``total``, ``done``, ``failed`` (messages) and ``running`` of the background prediction."""
        with self._lock:
            done, failed = len(self._done), list(self._failed.values())
        running = self._thread is not None and self._thread.is_alive()
        return {"total": len(self.dataset), "done": done, "failed": failed, "running": running,
                "finished": done + len(failed) == len(self.dataset)}

    def summaries(self, sort: str = "error", class_name: str | None = None,
                  score_threshold: float | None = None) -> list[dict[str, Any]]:
        """One summary per reviewed image (id, file, size, classes present, errors), worst first by
        ``sort`` (a key of :data:`SORT_KEYS`); ``class_name`` keeps images where that class is in the
        ground truth or predicted above the threshold."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        field, descending = SORT_KEYS[sort]
        with self._lock:
            reviews = list(self._done.values())
        rows = []
        for review in reviews:
            classes = sorted({t["category_name"] for t in review.truth}
                             | {p["category_name"] for p in review.predictions if p["score"] >= threshold})
            if class_name and class_name not in classes:
                continue
            rows.append({"image_id": review.image_id, "file_name": review.file_name, "width": review.width,
                         "height": review.height, "classes": classes, "truth_count": len(review.truth),
                         **image_errors(review, threshold)})
        missing = -1.0 if descending else 2.0  # mean_iou None (nothing matched) sorts as the worst
        rows.sort(key=lambda r: (r[field] if r[field] is not None else missing, -r["image_id"]), reverse=descending)
        return rows

    def detail(self, image_id: int, score_threshold: float | None = None) -> dict[str, Any] | None:
        """Ground truth, predictions (all, the page filters by score) and errors of one image; None if unknown."""
        with self._lock:
            review = self._done.get(image_id)
        if review is None:
            return None
        threshold = self.score_threshold if score_threshold is None else score_threshold
        return {"image_id": review.image_id, "file_name": review.file_name, "width": review.width,
                "height": review.height, "truth": review.truth, "predictions": review.predictions,
                "score_threshold": threshold, **image_errors(review, threshold)}

    def image_path(self, relative: str) -> Path | None:
        """:func:`safe_image_path` under the dataset's image folder."""
        return safe_image_path(self.image_dir, relative)


def _as_instances(targets: Targets) -> Instances:
    """Ground-truth ``Targets`` as ``Instances`` with scores of 1 (for :func:`instances_to_json`)."""
    return Instances(boxes=targets.boxes, scores=torch.ones(len(targets.labels)), labels=targets.labels,
                     masks=targets.masks, keypoints=targets.keypoints)
