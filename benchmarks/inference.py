"""CPU inference time of a preset with a per-stage breakdown, plain path vs fast paths, interleaved.

    python benchmarks/inference.py [--preset mask_rcnn_r50_fpn] [--size 800] [--threads 2] [--repeats 5]
                                   [--variants plain,fast,bf16]

Variants (one model, switched per call):

* ``plain``: FrozenBatchNorm2d applied after each conv, NCHW feature maps (``fast_paths`` off);
* ``fast``: the defaults: frozen norms folded into the convs, channels-last maps (float32, the
  same detections up to float rounding: ``tests/detectors/test_inference_optimizations.py``);
* ``bf16``: ``fast`` under ``torch.autocast("cpu", torch.bfloat16)``: convolutions and matrix
  products in bfloat16 (AMX where the CPU has it). A separate mode: outputs differ slightly.

Weights are random, so the score threshold is 0 and the model returns its full
``detections_per_image`` (100), as a trained model does on a busy image. The image is given at the
model's input size (800 x 1216 for R-CNN presets at 800; YOLACT: size x size), so no resizing
happens; masks are pasted at full resolution. Variants run alternately, and medians are compared,
because other work on the machine makes single timings noisy; the load average is printed, and
CPU time (all threads together) as a second, less load-sensitive measure. Stage times come from
the detectors' ``torch.profiler.record_function`` labels, in separate profiled runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402

from instaseg.engine.bench import stage_times  # noqa: E402
from instaseg.hub import build_bench_model  # noqa: E402
from instaseg.layers.fusion import fast_paths  # noqa: E402

VARIANTS = ("plain", "fast", "bf16")


def variant_context(name: str) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    if name == "plain":
        stack.enter_context(fast_paths(fold_batchnorm=False, channels_last=False))
    elif name == "bf16":
        stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
    elif name != "fast":
        raise ValueError(f"unknown variant {name!r}; choose among {VARIANTS}")
    return stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mask_rcnn_r50_fpn")
    parser.add_argument("--size", type=int, default=800, help="shorter side (YOLACT: the square side)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default="plain,fast", help=f"comma-separated among {', '.join(VARIANTS)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    variants = args.variants.split(",")
    model, (h, w), name = build_bench_model(args.preset, size=args.size)
    model.eval()
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    detections = {}
    for variant in variants:  # warm-up (folding caches, allocator) and the detection counts
        with variant_context(variant):
            detections[variant] = len(model.predict([image])[0])
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeats):
        for variant in variants:
            with variant_context(variant):
                start, start_cpu = time.perf_counter(), time.process_time()
                model.predict([image])
                wall[variant].append((time.perf_counter() - start) * 1000)
                cpu[variant].append((time.process_time() - start_cpu) * 1000)
    stages = {}
    for variant in variants:
        with variant_context(variant):
            stages[variant] = stage_times(lambda: model.predict([image]))
    print(f"{name}, {h}x{w}, {args.threads} threads, torch {torch.__version__}, "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} (2 cores)")
    print(f"detections: {', '.join(f'{v} {n}' for v, n in detections.items())}")
    rows = [[v, f"{statistics.median(wall[v]):.0f}", f"{min(wall[v]):.0f}", f"{max(wall[v]):.0f}",
             f"{statistics.median(cpu[v]):.0f}"] for v in variants]
    print(markdown_table(["variant", "median ms", "min ms", "max ms", "CPU ms (all threads)"], rows))
    labels = list(dict.fromkeys(label for v in variants for label in stages[v]))
    rows = [[label] + [f"{stages[v].get(label, 0.0):.0f}" for v in variants] for label in labels]
    rows.append(["(sum of stages)"] + [f"{sum(stages[v].values()):.0f}" for v in variants])
    print(markdown_table(["stage (ms, one profiled run)"] + variants, rows))


if __name__ == "__main__":
    main()
