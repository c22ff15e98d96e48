"""Speed of instaseg's pure-PyTorch ops on the CPU, beside the targets from torchvision's kernels.

    python benchmarks/ops.py [--threads 2] [--repeats 7]

Targets were measured with torchvision's compiled CPU kernels on the same machine kind (2 threads).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table, time_call  # noqa: E402

from instaseg.ops import deform_conv2d, nms, roi_align  # noqa: E402


def random_boxes(n: int, height: float, width: float, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * torch.tensor([width, height])
    wh = torch.rand(n, 2, generator=generator) * torch.tensor([width, height]) * 0.3 + 4
    return torch.cat([xy, xy + wh], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    rows = []

    def add(name: str, fn, target: str) -> None:
        median, low, high = time_call(fn, args.repeats)
        rows.append([name, f"{median:.1f}", f"{low:.1f}", f"{high:.1f}", target])
        print(f"{name}: {median:.1f} ms", flush=True)

    features = torch.randn(1, 256, 200, 304, generator=g)
    # boxes in image pixels of an 800 x 1216 image, pooled from the stride-4 map
    rois_1000 = torch.cat([torch.zeros(1000, 1), random_boxes(1000, 800, 1216, g)], dim=1)
    rois_100 = rois_1000[:100]
    with torch.no_grad():
        add("roi_align 1000 boxes -> 7x7", lambda: roi_align(features, rois_1000, 7, 0.25, 2, True), "<= 480")
        add("roi_align 100 boxes -> 14x14", lambda: roi_align(features, rois_100, 14, 0.25, 2, True), "<= 95")
    grad_features = features.clone().requires_grad_(True)
    add("roi_align 1000 -> 7x7, fwd+bwd",
        lambda: roi_align(grad_features, rois_1000, 7, 0.25, 2, True).sum().backward(), "-")

    boxes = random_boxes(5000, 800, 1216, g)
    scores = torch.rand(5000, generator=g)
    add("nms 5000 boxes (IoU 0.5)", lambda: nms(boxes, scores, 0.5), "<= 55")
    add("nms 5000 boxes (IoU 0.7)", lambda: nms(boxes, scores, 0.7), "-")

    x = torch.randn(1, 256, 64, 64, generator=g)
    weight = torch.randn(256, 256, 3, 3, generator=g) * 0.02
    offset = torch.randn(1, 18, 64, 64, generator=g) * 2
    mask = torch.rand(1, 9, 64, 64, generator=g)
    with torch.no_grad():
        add("deform_conv2d 3x3 256->256, 64x64 (DCNv2)",
            lambda: deform_conv2d(x, offset, weight, padding=(1, 1), mask=mask), "<= 150")
        add("conv2d 3x3 256->256, 64x64 (reference)", lambda: F.conv2d(x, weight, padding=1), "22")

    print()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} runs")
    print(markdown_table(["op", "median ms", "min ms", "max ms", "target ms"], rows))


if __name__ == "__main__":
    main()
