"""``instaseg demo``: the main job end to end on the built-in synthetic dataset.

Generates the synthetic COCO-format dataset, trains the small CPU preset on it, evaluates COCO box
and mask AP on the validation split, and writes overlays (ground truth | prediction) and a metrics
summary, printing where everything went.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    parser.add_argument("--preset", default="mask_rcnn_r18_fpn_tiny", help="model preset to train")
    parser.add_argument("--images", type=int, default=600, help="synthetic images (train + val)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations (default: the preset's demo schedule)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--no-progress", action="store_true")


# The demo's schedule, measured against its 10-minute budget on a 2-core CPU: 1600 iterations of
# the tiny preset (4 images each, 0.27-0.38 s per iteration as that machine's speed varied) plus
# about 15 s of data generation and evaluation. Fewer iterations cost mask AP: 1400 gave 0.508.
DEMO_ITERATIONS = 1600


def run(args: argparse.Namespace) -> int:
    from instaseg.config.io import apply_overrides
    from instaseg.config.presets import get_preset
    from instaseg.data.coco import CocoDataset
    from instaseg.data.synthetic import generate_synthetic_dataset
    from instaseg.hub.training import train_on_dataset
    from instaseg.evaluation import format_metrics_table

    start = time.perf_counter()
    out = Path(args.out)
    print(f"[1/4] synthetic dataset: {args.images} images -> {out / 'data'}", flush=True)
    data = generate_synthetic_dataset(out / "data", num_images=args.images, seed=args.seed, progress=not args.no_progress)
    train_set = CocoDataset(data.train_annotations, data.train_images)
    val_set = CocoDataset(data.val_annotations, data.val_images)

    config = get_preset(args.preset)
    iterations = args.iterations or DEMO_ITERATIONS
    config = replace(
        config,
        model=replace(config.model, num_classes=train_set.num_classes),
        train=replace(config.train, max_iter=iterations, warmup_iters=min(config.train.warmup_iters, iterations // 5),
                      steps=(), checkpoint_period=max(iterations // 4, 1), eval_period=0, seed=args.seed),
    )
    config = apply_overrides(config, args.overrides)
    print(f"[2/4] training {config.name} for {config.train.max_iter} iterations "
          f"({config.train.ims_per_batch} images each) -> {out / 'run'}", flush=True)
    summary = train_on_dataset(config, train_set, out / "run", val_dataset=val_set, progress=not args.no_progress)
    if summary["status"] != "finished":
        print(f"training {summary['status']}; resume with: instaseg train ... --out {out / 'run'} --resume")
        return 130
    metrics = summary["metrics"]
    print("[3/4] COCO AP on the validation split:")
    print(format_metrics_table(metrics))
    print(f"[4/4] overlays (ground truth | prediction) -> {out / 'overlays'}", flush=True)
    _write_overlays(summary["best_checkpoint"] or summary["last_checkpoint"], val_set, out / "overlays")
    seconds = time.perf_counter() - start
    result = {"seconds": round(seconds, 1), "preset": config.name, "iterations": config.train.max_iter,
              "segm_AP": metrics["segm"]["AP"], "bbox_AP": metrics["bbox"]["AP"],
              "checkpoint": str(summary["last_checkpoint"]), "metrics": str(Path(summary["out_dir"]) / "metrics.json")}
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    print(f"done in {seconds / 60:.1f} min: segm AP {metrics['segm']['AP']:.3f}, bbox AP {metrics['bbox']['AP']:.3f}")
    print(f"  checkpoint  {summary['last_checkpoint']}")
    print(f"  metrics     {result['metrics']}")
    print(f"  overlays    {out / 'overlays'}")
    print(f"  summary     {out / 'summary.json'}")
    return 0


def _write_overlays(checkpoint: str | Path, dataset, folder: Path, count: int = 12) -> None:
    from instaseg.hub.predictor import Predictor
    from instaseg.viz.overlay import draw_instances, side_by_side

    folder.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_checkpoint(checkpoint, score_threshold=0.5)
    names = dataset.category_names
    for index in range(min(count, len(dataset))):
        sample = dataset[index]
        t = sample.targets
        truth = draw_instances(sample.image, t.boxes, t.labels, t.masks, class_names=names)
        found = predictor(sample.image)
        guess = draw_instances(sample.image, found.boxes, found.labels, found.masks, found.scores, names)
        side_by_side(truth, guess).resize((2 * truth.width * 2 + 8, truth.height * 2)).save(
            folder / f"{sample.image_id:06d}.png")
