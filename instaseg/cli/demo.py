"""``instaseg demo``: the main job end to end on the built-in synthetic dataset.

Generates the synthetic COCO-format dataset, trains the small CPU preset on it, evaluates COCO box
and mask AP on the validation split, and writes overlays (ground truth | prediction) and a metrics
summary, printing where everything went. A keypoint preset (``--preset keypoint_rcnn_r18_fpn_tiny``)
trains on the synthetic stick figures instead, and its overlays draw joints and the skeleton.
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
    from instaseg.data.synthetic_keypoints import generate_keypoint_dataset
    from instaseg.hub.outputs import num_keypoints
    from instaseg.hub.training import train_on_dataset
    from instaseg.evaluation import format_metrics_table

    start = time.perf_counter()
    out = Path(args.out)
    config = get_preset(args.preset)
    keypoints = num_keypoints(config) > 0  # a keypoint model learns the stick figures' joints
    print(f"[1/4] synthetic {'stick figures' if keypoints else 'dataset'}: {args.images} images -> {out / 'data'}",
          flush=True)
    generate = generate_keypoint_dataset if keypoints else generate_synthetic_dataset
    data = generate(out / "data", num_images=args.images, seed=args.seed, progress=not args.no_progress)
    train_set = CocoDataset(data.train_annotations, data.train_images)
    val_set = CocoDataset(data.val_annotations, data.val_images)

    iterations = args.iterations or DEMO_ITERATIONS
    model = replace(config.model, num_classes=train_set.num_classes)
    if keypoints:
        model = replace(model, keypoint_head=replace(model.keypoint_head, num_keypoints=train_set.num_keypoints))
    config = replace(
        config,
        model=model,
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
    aps = {f"{t}_AP": metrics[t]["AP"] for t in ("segm", "keypoints", "bbox") if t in metrics}
    result = {"seconds": round(seconds, 1), "preset": config.name, "iterations": config.train.max_iter, **aps,
              "checkpoint": str(summary["last_checkpoint"]), "metrics": str(Path(summary["out_dir"]) / "metrics.json")}
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    listed = ", ".join(f"{key[:-3]} AP {value:.3f}" for key, value in aps.items())
    print(f"done in {seconds / 60:.1f} min: {listed}")
    print(f"  checkpoint  {summary['last_checkpoint']}")
    print(f"  metrics     {result['metrics']}")
    print(f"  overlays    {out / 'overlays'}")
    print(f"  summary     {out / 'summary.json'}")
    return 0


def _write_overlays(checkpoint: str | Path, dataset, folder: Path, count: int = 12) -> None:
    from instaseg.hub.outputs import keypoint_threshold
    from instaseg.hub.predictor import Predictor
    from instaseg.viz.overlay import draw_detections, draw_instances, side_by_side

    folder.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_checkpoint(checkpoint, score_threshold=0.5)
    names, skeleton = dataset.category_names, dataset.skeleton
    threshold = keypoint_threshold(predictor.config)
    for index in range(min(count, len(dataset))):
        sample = dataset[index]
        t = sample.targets
        truth = draw_instances(sample.image, t.boxes, t.labels, t.masks, class_names=names, keypoints=t.keypoints,
                               skeleton=skeleton)
        found = predictor(sample.image)
        guess = draw_detections(sample.image, found, names, skeleton, threshold)
        side_by_side(truth, guess).resize((2 * truth.width * 2 + 8, truth.height * 2)).save(
            folder / f"{sample.image_id:06d}.png")
