"""Keypoint R-CNN learning keypoints on the CPU: the tiny preset on the synthetic stick figures.

    python benchmarks/keypoints.py [--iterations 1500] [--images 600] [--out bench_keypoints]

Draws the synthetic keypoint set (``instaseg data synth --keypoints``: stick figures with 13 named
joints and a 12-limb skeleton, some joints occluded, 20% validation), trains
``keypoint_rcnn_r18_fpn_tiny`` from scratch (a run folder already in ``--out`` is resumed, or reused
when finished) and evaluates it with COCO's keypoint evaluation (OKS AP with the dataset's
sigmas, pycocotools) and box AP. Prints a markdown table and writes ``keypoints.md`` /
``keypoints.json`` in ``--out``.
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
from _timing import markdown_table  # noqa: E402

from instaseg.config.io import apply_overrides  # noqa: E402
from instaseg.config.presets import get_preset  # noqa: E402
from instaseg.data.coco import CocoDataset  # noqa: E402
from instaseg.data.synthetic_keypoints import generate_keypoint_dataset  # noqa: E402
from instaseg.engine.evaluate import evaluate_model  # noqa: E402
from instaseg.hub import load_model, train_on_dataset  # noqa: E402

PRESET = "keypoint_rcnn_r18_fpn_tiny"


def train(args: argparse.Namespace, train_set: CocoDataset, out: Path) -> dict:
    """Train (or resume, or reuse) the tiny keypoint preset; its last checkpoint and timing."""
    config = apply_overrides(get_preset(PRESET), [
        f"train.max_iter={args.iterations}", f"train.seed={args.seed}", "train.eval_period=0",
        f"train.checkpoint_period={max(args.iterations // 4, 1)}", *args.overrides])
    head = replace(config.model.keypoint_head, num_keypoints=train_set.num_keypoints)
    config = replace(config, model=replace(config.model, num_classes=train_set.num_classes, keypoint_head=head))
    start = time.perf_counter()
    summary = train_on_dataset(config, train_set, out / "run", progress=False, resume=True)
    if summary["status"] != "finished":
        raise SystemExit(f"training {summary['status']}; run the same command again to resume it")
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    times = [r["time"] for r in records if "time" in r]
    return {"checkpoint": summary["last_checkpoint"], "s_per_iter": statistics.mean(times) if times else float("nan"),
            "seconds_this_call": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--images", type=int, default=600, help="synthetic images (20%% validation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_keypoints")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    root = out / "data"
    if not (root / "annotations" / "val.json").is_file():  # drawn once per --out
        generate_keypoint_dataset(root, num_images=args.images, seed=args.seed, progress=True)
    train_set = CocoDataset(root / "annotations" / "train.json", root / "train")
    val_set = CocoDataset(root / "annotations" / "val.json", root / "val")
    run = train(args, train_set, out)
    model, _ = load_model(run["checkpoint"])
    metrics = evaluate_model(model, val_set, progress=False)
    kp, box = metrics["keypoints"], metrics["bbox"]
    rows = [[PRESET, str(args.iterations), f"{100 * kp['AP']:.1f}", f"{100 * kp['AP50']:.1f}",
             f"{100 * kp['AP75']:.1f}", f"{100 * box['AP']:.1f}", f"{run['s_per_iter']:.2f}"]]
    table = markdown_table(["model", "iterations", "keypoints AP", "AP50", "AP75", "bbox AP", "train s / iteration"],
                           rows)
    header = (f"{len(train_set)} training / {len(val_set)} validation synthetic stick-figure images "
              f"({train_set.num_keypoints} joints), {args.iterations} iterations of "
              f"{get_preset(PRESET).train.ims_per_batch} images, seed {args.seed}, {args.threads} threads, "
              f"torch {torch.__version__}")
    text = f"{header}\n\n{table}\n"
    print(text)
    (out / "keypoints.md").write_text(text)
    (out / "keypoints.json").write_text(json.dumps({"args": vars(args), "run": run, "metrics": metrics}, indent=2,
                                                   default=str))


if __name__ == "__main__":
    main()
