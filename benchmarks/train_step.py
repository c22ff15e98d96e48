"""One Mask R-CNN R50-FPN training iteration: instaseg vs torchvision, the same kernels, interleaved.

    python benchmarks/train_step.py [--size 800] [--batch 2] [--threads 2] [--repeats 3]

Each step is forward + loss + backward + SGD step on the same batch (random weights, synthetic
boxes and masks; ResNet-50 with frozen batch norm, stem and res2 frozen, as both libraries train
from ImageNet weights; 512 RoIs per image, 1000 RPN proposals per image after NMS in both).
torchvision's compiled ops cannot load with this CPU build of torch, so its ``nms`` and
``roi_align`` ops are registered with instaseg's pure-PyTorch kernels (as the parity test does);
everything else is each library's own code. The C library's allocator is process-wide, so both
libraries run under the same setting: freed memory kept for reuse as ``instaseg`` does
(``instaseg.engine.allocator``), or glibc's defaults with ``INSTASEG_MALLOC=system`` (as a plain
torchvision script runs). "frozen BN unfolded" is instaseg with the frozen batch
norms run after their convolutions instead of folded into their weights. Variants run alternately and the medians are
compared, because other work on the machine makes single timings noisy; CPU seconds (which
include both threads) are printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402

from instaseg.engine.allocator import malloc_setting  # noqa: E402
from instaseg.engine.bench import synthetic_targets, train_step  # noqa: E402
from instaseg.hub import build_model  # noqa: E402
from instaseg.layers.fusion import fast_paths  # noqa: E402
from instaseg.ops.torchvision_shim import load_torchvision  # noqa: E402

NUM_CLASSES = 80


def build_torchvision_model(torchvision, size: tuple[int, int]) -> torch.nn.Module:
    """torchvision's maskrcnn_resnet50_fpn as it is built for fine-tuning (FrozenBN, 3 trainable stages)."""
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), trainable_layers=3)
    return MaskRCNN(backbone, num_classes=NUM_CLASSES + 1, min_size=min(size), max_size=max(size),
                    rpn_post_nms_top_n_train=1000)


def make_step(model: torch.nn.Module, images: list[torch.Tensor], targets, kind: str):
    if kind != "torchvision":  # instaseg: the same step as `instaseg bench --train`
        return train_step(model, images, targets)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9)  # tiny: the same work every step
    model.train()
    tv_images = [image / 255.0 for image in images]  # torchvision normalizes [0, 1] inputs
    tv_targets = [{"boxes": t.boxes, "labels": t.labels + 1, "masks": t.masks.to(torch.uint8)} for t in targets]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses = model(tv_images, tv_targets)
        sum(losses.values()).backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=800, help="shorter side; the image is size x 1.52 size")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torchvision-site", default=str(ROOT / ".venv" / "torchvision-site"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc = malloc_setting()  # process-wide: both libraries run under it
    h, w = args.size, int(round(args.size * 1.52 / 32)) * 32
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=g) * 255 for _ in range(args.batch)]
    targets = [synthetic_targets((h, w), NUM_CLASSES, generator=g) for _ in range(args.batch)]
    torch.manual_seed(0)
    steps = {"instaseg": make_step(build_model("mask_rcnn_r50_fpn", num_classes=NUM_CLASSES), images, targets,
                                   "instaseg")}
    steps["instaseg, frozen BN unfolded"] = steps["instaseg"]
    site = Path(args.torchvision_site)
    if (site / "torchvision").is_dir():
        tv = load_torchvision(site)
        steps["torchvision"] = make_step(build_torchvision_model(tv, (h, w)), images, targets, "torchvision")
    else:
        print(f"torchvision's Python package not found in {site}: measuring instaseg only")
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    load_before = os.getloadavg()[0]
    for repeat in range(args.repeats + 1):  # the first round warms up and is not counted
        for name, step in steps.items():
            with fast_paths(fold_batchnorm=name != "instaseg, frozen BN unfolded"):
                start, start_cpu = time.perf_counter(), time.process_time()
                step()
                if repeat:
                    wall[name].append((time.perf_counter() - start) * 1000)
                    cpu[name].append((time.process_time() - start_cpu) * 1000)
    print(f"Mask R-CNN R50-FPN training step, {args.batch} images {h}x{w}, {args.threads} threads, "
          f"torch {torch.__version__}, malloc {malloc}, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    rows = [[name, f"{statistics.median(wall[name]):.0f}", f"{min(wall[name]):.0f}", f"{max(wall[name]):.0f}",
             f"{statistics.median(cpu[name]):.0f}"] for name in steps]
    print(markdown_table(["variant", "median ms", "min ms", "max ms", "CPU ms (all threads)"], rows))


if __name__ == "__main__":
    main()
