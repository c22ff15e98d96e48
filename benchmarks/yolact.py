"""YOLACT vs YOLACT++ on the synthetic dataset (same schedule and seed), and YOLACT++ R-50 speed
beside Mask R-CNN R-50-FPN.

    python benchmarks/yolact.py [--iterations 1500] [--images 1500] [--seed 0] [--out bench_yolact]

1. Trains ``yolact_r18_tiny`` and ``yolact_pp_r18_tiny`` from scratch with the same schedule, data
   order and seed, then reports COCO segm / bbox AP on the validation split and the median CPU
   inference time per validation image (128 px model input, the presets' size).
2. Times ``yolact_pp_r50_550`` (550x550) and ``mask_rcnn_r50_fpn`` (800x1216, the paper's test
   size) with random weights and the score threshold at 0, so both return their full 100
   detections as a trained model does on a busy image (as ``benchmarks/inference.py``). The papers
   report YOLACT++ R-50 at 33.5 fps vs Mask R-CNN R-50 at 8.6 fps on a Titan Xp (about 3.9x);
   a 2-core CPU is not a GPU, so the ratio here is what this implementation does on this machine.

Prints markdown tables and writes them (and a JSON report) under ``--out``. The defaults take
about 25 minutes on 2 cores of an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table, time_call  # noqa: E402

from instaseg.config.presets import get_preset  # noqa: E402
from instaseg.data.coco import CocoDataset  # noqa: E402
from instaseg.data.synthetic import generate_synthetic_dataset  # noqa: E402
from instaseg.hub import build_model, load_model, train_on_dataset  # noqa: E402

TINY_PRESETS = ("yolact_r18_tiny", "yolact_pp_r18_tiny")


def per_image_ms(model: torch.nn.Module, dataset: CocoDataset, max_images: int) -> float:
    """Median wall-clock ms of ``model.predict`` on single validation images (one warm-up)."""
    model.eval()
    images = [dataset[i].image.float() for i in range(min(max_images, len(dataset)))]
    model.predict(images[:1])
    times = []
    for image in images:
        start = time.perf_counter()
        model.predict([image])
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def train_tiny(preset: str, args: argparse.Namespace, train_set: CocoDataset, val_set: CocoDataset,
               out: Path) -> dict:
    """Train one tiny preset with the shared schedule; its AP, train time and inference time."""
    config = get_preset(preset)
    train = replace(config.train, max_iter=args.iterations, seed=args.seed, checkpoint_period=args.iterations,
                    eval_period=0, warmup_iters=min(config.train.warmup_iters, args.iterations // 5))
    config = replace(config, model=replace(config.model, num_classes=train_set.num_classes), train=train)
    start = time.perf_counter()
    summary = train_on_dataset(config, train_set, out / preset, val_dataset=val_set, progress=False)
    train_seconds = time.perf_counter() - start
    model, _ = load_model(summary["last_checkpoint"])
    return {"segm": summary["metrics"]["segm"], "bbox": summary["metrics"]["bbox"], "train_s": train_seconds,
            "ms_per_image": per_image_ms(model, val_set, args.timing_images), "status": summary["status"]}


def big_model_ms(preset: str, size: tuple[int, int], repeats: int) -> tuple[float, int]:
    """Median ms per image of a randomly initialised preset returning its full 100 detections."""
    torch.manual_seed(0)
    h, w = size
    # 100 detections each, the papers' setting (instaseg's own Mask R-CNN presets return up to 300)
    overrides = {"model__inference__score_thresh": 0.0, "model__inference__detections_per_image": 100}
    if not preset.startswith("yolact"):
        overrides.update(input__min_size_test=min(h, w), input__max_size_test=max(h, w))
    model = build_model(preset, num_classes=80, **overrides).eval()
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    detections = len(model.predict([image])[0])
    median, _, _ = time_call(lambda: model.predict([image]), repeats, warmup=0)
    return median, detections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations of each tiny model (default: the presets' schedule, 1500)")
    parser.add_argument("--images", type=int, default=1500,
                        help="synthetic images (20%% validation; on 300 the tiny models memorise their 240)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_yolact")
    parser.add_argument("--timing-images", type=int, default=20, help="validation images timed per tiny model")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each R-50 model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.iterations = args.iterations or get_preset(TINY_PRESETS[0]).train.max_iter
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = generate_synthetic_dataset(out / "data", num_images=args.images, seed=args.seed)
    train_set = CocoDataset(data.train_annotations, data.train_images)
    val_set = CocoDataset(data.val_annotations, data.val_images)

    report: dict = {"iterations": args.iterations, "images": args.images, "seed": args.seed, "tiny": {}}
    rows = []
    for preset in TINY_PRESETS:
        result = train_tiny(preset, args, train_set, val_set, out)
        report["tiny"][preset] = result
        rows.append([preset, f"{100 * result['segm']['AP']:.1f}", f"{100 * result['segm']['AP50']:.1f}",
                     f"{100 * result['bbox']['AP']:.1f}", f"{result['ms_per_image']:.0f}",
                     f"{result['train_s'] / 60:.1f}"])
    tiny_table = markdown_table(["model", "segm AP", "segm AP50", "bbox AP", "CPU ms/image (128 px)",
                                 "train min"], rows)

    yolact_ms, yolact_dets = big_model_ms("yolact_pp_r50_550", (550, 550), args.repeats)
    rcnn_ms, rcnn_dets = big_model_ms("mask_rcnn_r50_fpn", (800, 1216), args.repeats)
    report["speed"] = {"yolact_pp_r50_550": {"ms": yolact_ms, "detections": yolact_dets},
                       "mask_rcnn_r50_fpn": {"ms": rcnn_ms, "detections": rcnn_dets}}
    speed_table = markdown_table(
        ["model", "input", "detections", "CPU ms/image", "speed vs Mask R-CNN"],
        [["yolact_pp_r50_550", "550x550", str(yolact_dets), f"{yolact_ms:.0f}", f"{rcnn_ms / yolact_ms:.2f}x"],
         ["mask_rcnn_r50_fpn", "800x1216", str(rcnn_dets), f"{rcnn_ms:.0f}", "1.00x"]])

    header = (f"{args.iterations} iterations, {args.images} synthetic images, seed {args.seed}, "
              f"{args.threads} threads, torch {torch.__version__}")
    text = f"{header}\n\n{tiny_table}\n\nRandom weights, score threshold 0 (100 detections):\n\n{speed_table}\n"
    print(text)
    (out / "yolact.md").write_text(text)
    (out / "yolact.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
