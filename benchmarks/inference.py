"""CPU inference time of a Mask R-CNN preset, with a per-stage breakdown.

    python benchmarks/inference.py [--preset mask_rcnn_r50_fpn] [--size 800 1216] [--threads 2]

Weights are random, so the score threshold is set to 0 to make the model return its full
``detections_per_image`` (100) detections, as a trained model does on a busy image. The image is
given at the model's input size, so no resizing happens; masks are pasted at full resolution.
Stage times come from the detector's ``torch.profiler.record_function`` labels.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table, time_call  # noqa: E402

from instaseg.detectors.build import build_model  # noqa: E402


def stage_times(model, image: torch.Tensor, runs: int = 2) -> dict[str, float]:
    """Mean milliseconds per ``instaseg.*`` stage label over ``runs`` predictions."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            model.predict([image])
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("instaseg."):
            totals[event.key[len("instaseg."):]] += event.cpu_time_total / 1000.0 / runs
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mask_rcnn_r50_fpn")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = args.size
    model = build_model(args.preset, num_classes=80, input__min_size_test=min(h, w),
                        input__max_size_test=max(h, w), model__inference__score_thresh=0.0).eval()
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    detections = len(model.predict([image])[0])
    median, low, high = time_call(lambda: model.predict([image]), args.repeats, warmup=1)
    stages = stage_times(model, image)
    rows = [[name, f"{ms:.0f}"] for name, ms in stages.items()]
    print(f"{args.preset}, {h}x{w}, {detections} detections, {args.threads} threads, torch {torch.__version__}")
    print(f"per image: median {median:.0f} ms (min {low:.0f}, max {high:.0f}) over {args.repeats} runs")
    print(markdown_table(["stage", "ms"], rows))


if __name__ == "__main__":
    main()
