"""What the detection caps cost on crowded images: a tiny Mask R-CNN on 200-300 objects per image.

    python benchmarks/crowded.py [--iterations 300] [--images 100] [--size 320] [--out bench_crowded]

Draws the synthetic set with ``difficulty="crowded"`` (240-320 small shapes per image, about 200-300
left visible), trains ``mask_rcnn_r18_fpn_tiny`` at the images' own size twice from the same seed:

- **preset caps**: the preset as it is (training: 300 RPN proposals, 64 sampled RoIs, the mask head
  on at most 8 positives per image; test: 600 proposals, 300 detections);
- **fitted to the data**: the training caps ``instaseg train`` now raises for data this crowded
  (``instaseg.config.budget.with_training_budget``: 1000 proposals, 256 RoIs, the mask head on up
  to 64 positives for 313 objects per image).

(a run folder already in ``--out`` is resumed, or reused when finished: the two trainings take
an hour or more on 2 cores) and evaluates each with COCO maxDets fitted to the data (``instaseg.config.budget.coco_max_dets``):
with its test caps as they are, and (preset caps only) with the test caps the tiny preset had before
(50 detections, 150 proposals), which is what those caps hid. Prints a markdown table of mask and
box AP, AR at the largest maxDets, detections per image and the training time per iteration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402

from instaseg.config.budget import coco_max_dets, training_caps, with_training_budget  # noqa: E402
from instaseg.config.io import apply_overrides  # noqa: E402
from instaseg.config.presets import get_preset  # noqa: E402
from instaseg.data.coco import CocoDataset  # noqa: E402
from instaseg.data.synthetic import generate_synthetic_dataset  # noqa: E402
from instaseg.engine.evaluate import evaluate_model  # noqa: E402
from instaseg.hub import load_model, train_on_dataset  # noqa: E402

PRESET = "mask_rcnn_r18_fpn_tiny"
OLD_TEST_CAPS = ["model.inference.detections_per_image=50", "model.rpn.post_nms_topk_test=150",
                 "model.rpn.pre_nms_topk_test=300"]


def train(name: str, overrides: list[str], args: argparse.Namespace, train_set: CocoDataset, out: Path) -> dict:
    """Train the tiny preset at the images' size; its last checkpoint and seconds per iteration."""
    size = args.size
    config = apply_overrides(get_preset(PRESET), [
        f"input.min_size_train=[{size}]", f"input.max_size_train={size}", f"input.min_size_test={size}",
        f"input.max_size_test={size}", f"train.max_iter={args.iterations}", f"train.seed={args.seed}",
        f"train.checkpoint_period={args.iterations}", "train.eval_period=0",
        f"train.warmup_iters={min(100, args.iterations // 5)}", *overrides])
    config = replace(config, model=replace(config.model, num_classes=train_set.num_classes))
    summary = train_on_dataset(config, train_set, out / name, progress=False, resume=True)
    if summary["status"] != "finished":
        raise SystemExit(f"{name}: training {summary['status']}; run the same command again to resume it")
    return {"checkpoint": summary["last_checkpoint"], "s_per_iter": _seconds_per_iteration(out / name)}


def _seconds_per_iteration(run: Path) -> float:
    """Mean seconds per iteration over the run's logged steps (``metrics.jsonl``; resumes included)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = [r["time"] for r in records if "time" in r]
    return statistics.mean(times) if times else float("nan")


def evaluate(checkpoint: str, overrides: list[str], val_set: CocoDataset) -> dict:
    """COCO AP/AR with maxDets fitted to the data, and the median detections per image."""
    model, _ = load_model(checkpoint, overrides=overrides)
    max_dets = coco_max_dets(val_set.max_instances_per_image())
    metrics = evaluate_model(model, val_set, progress=False, max_dets=max_dets)
    with torch.no_grad():
        counts = [len(model.predict([val_set[i].image.float()])[0]) for i in range(min(10, len(val_set)))]
    return {"segm": metrics["segm"], "bbox": metrics["bbox"], "ar_key": f"AR@{max_dets[-1]}",
            "detections": statistics.median(counts)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--images", type=int, default=100, help="synthetic images (20%% validation)")
    parser.add_argument("--size", type=int, default=320, help="image side; the model runs at this size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_crowded")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    root = out / "data"
    if not (root / "annotations" / "val.json").is_file():  # drawn once per --out
        generate_synthetic_dataset(root, num_images=args.images, seed=args.seed, image_size=args.size,
                                   difficulty="crowded", crowd=False, progress=True)
    train_set = CocoDataset(root / "annotations" / "train.json", root / "train")
    val_set = CocoDataset(root / "annotations" / "val.json", root / "val")
    stats = val_set.size_stats()

    fitted = with_training_budget(get_preset(PRESET), train_set.max_instances_per_image())
    runs = {"preset": train("defaults", [], args, train_set, out),
            "fitted": train("raised", [f"{k}={v}" for k, v in training_caps(fitted).items()], args, train_set, out)}
    rows, report = [], {"args": vars(args), "val_instances_per_image": stats, "rows": []}
    for trained, test_caps, label in (("preset", [], "preset training caps"),
                                      ("preset", OLD_TEST_CAPS, "preset training caps, old test caps (50 / 150)"),
                                      ("fitted", [], "training caps fitted to the data (instaseg train)")):
        result = evaluate(runs[trained]["checkpoint"], test_caps, val_set)
        ar = result["ar_key"]
        row = {"model": label, "s_per_iter": runs[trained]["s_per_iter"], **result}
        report["rows"].append(row)
        rows.append([label, f"{100 * result['segm']['AP']:.1f}", f"{100 * result['segm']['AP50']:.1f}",
                     f"{100 * result['segm'][ar]:.1f}", f"{100 * result['bbox']['AP']:.1f}",
                     f"{100 * result['bbox'][ar]:.1f}", f"{result['detections']:.0f}",
                     f"{runs[trained]['s_per_iter']:.2f}"])
    table = markdown_table(["model", "segm AP", "segm AP50", f"segm {ar}", "bbox AP", f"bbox {ar}",
                            "detections / image", "train s / iteration"], rows)
    header = (f"{PRESET}, {args.iterations} iterations at {args.size} px, {args.images} crowded synthetic images "
              f"(val: {stats['instances_mean']:.0f} instances per image on average, up to "
              f"{stats['instances_max']:.0f}), seed {args.seed}, {args.threads} threads, torch {torch.__version__}")
    text = f"{header}\n\n{table}\n"
    print(text)
    (out / "crowded.md").write_text(text)
    (out / "crowded.json").write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
