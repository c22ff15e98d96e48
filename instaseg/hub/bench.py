"""``instaseg bench``'s model: a preset with random weights, or a checkpoint, at the benchmark's image size.

The measuring itself is ``instaseg.engine.bench`` (model-agnostic); this builds what it measures.
"""

from __future__ import annotations

import torch
from torch import nn

from instaseg.config.io import apply_overrides, config_from_dict
from instaseg.detectors.build import resolve_config
from instaseg.engine.bench import BenchResult, bench_image_size, benchmark_model
from instaseg.engine.checkpoint import load_checkpoint, load_state_dict_checked
from instaseg.hub.build import model_from_config

__all__ = ["build_bench_model", "run_benchmark"]


def build_bench_model(preset: str, checkpoint: str | None = None, size: int = 800,
                      score_thresh: float | None = None) -> tuple[nn.Module, tuple[int, int], str]:
    """The model to measure, the image size ``(H, W)`` it sees (no resizing inside it), its name.

    Without ``checkpoint``: the preset with random weights and, unless given, score threshold 0.
    With one: its config and weights (then ``preset`` is ignored) and its own threshold.
    """
    payload = load_checkpoint(checkpoint) if checkpoint else None
    config = config_from_dict(payload["config"]) if payload else resolve_config(preset)
    height, width = bench_image_size(config.input, size)
    overrides = []
    if config.input.square > 0:
        overrides.append(f"input.square={size}")
    else:
        overrides += [f"input.min_size_test={min(height, width)}", f"input.max_size_test={max(height, width)}"]
    if score_thresh is None and payload is None:
        score_thresh = 0.0
    if score_thresh is not None:
        overrides.append(f"model.inference.score_thresh={score_thresh}")
    model = model_from_config(apply_overrides(config, overrides))
    if payload is not None:
        load_state_dict_checked(model, payload["model"], False, source=str(checkpoint))
    return model, (height, width), config.name


def run_benchmark(preset: str, *, checkpoint: str | None = None, size: int = 800, device: str = "cpu",
                  threads: int | None = None, iters: int = 5, warmup: int = 1, train: bool = False,
                  batch_size: int | None = None, precision: str = "float32", compile: bool = False,
                  score_thresh: float | None = None, stages: bool = True, flops: bool = True) -> BenchResult:
    """Build ``preset`` (or load ``checkpoint``) and measure it (``instaseg.engine.bench.benchmark_model``).

    ``batch_size`` defaults to 1 image for inference and 2 for training; ``size`` is the shorter
    image side (YOLACT: the square side). ``threads`` sets ``torch.set_num_threads`` when given.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)  # the random weights of a preset, the same in every run
    model, image_size, name = build_bench_model(preset, checkpoint, size, score_thresh)
    return benchmark_model(model, image_size, name, device=device, iters=iters, warmup=warmup, train=train,
                           batch_size=batch_size, precision=precision, compile=compile, stages=stages, flops=flops)
