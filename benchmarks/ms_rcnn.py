"""Mask R-CNN vs Mask Scoring R-CNN on the synthetic dataset, same schedule and seed.

    python benchmarks/ms_rcnn.py [--iterations 1400] [--images 600] [--out bench_ms_rcnn]

Prints segm AP, AP75 and bbox AP of both, and, for MS R-CNN, the Pearson correlation between the
predicted MaskIoU and the true IoU of each validation detection's mask with its best-matching
ground-truth instance of the same class (the paper reports about 0.74, and +1.5 AP / +2 AP75).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402

from instaseg.config.io import apply_overrides  # noqa: E402
from instaseg.config.presets import get_preset  # noqa: E402
from instaseg.data.coco import CocoDataset  # noqa: E402
from instaseg.data.synthetic import generate_synthetic_dataset  # noqa: E402
from instaseg.hub import load_model, train_on_dataset  # noqa: E402


def mask_iou_pairs(model, dataset, device: str | torch.device = "cpu") -> tuple[list[float], list[float]]:
    """(predicted MaskIoU, true IoU) of every validation detection."""
    predicted, true = [], []
    model.eval()
    for index in range(len(dataset)):
        sample = dataset[index]
        result = model.predict([sample.image.float().to(device)])[0].to("cpu")
        gt = sample.targets
        for k in range(len(result)):
            same = gt.labels == result.labels[k]
            if result.mask_scores is None or not bool(same.any()):
                continue
            inter = (gt.masks[same] & result.masks[k]).flatten(1).sum(1).float()
            union = (gt.masks[same] | result.masks[k]).flatten(1).sum(1).float()
            true.append(float((inter / union.clamp(min=1)).max()))
            predicted.append(float(result.mask_scores[k] / result.scores[k].clamp(min=1e-12)))
    return predicted, true


def pearson(a: list[float], b: list[float]) -> float:
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if x.numel() < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()).clamp(min=1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1400)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_ms_rcnn")
    parser.add_argument("--clip", type=float, default=10.0,
                        help="gradient-norm clipping for both models (0: none). Trained from scratch "
                             "without it, the MaskIoU head diverged during warmup in our first run")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    data = generate_synthetic_dataset(out / "data", num_images=args.images, seed=args.seed)
    train_set = CocoDataset(data.train_annotations, data.train_images)
    val_set = CocoDataset(data.val_annotations, data.val_images)
    rows, report = [], {}
    for preset in ("mask_rcnn_r18_fpn_tiny", "ms_rcnn_r18_fpn_tiny"):
        config = get_preset(preset)
        config = replace(config, model=replace(config.model, num_classes=train_set.num_classes),
                         train=replace(config.train, max_iter=args.iterations, steps=(), seed=args.seed,
                                       warmup_iters=min(200, args.iterations // 5),
                                       checkpoint_period=args.iterations, eval_period=0))
        config = apply_overrides(config, [f"train.clip_grad_norm={args.clip}"])
        summary = train_on_dataset(config, train_set, out / preset, val_dataset=val_set, progress=False)
        metrics = summary["metrics"]
        correlation = float("nan")
        if config.model.maskiou is not None:
            model, _ = load_model(summary["last_checkpoint"])
            predicted, true = mask_iou_pairs(model, val_set)
            correlation = pearson(predicted, true)
        report[preset] = {"segm": metrics["segm"], "bbox": metrics["bbox"], "maskiou_pearson": correlation}
        rows.append([preset, f"{100 * metrics['segm']['AP']:.1f}", f"{100 * metrics['segm']['AP75']:.1f}",
                     f"{100 * metrics['bbox']['AP']:.1f}", "-" if correlation != correlation else f"{correlation:.2f}"])
    table = markdown_table(["model", "segm AP", "segm AP75", "bbox AP", "MaskIoU Pearson r"], rows)
    print(f"{args.iterations} iterations, {args.images} synthetic images, seed {args.seed}, clip {args.clip}")
    print(table)
    (out / "ms_rcnn.json").write_text(json.dumps(report, indent=2))
    (out / "ms_rcnn.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
