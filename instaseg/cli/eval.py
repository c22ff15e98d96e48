"""``instaseg eval``: COCO box and mask AP of a checkpoint on a dataset, or of a results file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from instaseg.cli._common import ensure_writable_dir
from instaseg.errors import InstasegError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, help="ground-truth COCO instances json")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="instaseg checkpoint to run on the dataset")
    source.add_argument("--results", help="a COCO results json made by anything, to score as is")
    parser.add_argument("--images", help="image folder (needed with --checkpoint)")
    parser.add_argument("--out", help="folder for metrics.json (and results.json with --checkpoint)")
    parser.add_argument("--max-dets", type=int, nargs=3, default=(1, 10, 100), metavar=("D1", "D2", "D3"),
                        help="COCO maxDets; dense datasets need e.g. 100 300 1000")
    parser.add_argument("--per-category", action="store_true", help="also print AP per category")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--allow-partial", action="store_true",
                        help="load only the checkpoint tensors that fit the model (the rest stay untrained)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip bad annotations/images of --json (counted and reported) instead of stopping")


def run(args: argparse.Namespace) -> int:
    from instaseg.engine.evaluate import write_metrics_json
    from instaseg.evaluation import format_metrics_table, format_per_category_table

    out = ensure_writable_dir(args.out) if args.out else None
    notes: dict[str, str] = {}
    if args.results:
        metrics, notes = _evaluate_results_file(args)
    else:
        if not args.images:
            raise InstasegError("--checkpoint needs --images (the image folder of --json)")
        metrics = _evaluate_checkpoint(args, out)
    print(format_metrics_table(metrics))
    for iou_type, note in notes.items():
        print(f"{iou_type}: {note}")
    if args.per_category:
        print(format_per_category_table(metrics))
    if out is not None:
        write_metrics_json(metrics, out / "metrics.json", notes=notes)
        print(f"wrote {out / 'metrics.json'}")
    return 0


def _evaluate_results_file(args: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """Score what the file holds: masks when it has them, boxes always (from the masks when it has
    none). Returns the metrics and ``{iou_type: note}`` for each type not scored from its own field."""
    from instaseg.evaluation import evaluate_coco, result_fields

    try:
        results = json.loads(Path(args.results).read_text())
        fields = result_fields(results)
        metrics = evaluate_coco(args.json, results, iou_types=fields.iou_types, max_dets=tuple(args.max_dets),
                                verbose=False, per_category=args.per_category)
    except (OSError, ValueError, TypeError) as error:
        raise InstasegError(f"cannot score {args.results}: {error}") from None
    return metrics, fields.notes


def _evaluate_checkpoint(args: argparse.Namespace, out: Path | None) -> dict:
    from instaseg.data.coco import CocoDataset
    from instaseg.engine.checkpoint import load_model
    from instaseg.engine.evaluate import evaluate_model

    model, _ = load_model(args.checkpoint, allow_partial=args.allow_partial)
    dataset = CocoDataset(args.json, args.images, skip_bad=args.skip_bad)
    if dataset.num_classes != model.num_classes:
        raise InstasegError(f"the checkpoint predicts {model.num_classes} classes but {args.json} has "
                            f"{dataset.num_classes}")
    results_path = out / "results.json" if out is not None else None
    metrics = evaluate_model(model.to(args.device), dataset, max_dets=tuple(args.max_dets),
                             per_category=args.per_category, results_path=results_path)
    if args.skip_bad:
        print(f"{args.json}: {dataset.skipped_summary}")
    return metrics
