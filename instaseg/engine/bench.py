"""Speed, memory and FLOPs of a model preset: what ``instaseg bench`` measures and prints.

Model-agnostic: :func:`benchmark_model` measures the model it is handed; ``instaseg.hub.run_benchmark``
builds it from a preset or checkpoint first.

Inference: ``model.predict`` on one image of the requested size, given at the model's input size so
that no resizing happens. Random weights score every class alike, so without a checkpoint the score
threshold is 0 and the model returns its full ``detections_per_image`` (100), as a trained model
does on a busy image. Training (``train=True``): one iteration, forward + loss + backward + SGD
step, on a batch of synthetic images with a few random boxes and masks each.

Stage times come from the ``torch.profiler.record_function("instaseg.<stage>")`` labels the
detectors carry, in separate profiled runs (the profiler's overhead stays out of the timings).
GFLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``: convolutions (transposed
too), linear layers and matrix products, i.e. nearly all of a detector's arithmetic; it does not
count element-wise work, RoIAlign's gathers, ``grid_sample`` (the deformable convolution's
sampling; its matrix product is counted) or NMS.
"""

from __future__ import annotations

import contextlib
import resource
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from instaseg.config.schema import InputConfig
from instaseg.detectors.base import Detector
from instaseg.engine.allocator import malloc_setting
from instaseg.engine.compile import DENSE_PARTS, compile_parts
from instaseg.engine.int8 import is_int8
from instaseg.engine.precision import autocast, autocast_dtype, float32_outputs
from instaseg.structures.instances import Targets

__all__ = ["BenchResult", "STAGE_GROUPS", "bench_image_size", "synthetic_targets", "time_iterations", "stage_times",
           "count_gflops", "peak_memory", "benchmark_model", "format_result", "format_modes", "result_summary",
           "bench_images", "train_step", "predict_step"]

# Detector stage labels -> the groups the summary reports (Mask R-CNN and YOLACT labels alike).
STAGE_GROUPS: dict[str, str] = {
    "preprocess": "preprocess",
    "backbone": "backbone",
    "neck": "neck",
    "rpn": "proposals",
    "proposals": "proposals",
    "prediction_head": "proposals",
    "box_roi_pool": "roi_heads",
    "box_head": "roi_heads",
    "detect": "roi_heads",
    "mask_head": "masks",
    "maskiou_head": "masks",
    "protonet": "masks",
    "masks": "masks",
    "rescoring": "masks",
    "suppress": "postprocess",
    "paste": "postprocess",
    "loss": "loss",
    "backward": "backward",
    "optimizer": "optimizer",
}

# Width / height of the benchmark image for R-CNN presets: COCO's typical 4:3 to 3:2 aspect,
# 800 x 1216 at the default 800 px (the size torchvision's and Detectron2's speed figures use).
_ASPECT = 1.52


@dataclass
class BenchResult:
    """Timings (ms) are per iteration of ``batch_size`` images; the properties give per image."""

    preset: str
    mode: str  # "inference" or "train"
    device: str
    image_size: tuple[int, int]  # (H, W) the model sees
    batch_size: int
    threads: int
    precision: str  # "float32", "bf16" (autocast: instaseg.engine.precision) or "int8" (instaseg.engine.int8)
    compiled: bool
    times_ms: list[float]
    peak_memory_mb: float
    memory_kind: str  # what peak_memory_mb measures
    stages_ms: dict[str, float] = field(default_factory=dict)  # per label, per iteration
    gflops: float | None = None  # per image
    num_detections: int | None = None  # inference: detections in the first image
    runtime: str = "pytorch"  # or "onnxruntime" (the exported graph)
    malloc: str = "system"  # or "reuse": freed memory kept for reuse (instaseg.engine.allocator)

    @property
    def label(self) -> str:
        """The mode in words: "float32", "bf16", "float32 + compile", "onnxruntime"."""
        if self.runtime != "pytorch":
            return self.runtime
        return self.precision + (" + compile" if self.compiled else "")

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms) / self.batch_size

    @property
    def min_ms(self) -> float:
        return min(self.times_ms) / self.batch_size

    @property
    def max_ms(self) -> float:
        return max(self.times_ms) / self.batch_size

    @property
    def images_per_s(self) -> float:
        return 1000.0 / self.median_ms

    def stage_groups(self) -> dict[str, float]:
        """Stage times summed by :data:`STAGE_GROUPS` (ms per image), in pipeline order."""
        groups: dict[str, float] = defaultdict(float)
        for name, ms in self.stages_ms.items():
            groups[STAGE_GROUPS.get(name, "other")] += ms / self.batch_size
        order = list(dict.fromkeys(STAGE_GROUPS.values())) + ["other"]
        return {name: groups[name] for name in order if name in groups}


def bench_image_size(input_config: InputConfig, size: int) -> tuple[int, int]:
    """(H, W) of the benchmark image: ``size x size`` for YOLACT (square input), else ``size`` by
    ``1.52 size`` rounded to the model's size divisibility (800 -> 800 x 1216)."""
    if input_config.square > 0:
        return size, size
    divisor = max(1, input_config.size_divisibility)
    return size, int(round(size * _ASPECT / divisor)) * divisor


def bench_images(image_size: tuple[int, int], count: int, generator: torch.Generator) -> list[Tensor]:
    """``count`` random ``(3, H, W)`` images in [0, 255] (the benchmark's inputs)."""
    return [torch.rand(3, *image_size, generator=generator) * 255 for _ in range(count)]


def synthetic_targets(image_size: tuple[int, int], num_classes: int, num_objects: int = 4,
                      generator: torch.Generator | None = None, num_keypoints: int = 0) -> Targets:
    """Random rectangles (boxes, labels, filled masks) in an image of ``image_size = (H, W)``, with
    ``num_keypoints`` labelled keypoints (v = 2) inside each box when asked (keypoint models)."""
    h, w = image_size
    corners = torch.rand(num_objects, 2, generator=generator) * torch.tensor([w * 0.7, h * 0.7])
    sizes = (0.1 + 0.2 * torch.rand(num_objects, 2, generator=generator)) * torch.tensor([w, h])
    boxes = torch.cat([corners, corners + sizes], dim=1).floor()
    masks = torch.zeros(num_objects, h, w, dtype=torch.bool)
    for k, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        masks[k, y1:y2, x1:x2] = True
    labels = torch.randint(num_classes, (num_objects,), generator=generator)
    keypoints = None
    if num_keypoints:
        where = torch.rand(num_objects, num_keypoints, 2, generator=generator)
        xy = boxes[:, None, :2] + where * (boxes[:, None, 2:] - boxes[:, None, :2])
        keypoints = torch.cat([xy, torch.full((num_objects, num_keypoints, 1), 2.0)], dim=2)
    return Targets(boxes, labels, masks, keypoints=keypoints)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(fn: Callable[[], object], iters: int, warmup: int = 1,
                    device: torch.device | str = "cpu") -> list[float]:
    """Wall-clock milliseconds of each of ``iters`` calls of ``fn`` after ``warmup`` calls."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def stage_times(fn: Callable[[], object], runs: int = 1) -> dict[str, float]:
    """Mean milliseconds per call of each ``instaseg.<stage>`` label seen while running ``fn``.

    Host-side times: on CUDA a stage's asynchronous kernels may finish in a later stage.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("instaseg."):
            totals[event.key[len("instaseg."):]] += event.cpu_time_total / 1000.0 / runs
    return dict(totals)


def count_gflops(fn: Callable[[], object]) -> float:
    """Floating-point operations (GFLOP, a multiply-add counts 2) of one call of ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


def _read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_high_water_mark() -> bool:
    """Reset ``VmHWM`` to the current RSS; False where that is refused or has no effect (some
    sandboxes accept the write to ``clear_refs`` and ignore it)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    hwm, rss = _read_status_kb("VmHWM"), _read_status_kb("VmRSS")
    return hwm is not None and rss is not None and hwm - rss < 4096  # within 4 MiB: it took


@contextlib.contextmanager
def peak_memory(device: torch.device | str) -> Iterator[dict[str, float | str]]:
    """Peak memory while the block runs, in ``result["mb"]`` (filled on exit), and its meaning.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). CPU: the process's resident set
    high-water mark (Linux ``VmHWM``, reset first through ``/proc/self/clear_refs``); where that
    cannot be reset, the lifetime peak (``ru_maxrss``), which includes model building.
    """
    device = torch.device(device)
    result: dict[str, float | str] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        result["mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["kind"] = "torch.cuda.max_memory_allocated"
        return
    reset = _reset_rss_high_water_mark()
    yield result
    hwm = _read_status_kb("VmHWM")
    if reset and hwm is not None:
        result["mb"], result["kind"] = hwm / 1024, "peak RSS"
    else:
        result["mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["kind"] = "peak RSS (process lifetime)"


def predict_step(model: Detector, images: list[Tensor], precision: str = "float32",
                 device: torch.device = torch.device("cpu")) -> Callable[[], object]:
    """A closure running ``model.predict(images)`` once (eval mode, autocast for ``precision``; "int8":
    a model :func:`instaseg.engine.int8.quantize_int8` converted, run as it is)."""
    model.eval()
    if precision == "int8" and not is_int8(model):
        raise ValueError("precision int8 measures a model quantize_int8 has converted")
    dtype = None if precision == "int8" else autocast_dtype(precision, device)

    def step() -> object:
        with autocast(dtype, device):
            return model.predict(images)

    return step


def train_step(model: Detector, images: list[Tensor], targets: list[Targets], precision: str = "float32",
               device: torch.device = torch.device("cpu")) -> Callable[[], object]:
    """A closure running one training iteration (forward under autocast for ``precision``, loss on
    float32 outputs, backward, an SGD step at a tiny learning rate so every call does the same work)."""
    from torch.profiler import record_function

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # A tiny learning rate: the weights barely move, so every timed iteration does the same work.
    optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9)

    dtype = autocast_dtype(precision, device)

    def step() -> object:
        optimizer.zero_grad(set_to_none=True)
        with autocast(dtype, device):
            raw = model(images, targets)
        with record_function("instaseg.loss"):
            total, _ = model.loss(float32_outputs(raw), targets)
        with record_function("instaseg.backward"):
            total.backward()
        with record_function("instaseg.optimizer"):
            optimizer.step()
        return total

    return step


def benchmark_model(model: Detector, image_size: tuple[int, int], name: str, *, device: str = "cpu",
                    iters: int = 5, warmup: int = 1, train: bool = False, batch_size: int | None = None,
                    precision: str = "float32", compile: bool = False, stages: bool = True,
                    flops: bool = True) -> BenchResult:
    """Measure ``model`` (any detector: ``predict``, ``forward`` + ``loss``, ``num_classes``) on synthetic
    images of ``image_size = (H, W)``; see the module docstring. ``name`` labels the result.

    ``batch_size`` defaults to 1 image for inference and 2 for training. Building the model from a
    preset or checkpoint is the caller's (``instaseg.hub.run_benchmark``).
    """
    torch_device = torch.device(device)
    malloc = malloc_setting()
    height, width = image_size
    model.to(torch_device)
    if compile:  # one image size: static graphs; inference folds the weights in (freezing)
        compile_parts(model, DENSE_PARTS, dynamic=False, freeze=not train, training=train)
    batch = batch_size or (2 if train else 1)
    generator = torch.Generator().manual_seed(0)
    images = [image.to(torch_device) for image in bench_images((height, width), batch, generator)]
    if train:
        keypoint_head = getattr(model, "keypoint_head", None)
        num_keypoints = 0 if keypoint_head is None else keypoint_head.num_keypoints
        targets = [synthetic_targets((height, width), model.num_classes, generator=generator,
                                     num_keypoints=num_keypoints).to(torch_device) for _ in range(batch)]
        step = train_step(model, images, targets, precision, torch_device)
    else:
        step = predict_step(model, images, precision, torch_device)
    first = step()  # warm-up, and the detections to report
    with peak_memory(torch_device) as memory:
        times = time_iterations(step, iters, warmup=max(0, warmup - 1), device=torch_device)
    result = BenchResult(
        preset=name, mode="train" if train else "inference",
        device=str(torch_device), image_size=(height, width), batch_size=batch, threads=torch.get_num_threads(),
        precision=precision, compiled=compile, times_ms=times, peak_memory_mb=float(memory["mb"]),
        memory_kind=str(memory["kind"]),
        num_detections=None if train else len(first[0]), malloc=malloc,
    )
    if stages:
        result.stages_ms = stage_times(step)
    if flops and not compile and precision != "int8":  # the counter knows no quantized kernels
        result.gflops = count_gflops(step) / batch
    return result


def format_modes(results: list[BenchResult]) -> str:
    """One markdown table of several modes of one model (the first is the baseline of the last column)."""
    first = results[0]
    h, w = first.image_size
    lines = [f"{first.preset}: {first.mode}, {first.device}, {first.threads} threads, {h}x{w}, "
             f"batch {first.batch_size}, torch {torch.__version__}, malloc {first.malloc}", "",
             f"| mode | ms / image | images / s | peak memory (MiB) | time vs {first.label} |", "|---|---|---|---|---|"]
    for result in results:
        lines.append(f"| {result.label} | {result.median_ms:.1f} | {result.images_per_s:.2f} | "
                     f"{result.peak_memory_mb:.0f} | {result.median_ms / first.median_ms:.2f} |")
    return "\n".join(lines)


def result_summary(result: BenchResult) -> dict[str, object]:
    """``result`` as plain JSON values (``instaseg bench --json``)."""
    return {
        "preset": result.preset, "mode": result.mode, "label": result.label, "runtime": result.runtime,
        "device": result.device, "image_size": list(result.image_size), "batch_size": result.batch_size,
        "threads": result.threads, "precision": result.precision, "compiled": result.compiled,
        "times_ms": result.times_ms, "median_ms": result.median_ms, "min_ms": result.min_ms, "max_ms": result.max_ms,
        "images_per_s": result.images_per_s, "peak_memory_mb": result.peak_memory_mb,
        "memory_kind": result.memory_kind, "stages_ms": result.stages_ms, "stage_groups_ms": result.stage_groups(),
        "gflops": result.gflops, "num_detections": result.num_detections, "torch": torch.__version__,
        "malloc": result.malloc,
    }


_PRECISION_NOTES = {"bf16": " (bf16 autocast: outputs differ slightly from float32)",
                    "int8": " (backbone, FPN and head convolutions in int8: outputs differ slightly from float32)"}


def format_result(result: BenchResult) -> str:
    """A few lines and a markdown table of stages, for the terminal."""
    h, w = result.image_size
    lines = [
        f"{result.preset}: {result.mode}, {result.device}, {result.threads} threads, {result.precision}"
        f"{_PRECISION_NOTES.get(result.precision, '')}"
        f"{', torch.compile' if result.compiled else ''}, {h}x{w}, batch {result.batch_size}, "
        f"torch {torch.__version__}, malloc {result.malloc}",
        f"per image: median {result.median_ms:.1f} ms (min {result.min_ms:.1f}, max {result.max_ms:.1f}) over "
        f"{len(result.times_ms)} iterations; {result.images_per_s:.2f} images/s",
        f"peak memory: {result.peak_memory_mb:.0f} MiB ({result.memory_kind})",
    ]
    if result.gflops is not None:
        lines.append(f"GFLOPs per image: {result.gflops:.1f} (convolutions, linear layers, matrix products)")
    if result.num_detections is not None:
        lines.append(f"detections: {result.num_detections}")
    if result.stages_ms:
        total = sum(result.stages_ms.values()) / result.batch_size
        lines += ["", "| stage | group | ms per image |", "|---|---|---|"]
        for name, ms in result.stages_ms.items():
            lines.append(f"| {name} | {STAGE_GROUPS.get(name, 'other')} | {ms / result.batch_size:.1f} |")
        lines.append(f"| (all stages) | | {total:.1f} |")
        lines += ["", "| group | ms per image |", "|---|---|"]
        lines += [f"| {name} | {ms:.1f} |" for name, ms in result.stage_groups().items()]
    return "\n".join(lines)
