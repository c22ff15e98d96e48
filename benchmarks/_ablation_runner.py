"""Training and evaluation of one ablation run (one training, one seed) for ``benchmarks/ablations.py``.

A run lives in ``work_dir/<training>-s<seed>/``. Its ``result.json`` (written last, atomically)
holds the metrics of every inference-only evaluation; a run whose ``result.json`` exists is
skipped, and a run interrupted during training resumes from its ``checkpoints/last.pt``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from _ablation_specs import Evaluation, Family, Training
from ms_rcnn import mask_iou_pairs, pearson

from instaseg.config.io import apply_overrides
from instaseg.config.presets import get_preset
from instaseg.config.schema import Config
from instaseg.engine.evaluate import evaluate_model
from instaseg.evaluation.tables import AP_KEYS
from instaseg.hub import load_model, train_on_dataset

__all__ = ["Schedule", "run_name", "build_config", "run_training", "evaluate_variant", "read_result"]


@dataclass(frozen=True)
class Schedule:
    """What every run shares: extra ``--set`` overrides, device, threads; ``iterations`` set: every
    run's iterations, else each model kind's of the family (``Family.iterations_for``)."""

    iterations: int | None = None
    overrides: tuple[str, ...] = ()
    device: str = "cpu"
    keep_checkpoints: bool = False
    progress: bool = False

    def iterations_for(self, training: Training, family: Family) -> int:
        return self.iterations or training.iterations or family.iterations_for(training.model)


def run_name(training: Training, iterations: int, seed: int) -> str:
    """The folder of one run: its schedule is in the name, so other schedules never resume it."""
    return f"{training.name}-{iterations}it-s{seed}"


def build_config(training: Training, family: Family, num_classes: int, schedule: Schedule, seed: int) -> Config:
    """The preset of ``training`` with the family settings, the training's overrides, the fixed
    schedule (cosine decay over the run's iterations, warmup a fifth at most) and ``seed``."""
    config = get_preset(family.presets[training.model])
    n = schedule.iterations_for(training, family)
    train = replace(config.train, max_iter=n, steps=(), max_epochs=0, step_epochs=(), schedule="cosine",
                    warmup_iters=min(config.train.warmup_iters, n // 5), checkpoint_period=max(n // 4, 100),
                    eval_period=0, seed=seed)
    config = replace(config, model=replace(config.model, num_classes=num_classes), train=train)
    items = list(family.settings.get(training.model, ())) + list(training.overrides) + list(schedule.overrides)
    return apply_overrides(config, items) if items else config


class _ScoredPredictor(nn.Module):
    """``predict`` of a trained model, timed per call, optionally without its mask scores."""

    def __init__(self, model: nn.Module, mask_scores: bool, device: torch.device) -> None:
        super().__init__()
        self.model, self.mask_scores, self.device = model, mask_scores, device
        self.call_ms: list[float] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def predict(self, images: list[torch.Tensor]) -> list[Any]:
        images = [image.to(self.device) for image in images]
        self._sync()
        start = time.perf_counter()
        results = self.model.predict(images)
        self._sync()
        self.call_ms.append((time.perf_counter() - start) * 1000.0 / max(len(images), 1))
        if not self.mask_scores:  # rank masks by the class score: the model without its scoring
            results = [replace(r, mask_scores=None) for r in results]
        return [r.to("cpu") for r in results]


def _timed_suppression(model: nn.Module, times: list[float]) -> bool:
    """Wrap the YOLACT suppression step (``_suppress``) of this model instance to time it."""
    inner = getattr(model, "_suppress", None)
    if inner is None:
        return False

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        times.append((time.perf_counter() - start) * 1000.0)
        return out

    model._suppress = timed  # instance attribute: removed again after the evaluation
    return True


def evaluate_variant(model: nn.Module, config: Config, val_set: Any, evaluation: Evaluation,
                     device: torch.device) -> dict[str, Any]:
    """COCO metrics (fractions) of ``model`` evaluated as ``evaluation``, plus inference times.

    The inference settings are swapped on the trained model and restored afterwards, so every
    evaluation of one run sees the same weights. Times: median milliseconds per image of
    ``predict`` and, for YOLACT, of the suppression step (the median leaves out the slow first call).
    """
    inference = config.model.inference
    if evaluation.inference:
        items = [f"model.inference.{item}" for item in evaluation.inference]
        inference = apply_overrides(config, items).model.inference
    saved, model.inference_config = model.inference_config, inference
    suppress_ms: list[float] = []
    wrapped = _timed_suppression(model, suppress_ms)
    try:
        predictor = _ScoredPredictor(model, evaluation.mask_scores, device)
        metrics = evaluate_model(predictor, val_set, num_workers=0, progress=False)
    finally:
        model.inference_config = saved
        if wrapped:
            del model._suppress
    out: dict[str, Any] = {t: {k: _finite(metrics[t][k]) for k in AP_KEYS} for t in ("segm", "bbox")}
    out["ms_per_image"] = statistics.median(predictor.call_ms) if predictor.call_ms else None
    out["suppress_ms_per_image"] = statistics.median(suppress_ms) if suppress_ms else None
    return out


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The finished run's ``result.json``, or None."""
    path = run_dir / "result.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run_training(training: Training, family: Family, seed: int, schedule: Schedule, train_set: Any,
                 val_set: Any, work_dir: Path) -> dict[str, Any]:
    """Train ``training`` with ``seed`` (or resume it), evaluate every variant, write ``result.json``.

    Returns the result (read back when the run was already finished). Raises ``RuntimeError``
    when training was interrupted (its checkpoint stays, so the next call resumes).
    """
    iterations = schedule.iterations_for(training, family)
    run_dir = work_dir / run_name(training, iterations, seed)
    done = read_result(run_dir)
    if done is not None:
        return done
    config = build_config(training, family, train_set.num_classes, schedule, seed)
    start = time.perf_counter()
    last = run_dir / "checkpoints" / "last.pt"
    summary = train_on_dataset(config, train_set, run_dir, resume=last.is_file(), progress=schedule.progress,
                               log_period=max(iterations // 4, 1), device=schedule.device)
    if summary["status"] != "finished":
        raise RuntimeError(f"{run_dir}: training {summary['status']}; run the same command again to resume")
    train_seconds = time.perf_counter() - start
    device = torch.device(schedule.device)
    model, _ = load_model(summary["last_checkpoint"])
    model.to(device).eval()
    evaluations = {ev.name: evaluate_variant(model, config, val_set, ev, device) for ev in training.evaluations}
    if getattr(model, "maskiou_head", None) is not None:  # how well the MaskIoU head predicts the mask IoU
        evaluations["default"]["maskiou_pearson"] = _finite(pearson(*mask_iou_pairs(model, val_set, device)))
    result = {"training": training.name, "seed": seed, "preset": config.name, "model": training.model,
              "overrides": list(family.settings.get(training.model, ())) + list(training.overrides)
              + list(schedule.overrides),
              "iterations": iterations, "ims_per_batch": config.train.ims_per_batch,
              "train_seconds": round(train_seconds, 1), "evaluations": evaluations}
    _write_json(run_dir / "result.json", result)
    if not schedule.keep_checkpoints:  # ~100 MB per run; the table needs only result.json
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return result
