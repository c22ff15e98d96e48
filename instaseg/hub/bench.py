"""``instaseg bench``'s model: a preset with random weights, or a checkpoint, at the benchmark's image size.

The measuring itself is ``instaseg.engine.bench`` (model-agnostic); this builds what it measures.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from instaseg.config.io import apply_overrides, config_from_dict
from instaseg.data.image_io import IMAGE_EXTENSIONS
from instaseg.detectors.build import resolve_config
from instaseg.engine.bench import (BenchResult, bench_image_size, bench_images, benchmark_model, peak_memory,
                                   time_iterations)
from instaseg.engine.allocator import malloc_setting
from instaseg.engine.checkpoint import load_checkpoint, load_state_dict_checked
from instaseg.engine.int8 import load_calibration_images, quantize_int8
from instaseg.errors import InstasegError
from instaseg.hub.build import model_from_config

__all__ = ["build_bench_model", "run_benchmark", "run_modes", "calibration_images", "MODES"]

# ``instaseg bench --modes``: mode -> (precision, torch.compile, runtime).
MODES: dict[str, tuple[str, bool, str]] = {
    "float32": ("float32", False, "pytorch"),
    "bf16": ("bf16", False, "pytorch"),
    "compile": ("float32", True, "pytorch"),
    "bf16+compile": ("bf16", True, "pytorch"),
    "onnxruntime": ("float32", False, "onnxruntime"),
    "int8": ("int8", False, "pytorch"),
}


def build_bench_model(preset: str, checkpoint: str | None = None, size: int = 800,
                      score_thresh: float | None = None,
                      overrides: Sequence[str] = ()) -> tuple[nn.Module, tuple[int, int], str]:
    """The model to measure, the image size ``(H, W)`` it sees (no resizing inside it), its name.

    Without ``checkpoint``: the preset with random weights and, unless given, score threshold 0.
    With one: its config and weights (then ``preset`` is ignored) and its own threshold.
    ``overrides`` (``"key=value"``, ``--set``) come last, e.g. ``model.inference.detections_per_image=100``.
    """
    payload = load_checkpoint(checkpoint) if checkpoint else None
    config = config_from_dict(payload["config"]) if payload else resolve_config(preset)
    height, width = bench_image_size(config.input, size)
    bench_settings = []
    if config.input.square > 0:
        bench_settings.append(f"input.square={size}")
    else:
        bench_settings += [f"input.min_size_test={min(height, width)}", f"input.max_size_test={max(height, width)}"]
    if score_thresh is None and payload is None:
        score_thresh = 0.0
    if score_thresh is not None:
        bench_settings.append(f"model.inference.score_thresh={score_thresh}")
    model = model_from_config(apply_overrides(config, [*bench_settings, *overrides]))
    if payload is not None:
        load_state_dict_checked(model, payload["model"], False, source=str(checkpoint))
    return model, (height, width), config.name


def run_benchmark(preset: str, *, checkpoint: str | None = None, size: int = 800, device: str = "cpu",
                  threads: int | None = None, iters: int = 5, warmup: int = 1, train: bool = False,
                  batch_size: int | None = None, precision: str = "float32", compile: bool = False,
                  score_thresh: float | None = None, stages: bool = True, flops: bool = True,
                  calibration: str | None = None, overrides: Sequence[str] = ()) -> BenchResult:
    """Build ``preset`` (or load ``checkpoint``) and measure it (``instaseg.engine.bench.benchmark_model``).

    ``batch_size`` defaults to 1 image for inference and 2 for training; ``size`` is the shorter
    image side (YOLACT: the square side). ``threads`` sets ``torch.set_num_threads`` when given.
    ``precision="int8"``: the backbone, FPN and head convolutions quantized (``instaseg.engine.int8``),
    calibrated on the images of the folder ``calibration`` (:func:`calibration_images`); inference on
    the CPU only. ``overrides``: config changes (:func:`build_bench_model`).
    """
    if precision == "int8" and train:
        raise InstasegError("int8 is for inference (training keeps float32 weights): drop --train or int8")
    if precision == "int8" and device != "cpu":
        raise InstasegError("int8 runs on the CPU (PyTorch's quantized kernels): drop --device or int8")
    model, image_size, name = _seeded_bench_model(preset, checkpoint, size, score_thresh, threads, overrides)
    if precision == "int8":
        quantize_int8(model, calibration_images(calibration, image_size))
    return benchmark_model(model, image_size, name, device=device, iters=iters, warmup=warmup, train=train,
                           batch_size=batch_size, precision=precision, compile=compile, stages=stages, flops=flops)


def _seeded_bench_model(preset: str, checkpoint: str | None, size: int, score_thresh: float | None,
                        threads: int | None, overrides: Sequence[str] = ()) -> tuple[nn.Module, tuple[int, int], str]:
    """:func:`build_bench_model` after ``torch.set_num_threads(threads)`` (when given) and seed 0, so a
    preset's random weights are the same in every run and mode."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    return build_bench_model(preset, checkpoint, size, score_thresh, overrides)


def run_modes(preset: str, modes: list[str], *, checkpoint: str | None = None, size: int = 800,
              threads: int | None = None, iters: int = 5, warmup: int = 1, train: bool = False,
              batch_size: int | None = None, score_thresh: float | None = None,
              calibration: str | None = None, overrides: Sequence[str] = ()) -> list[BenchResult]:
    """Measure ``preset`` (or ``checkpoint``) in each of ``modes`` (keys of :data:`MODES`), each on a
    freshly built model with the same weights and images; no stage profile or FLOP count."""
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise InstasegError(f"unknown bench mode {unknown[0] if unknown else ''!r}: use some of {', '.join(MODES)}")
    if train and ("onnxruntime" in modes or "int8" in modes):
        raise InstasegError("the onnxruntime and int8 modes only predict: drop them or --train")
    results = []
    for mode in modes:
        precision, compile, runtime = MODES[mode]
        if runtime == "onnxruntime":
            model, image_size, name = _seeded_bench_model(preset, checkpoint, size, score_thresh, threads, overrides)
            results.append(_benchmark_onnxruntime(model, image_size, name, iters, warmup))
            continue
        results.append(run_benchmark(preset, checkpoint=checkpoint, size=size, threads=threads, iters=iters,
                                     warmup=warmup, train=train, batch_size=batch_size, precision=precision,
                                     compile=compile, score_thresh=score_thresh, stages=False, flops=False,
                                     calibration=calibration, overrides=overrides))
    return results


def calibration_images(folder: str | None, image_size: tuple[int, int] | None = None) -> list[torch.Tensor]:
    """``(3, H, W)`` float images for the int8 calibration: the first few images of ``folder`` (sorted
    by name; :func:`~instaseg.engine.int8.load_calibration_images`), or, without one, two synthetic
    images of ``image_size`` (noise: right for timing, not for accuracy; give the user's own images)."""
    if folder is None:
        if image_size is None:
            raise ValueError("calibration_images: give a folder or the synthetic images' size")
        return bench_images(image_size, 2, torch.Generator().manual_seed(1))
    if not Path(folder).is_dir():
        raise InstasegError(f"--calibration {folder}: not a folder")
    paths = sorted(path for path in Path(folder).iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise InstasegError(f"--calibration {folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return load_calibration_images(paths)


def _benchmark_onnxruntime(model: nn.Module, image_size: tuple[int, int], name: str, iters: int,
                           warmup: int) -> BenchResult:
    """Export ``model`` for ``image_size`` (a static graph) and time ONNX Runtime on one image."""
    from instaseg.export.exporters import OnnxPredictor, export_onnx

    malloc = malloc_setting()
    image = bench_images(image_size, 1, torch.Generator().manual_seed(0))[0]
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model.eval(), Path(folder) / "model.onnx", example=image_size, dynamic=False)
        predictor = OnnxPredictor(path, num_threads=torch.get_num_threads())
        first = predictor.run(image)
        with peak_memory("cpu") as memory:
            times = time_iterations(lambda: predictor.run(image), iters, warmup=max(0, warmup - 1))
    return BenchResult(preset=name, mode="inference", device="cpu", image_size=image_size, batch_size=1,
                       threads=torch.get_num_threads(), precision="float32", compiled=False, times_ms=times,
                       peak_memory_mb=float(memory["mb"]), memory_kind=str(memory["kind"]),
                       num_detections=len(first[0]), runtime="onnxruntime", malloc=malloc)
