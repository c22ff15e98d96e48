"""The model behind the server: loaded once, run through a bounded gate, answered as JSON.

:class:`ModelService` holds a :class:`~instaseg.hub.Predictor`, the dataset category ids and names of
its labels and where its weights came from. Every inference, from an HTTP request or from the
dataset review running in the background, passes through one :class:`InferenceGate`: at most
``workers`` run at once and at most ``queue`` requests wait, so a burst of uploads holds at most
``queue`` request bodies and ``workers`` decoded images in memory; past that, :class:`ServerBusy`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from torch import nn

from instaseg.config.schema import Config
from instaseg.data.coco_keypoints import KeypointSchema
from instaseg.hub import Predictor, load_model, resolve_checkpoint
from instaseg.hub.outputs import keypoint_schema, keypoint_threshold
from instaseg.structures.instances import Instances
from instaseg.structures.masks import bitmaps_to_rles

__all__ = ["InferenceGate", "ModelService", "ServerBusy", "instances_to_json"]

T = TypeVar("T")


class ServerBusy(Exception):
    """More requests are waiting for the model than the gate's queue allows."""


class InferenceGate:
    """At most ``workers`` calls run at once (threads block on a semaphore); at most ``queue``
    callers may be admitted and waiting. ``peak_running`` records the most calls seen at once."""

    def __init__(self, workers: int = 1, queue: int = 64) -> None:
        if workers < 1 or queue < 1:
            raise ValueError(f"workers and queue must be >= 1, got {workers} and {queue}")
        self.workers, self.queue = workers, queue
        self._slots = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self.admitted = 0  # callers admitted and not yet finished (waiting or running)
        self.running = 0
        self.peak_running = 0

    def admit(self) -> None:
        """Take a place in the queue, or raise :class:`ServerBusy` when it is full."""
        with self._lock:
            if self.admitted >= self.queue + self.workers:
                raise ServerBusy(f"{self.admitted} requests are already waiting for the model; try again shortly")
            self.admitted += 1

    def leave(self) -> None:
        """Give back the place :meth:`admit` took."""
        with self._lock:
            self.admitted -= 1

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """Call ``function(*args)`` when a worker slot is free (blocking this thread until then)."""
        with self._slots:
            with self._lock:
                self.running += 1
                self.peak_running = max(self.peak_running, self.running)
            try:
                return function(*args)
            finally:
                with self._lock:
                    self.running -= 1


def instances_to_json(instances: Instances, category_ids: Sequence[int], names: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per detection: ``box`` [x1, y1, x2, y2] absolute pixels (continuous, the image's frame),
    ``score``, ``label`` in [0, C), ``category_id``, ``category_name``, ``mask`` (compressed COCO RLE of
    the ``(H, W)`` mask, ``counts`` a str; None from a model without masks), ``mask_score`` (None for
    models without one) and ``keypoints`` (``[[x, y, score], ...]``, K points in the boxes' continuous
    frame; ``[x, y, v]`` COCO visibility for ground truth; None for models without keypoints)."""
    instances = instances.to("cpu")
    n, labels = len(instances), instances.labels.tolist()
    mask_scores = None if instances.mask_scores is None else instances.mask_scores.tolist()
    rles = [None] * n if instances.masks is None or not n else bitmaps_to_rles(instances.masks.bool())
    keypoints = [None] * n if instances.keypoints is None else instances.keypoints.float().tolist()
    return [{"box": [float(v) for v in box], "score": float(score), "label": int(label),
             "category_id": int(category_ids[label]), "category_name": names[label], "mask": rle,
             "mask_score": None if mask_scores is None else float(mask_scores[i]), "keypoints": points}
            for i, (box, score, label, rle, points) in enumerate(
                zip(instances.boxes.tolist(), instances.scores.tolist(), labels, rles, keypoints))]


class ModelService:
    """One loaded model for every request: ``predict(image) -> (Instances, seconds)``, run through ``gate``.

    Args:
        predictor: the model (its own ``score_threshold`` should be 0: requests pick theirs).
        category_ids: dataset category id of label k; names: its name.
        origin: where the weights came from (shown by ``GET /v1/model``).
        gate: the bound on concurrent and waiting inferences.
        keypoints: a keypoint model's keypoint names and skeleton (None without keypoints).
    """

    def __init__(self, predictor: Predictor, category_ids: Sequence[int], names: Sequence[str],
                 origin: dict[str, Any] | None = None, gate: InferenceGate | None = None,
                 keypoints: KeypointSchema | None = None) -> None:
        num_classes = int(predictor.model.num_classes)
        if len(category_ids) != num_classes or len(names) != num_classes:
            raise ValueError(f"{len(category_ids)} category ids and {len(names)} names for {num_classes} classes")
        self.predictor = predictor
        self.category_ids, self.names = list(category_ids), list(names)
        self.origin = origin or {"kind": "model object", "description": "a model handed to the server in process"}
        self.gate = gate or InferenceGate()
        self.keypoints = keypoints
        self.keypoint_threshold = keypoint_threshold(predictor.config)  # joints drawn above it

    @classmethod
    def from_model(cls, model: nn.Module, config: Config, names: Sequence[str] | None = None,
                   category_ids: Sequence[int] | None = None, device: str = "cpu",
                   gate: InferenceGate | None = None, keypoints: KeypointSchema | None = None) -> "ModelService":
        """A service for a model built in process (ids 1..C and names ``class_k`` unless given; a keypoint
        model's ``keypoints`` names and skeleton, else those of a checkpoint that stored none)."""
        num_classes = int(model.num_classes)
        ids = list(category_ids or range(1, num_classes + 1))
        keypoints = keypoints if keypoints is not None else keypoint_schema({}, config)
        return cls(Predictor(model, config, device), ids, list(names or [f"class_{k}" for k in range(num_classes)]),
                   gate=gate, keypoints=keypoints)

    @classmethod
    def from_weights(cls, name_or_path: str | Path, device: str = "cpu", overrides: Sequence[str] = (),
                     max_detections: int | None = None, allow_partial: bool = False,
                     gate: InferenceGate | None = None) -> "ModelService":
        """Load ``--weights NAME_OR_PATH`` (a catalogue name, fetched and converted once, or a checkpoint)."""
        from instaseg.engine.checkpoint import checkpoint_categories, load_checkpoint

        path = resolve_checkpoint(name_or_path)
        model, config = load_model(path, allow_partial=allow_partial, overrides=overrides,
                                   max_detections=max_detections)
        payload = load_checkpoint(path)
        ids, names = checkpoint_categories(payload, model.num_classes)
        origin = {"kind": "catalogue" if "source" in payload else "checkpoint", "weights": str(name_or_path),
                  "checkpoint": str(path), **({"source": payload["source"]} if "source" in payload else {})}
        return cls(Predictor(model, config, device), ids, names, origin, gate, keypoint_schema(payload, config))

    @property
    def config(self) -> Config:
        return self.predictor.config

    def predict(self, image: np.ndarray) -> tuple[Instances, float]:
        """``(H, W, 3)`` uint8 RGB -> every detection above the model's own floor, and the seconds the
        model took. Callers run it through :attr:`gate` (``service.gate.run(service.predict, image)``)."""
        start = time.perf_counter()
        found = self.predictor(image)
        return found, time.perf_counter() - start

    def to_json(self, instances: Instances) -> list[dict[str, Any]]:
        """:func:`instances_to_json` with this model's categories."""
        return instances_to_json(instances, self.category_ids, self.names)

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` says: preset, classes, input convention, weights' origin."""
        config, inputs = self.config, self.config.input
        return {
            "preset": config.name,
            "architecture": type(self.predictor.model).__name__,
            "num_classes": len(self.names),
            "classes": [{"label": k, "category_id": cid, "name": name}
                        for k, (cid, name) in enumerate(zip(self.category_ids, self.names))],
            "input": {"color": "RGB uint8 as decoded from the image file; the model normalizes",
                      "channel_order": inputs.channel_order, "pixel_mean": list(inputs.pixel_mean),
                      "pixel_std": list(inputs.pixel_std), "min_size_test": inputs.min_size_test,
                      "max_size_test": inputs.max_size_test, "square": inputs.square},
            "score_floor": float(config.model.inference.score_thresh),
            "keypoints": None if self.keypoints is None else {
                "names": list(self.keypoints.names), "skeleton": [list(pair) for pair in self.keypoints.skeleton],
                "threshold": self.keypoint_threshold},
            "device": str(self.predictor.device),
            "weights": self.origin,
        }
