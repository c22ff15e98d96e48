"""Mask R-CNN R50-FPN inference: instaseg vs torchvision with torchvision's own compiled kernels.

    python benchmarks/inference_vs_torchvision.py [--size 800] [--threads 2] [--repeats 5] [--int8]

Needs a torchvision whose compiled ops run on this CPU, in the environment running the script
(for example a separate venv with ``pip install torch torchvision`` and ``numpy pillow pycocotools
tqdm pyyaml matplotlib``, the project on ``PYTHONPATH``); the project's own set-up has only
torchvision's Python code. One process, one image of ``size x 1.52 size`` (800x1216: both models
take it as it is, no resizing), random weights, score threshold 0 and 100 detections in both, so
both paste 100 masks at full resolution as on a busy image. Variants:

* ``instaseg``: ``mask_rcnn_r50_fpn`` with its own pure-PyTorch kernels (``fast_kernels(False)``);
* ``instaseg, torchvision kernels``: the same model handing RoIAlign / NMS to torchvision's;
* ``torchvision``: ``maskrcnn_resnet50_fpn`` (FrozenBatchNorm, its defaults otherwise);
* with ``--int8``, ``instaseg int8``: the first variant after ``quantize_int8`` (backbone, FPN and the
  heads' 3x3 convolutions in int8), calibrated on two other random images (timing only).

Variants run alternately and medians are compared; the C library's allocator setting
(``instaseg.engine.allocator``, process-wide) is printed: ``INSTASEG_MALLOC=system`` for glibc's defaults.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402

from instaseg.engine.allocator import malloc_setting  # noqa: E402
from instaseg.engine.int8 import quantize_int8  # noqa: E402
from instaseg.hub import build_model  # noqa: E402
from instaseg.ops import _dispatch  # noqa: E402

DETECTIONS = 100


def torchvision_predict(size: tuple[int, int]) -> Callable[[torch.Tensor], object]:
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, box_score_thresh=0.0,
                                  box_detections_per_img=DETECTIONS, min_size=min(size), max_size=max(size)).eval()
    return lambda image: model([image / 255.0])  # torchvision takes [0, 1] images


def instaseg_predict(size: tuple[int, int], own_kernels: bool, int8: bool = False) -> Callable[[torch.Tensor], object]:
    model = build_model("mask_rcnn_r50_fpn", num_classes=80, model__inference__score_thresh=0.0,
                        model__inference__detections_per_image=DETECTIONS, input__min_size_test=min(size),
                        input__max_size_test=max(size)).eval()
    if int8:
        generator = torch.Generator().manual_seed(1)
        quantize_int8(model, [torch.rand(3, *size, generator=generator) * 255 for _ in range(2)])

    def predict(image: torch.Tensor) -> object:
        with _dispatch.fast_kernels(not own_kernels):
            return model.predict([image])
    return predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=800, help="shorter side; the image is size x 1.52 size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--int8", action="store_true", help="also instaseg with int8 convolutions")
    args = parser.parse_args()
    if _dispatch.torchvision_ops() is None:
        raise SystemExit("torchvision's compiled ops do not run in this environment: see the docstring")
    import torchvision

    torch.set_num_threads(args.threads)
    malloc = malloc_setting()
    size = (args.size, int(round(args.size * 1.52 / 32)) * 32)
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0)) * 255
    torch.manual_seed(0)
    variants = {"instaseg": instaseg_predict(size, own_kernels=True),
                "instaseg, torchvision kernels": instaseg_predict(size, own_kernels=False),
                "torchvision": torchvision_predict(size)}
    if args.int8:
        variants["instaseg int8"] = instaseg_predict(size, own_kernels=True, int8=True)
    wall: dict[str, list[float]] = {name: [] for name in variants}
    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
            for name, predict in variants.items():
                start = time.perf_counter()
                predict(image)
                if repeat:
                    wall[name].append((time.perf_counter() - start) * 1000)
    base = statistics.median(wall["torchvision"])
    print(f"Mask R-CNN R50-FPN inference, {size[0]}x{size[1]}, {DETECTIONS} detections, {args.threads} threads, "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}, malloc {malloc}, "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    rows = [[name, f"{statistics.median(times):.0f}", f"{min(times):.0f}", f"{max(times):.0f}",
             f"{statistics.median(times) / base:.2f}"] for name, times in wall.items()]
    print(markdown_table(["variant", "median ms", "min ms", "max ms", "vs torchvision"], rows))


if __name__ == "__main__":
    main()
