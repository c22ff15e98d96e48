"""The papers' ablation tables, reproduced in miniature (issue #9).

    python benchmarks/ablations.py [--blocks maskrcnn,msrcnn,msrcnn_demo,yolact] [--seeds 3] [--iterations N]
        [--images N] [--variant standard|hard] [--models tiny|r50]
        [--train-json J --train-images D --val-json J --val-images D] [--device cpu|cuda]
        [--set KEY=VALUE ...] [--out FILE] [--work DIR] [--retrain TRAININGS] [--dry-run]

Trains small presets on the built-in synthetic dataset (or on a COCO-format dataset given by
path) with one fixed schedule per run and several seeds, and writes markdown tables in the layout
of the papers' tables (Mask R-CNN Table 2(b)-(e), MS R-CNN vs Mask R-CNN and Soft-NMS, YOLACT
Table 2(a)-(b), YOLACT++ re-scoring and DCN; block ``msrcnn_demo``: MS R-CNN vs Mask R-CNN
and the MaskIoU head's correlation with the true mask IoU on the demo's recipe, 1600 iterations on
600 images), our mean ± std beside the paper's figures, to
``--out`` (default ``benchmarks/results/ablations.md``) and prints them; every run's metrics go
to the same name with ``.json``.

A difference smaller than its spread reads as no difference: the spread is the pooled std of the
two rows for separately trained configurations, and the std of the per-seed differences for
inference-only variants of the same trained models (other suppression, scores without the
MaskIoU / re-scoring head), which are evaluated on the trained weights, never retrained.

Resumable: each (training, seed) writes ``<work>/<training>-s<seed>/result.json`` when done and is
skipped after that; an interrupted training resumes from its last checkpoint. Run the same
command again to continue. Checkpoints are deleted once a run is evaluated (``--keep-checkpoints``).
``--retrain NAMES`` trains those trainings (e.g. after a fix) and takes every other run from the
JSON beside ``--out``, so that only their rows change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # a clean checkout without an installed package

import torch  # noqa: E402

from _ablation_report import collect, render_directions, render_table, summary_json  # noqa: E402
from _ablation_runner import Schedule, read_result, run_name, run_training  # noqa: E402
from _ablation_specs import BLOCKS, FAMILIES, Family, Table, Training, tables, trainings, trainings_for  # noqa: E402

# Seconds per training iteration (4 images) of the tiny presets on a quiet 2-core CPU, for the
# estimate printed at the start (Mask R-CNN: the demo's measured 0.3-0.4 s; others scaled by
# CPU-time ratios measured against it). Evaluation: about 60 ms per validation image and variant.
TINY_SECONDS_PER_ITERATION = {"mask_rcnn": 0.35, "ms_rcnn": 0.40, "yolact": 0.35, "yolact_pp": 0.45}
EVAL_SECONDS_PER_IMAGE = 0.06
VAL_FRACTION = 0.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", default=",".join(BLOCKS), help=f"comma-separated, from {', '.join(BLOCKS)}")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per configuration")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations of every run (default: per model, e.g. tiny R-CNN 400, "
                             "tiny YOLACT 800)")
    parser.add_argument("--images", type=int, default=None,
                        help=f"synthetic images of every run, train + val ({VAL_FRACTION * 100:.0f}%% val; default: "
                             "per model, e.g. tiny R-CNN 500, tiny YOLACT 1500)")
    parser.add_argument("--variant", choices=("standard", "hard"), default="standard",
                        help="synthetic generator difficulty (hard: thin structures, heavy occlusion, small objects)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic dataset (fixed over runs)")
    parser.add_argument("--models", choices=sorted(FAMILIES), default="tiny",
                        help="tiny: the CPU presets; r50: ResNet-50 presets (a GPU and a real dataset)")
    parser.add_argument("--train-json")
    parser.add_argument("--train-images")
    parser.add_argument("--val-json")
    parser.add_argument("--val-images")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every run (repeatable), e.g. train.ims_per_batch=8")
    parser.add_argument("--out", default=str(HERE / "results" / "ablations.md"), help="markdown table file")
    parser.add_argument("--work", default="runs/ablations", help="folder for datasets and runs")
    parser.add_argument("--keep-checkpoints", action="store_true")
    parser.add_argument("--retrain", default="", metavar="TRAININGS",
                        help="comma-separated trainings to train again (e.g. mrcnn_softmax after a fix): every other "
                             "run is taken from the JSON beside --out where it is there (same training, seed and "
                             "iterations), so only the retrained rows change. Runs of these trainings finished in "
                             "--work are reused as usual (resumable): delete their folders to train them anew")
    parser.add_argument("--progress", action="store_true", help="progress bars while training")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the estimate, train nothing")
    parser.add_argument("--report-only", action="store_true",
                        help="write the tables from the runs finished so far (and, with --retrain, the previous "
                             "JSON's), train nothing")
    args = parser.parse_args(argv)
    args.blocks = tuple(b.strip() for b in args.blocks.split(",") if b.strip())
    args.retrain = tuple(t.strip() for t in args.retrain.split(",") if t.strip())
    unknown = [b for b in args.blocks if b not in BLOCKS]
    coco = [args.train_json, args.train_images, args.val_json, args.val_images]
    if unknown:
        parser.error(f"unknown blocks {unknown}; choose from {', '.join(BLOCKS)}")
    known = trainings(FAMILIES[args.models])
    if any(t not in known for t in args.retrain):
        parser.error(f"unknown trainings {[t for t in args.retrain if t not in known]}; choose from {', '.join(known)}")
    if any(coco) and not all(coco):
        parser.error("a COCO dataset needs --train-json, --train-images, --val-json and --val-images")
    too_few = [args.iterations is not None and args.iterations < 1, args.images is not None and args.images < 2]
    if args.seeds < 1 or any(too_few):
        parser.error("need --seeds >= 1, --iterations >= 1 and --images >= 2")
    args.coco = all(coco)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return args


def images_for(args: argparse.Namespace, family: Family, training: Training) -> int:
    """Synthetic images (train + val) of the dataset a training uses: ``--images``, else the
    training's own (the demo's recipe), else the family's."""
    return args.images or training.images or family.images_for(training.model)


def work_dir(args: argparse.Namespace, images: int) -> Path:
    """One folder per dataset, model family and overrides (each run's folder names its iterations),
    so runs of other settings never mix."""
    if args.coco:
        data = "coco-" + hashlib.sha1(str(Path(args.train_json).resolve()).encode()).hexdigest()[:8]
    else:
        data = f"synthetic-{args.variant}-{images}img-d{args.data_seed}"
    tag = f"{data}-{args.models}"
    if args.overrides:
        tag += "-" + hashlib.sha1("\n".join(args.overrides).encode()).hexdigest()[:8]
    return Path(args.work) / tag


def load_data(args: argparse.Namespace, root: Path, images: int) -> tuple[Any, Any]:
    from instaseg.data.coco import CocoDataset
    from instaseg.data.synthetic import generate_synthetic_dataset

    if args.coco:
        return (CocoDataset(args.train_json, args.train_images), CocoDataset(args.val_json, args.val_images))
    folder = root / "data"
    annotations = folder / "annotations"
    if not ((annotations / "train.json").is_file() and (annotations / "val.json").is_file()):
        print(f"synthetic dataset ({args.variant}, {images} images) -> {folder}", flush=True)
        generate_synthetic_dataset(folder, num_images=images, seed=args.data_seed, difficulty=args.variant,
                                   val_fraction=VAL_FRACTION)
    return (CocoDataset(annotations / "train.json", folder / "train"),
            CocoDataset(annotations / "val.json", folder / "val"))


def estimate_seconds(plan: list[tuple[Training, int]], schedule: Schedule, family: Family,
                     args: argparse.Namespace) -> float | None:
    """Rough wall-clock seconds of the runs in ``plan`` (tiny presets on the CPU only)."""
    if args.models != "tiny" or args.device != "cpu":
        return None
    total = 0.0
    for training, _ in plan:
        val_images = round(images_for(args, family, training) * VAL_FRACTION)
        total += schedule.iterations_for(training, family) * TINY_SECONDS_PER_ITERATION[training.model]
        total += len(training.evaluations) * (val_images * EVAL_SECONDS_PER_IMAGE + 2.0) + 5.0
    return total


def _per_model(values: dict[str, Any]) -> str:
    """``"mask_rcnn 400, yolact 800"``: a setting of each model kind in the plan."""
    return ", ".join(f"{model} {value}" for model, value in values.items())


def render(selected: list[Table], results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    runs = collect(results)
    data = (f"COCO-format dataset {args.train_json}" if args.coco else
            f"synthetic dataset ({args.variant}; images {_per_model(args.images_per_model)}; "
            f"{VAL_FRACTION:.0%} val, seed {args.data_seed})")
    head = [f"# Ablations in miniature ({args.models} presets)", "",
            f"{data}; iterations per run {_per_model(args.iterations_per_model)}; seeds 0..{args.seeds - 1}; "
            f"device {args.device}" + (f"; overrides {' '.join(args.overrides)}" if args.overrides else "")
            + f"; runs in `{args.work}`.",
            "Mask AP in percent on the validation split, mean ± sample std over seeds (n). "
            "Δ: mean difference to the row's reference; spread: pooled std of the two rows, or the std of "
            "the per-seed differences where both rows are one trained model (paired). A difference within "
            "its spread is read as no difference. Paper figures are COCO; settings differ (see each note).", ""]
    body = [render_table(table, runs) for table in selected]
    return "\n".join(head) + "\n" + "\n".join(body) + "\n## Directions\n\n" + render_directions(selected, runs)


def write_outputs(selected: list[Table], results: list[dict[str, Any]], args: argparse.Namespace,
                  roots: dict[str, Path]) -> str:
    """Write the markdown (``--out``) and the JSON beside it; return the markdown."""
    report = render(selected, results, args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    settings = {k: v for k, v in vars(args).items() if k != "coco"}
    out.with_suffix(".json").write_text(json.dumps(
        {"settings": settings, "work_dirs": {name: str(root) for name, root in roots.items()},
         "tables": summary_json(selected, collect(results)), "runs": results}, indent=2, default=str) + "\n")
    return report


def previous_runs(args: argparse.Namespace) -> dict[tuple[str, int, int], dict[str, Any]]:
    """With ``--retrain``: the runs of the JSON beside ``--out`` by (training, seed, iterations),
    less the trainings to retrain; without it, none (every run comes from ``--work``)."""
    path = Path(args.out).with_suffix(".json")
    if not args.retrain or not path.is_file():
        return {}
    runs = json.loads(path.read_text()).get("runs", [])
    return {(r["training"], int(r["seed"]), int(r["iterations"])): r for r in runs if r["training"] not in args.retrain}


def print_plan(plan: list[tuple[Training, int]], schedule: Schedule, family: Family, args: argparse.Namespace,
               roots: dict[str, Path], previous: dict[tuple[str, int, int], dict[str, Any]]) -> None:
    """The number of training runs, how many are done, and the time estimate."""
    todo = [(t, seed) for t, seed in plan
            if (t.name, seed, schedule.iterations_for(t, family)) not in previous
            and read_result(roots[t.name] / run_name(t, schedule.iterations_for(t, family), seed)) is None]
    estimate = estimate_seconds(todo, schedule, family, args)
    trainings = len({t.name for t, _ in plan})
    print(f"{trainings} trainings x {args.seeds} seeds = {len(plan)} training runs ({len(plan) - len(todo)} "
          f"already done); iterations {_per_model(args.iterations_per_model)}"
          + (f"; estimated {estimate / 60:.0f} min on a quiet 2-core CPU" if estimate is not None else ""), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    family = FAMILIES[args.models]
    selected = tables(args.blocks)
    plan = [(t, seed) for seed in range(args.seeds) for t in trainings_for(selected, family)]
    schedule = Schedule(args.iterations, tuple(args.overrides), args.device, args.keep_checkpoints, args.progress)
    # The header names each model kind's schedule; trainings with a recipe of their own (the
    # demo's) state theirs in their tables' notes.
    shared = [(t, seed) for t, seed in plan if t.iterations is None and t.images is None] or plan
    args.iterations_per_model = {t.model: schedule.iterations_for(t, family) for t, _ in shared}
    args.images_per_model = {t.model: images_for(args, family, t) for t, _ in shared}
    roots = {t.name: work_dir(args, images_for(args, family, t)) for t, _ in plan}
    previous = previous_runs(args)
    print_plan(plan, schedule, family, args, roots, previous)
    if args.dry_run:
        for training, seed in plan:
            print(f"  {training.name} seed {seed}: {family.presets[training.model]} {' '.join(training.overrides)}")
        return 0
    datasets: dict[Path, tuple[Any, Any]] = {}
    results, start = [], time.perf_counter()
    for index, (training, seed) in enumerate(plan, 1):
        root = roots[training.name]
        iterations = schedule.iterations_for(training, family)
        if (training.name, seed, iterations) in previous:
            results.append(previous[(training.name, seed, iterations)])
            continue
        if args.report_only:
            done = read_result(root / run_name(training, iterations, seed))
            results.extend([done] if done is not None else [])
            continue
        if root not in datasets:
            root.mkdir(parents=True, exist_ok=True)
            datasets[root] = load_data(args, root, images_for(args, family, training))
        train_set, val_set = datasets[root]
        results.append(run_training(training, family, seed, schedule, train_set, val_set, root))
        ap = results[-1]["evaluations"]["default"]["segm"]["AP"]
        print(f"[{index}/{len(plan)}] {training.name} seed {seed}: mask AP "
              f"{'-' if ap is None else f'{100 * ap:.1f}'} ({time.perf_counter() - start:.0f} s so far)", flush=True)
        write_outputs(selected, results, args, roots)  # a partial table after every run
    report = write_outputs(selected, results, args, roots)
    print(report)
    print(f"table -> {args.out}; every run's metrics -> {Path(args.out).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
