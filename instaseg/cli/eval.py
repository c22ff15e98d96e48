"""``instaseg eval``: COCO box, mask and keypoint (OKS) AP of a checkpoint on a dataset, or of a results file.

Keypoint AP is scored when the predictions carry keypoints and the categories of ``--json`` declare
keypoint names, with pycocotools' keypoint settings (20 detections per image, no small objects) and
the OKS sigmas of :func:`instaseg.evaluation.keypoint_sigmas`.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from instaseg.cli._common import add_model_options, ensure_writable_dir, warn
from instaseg.config.budget import COCO_MAX_DETS, coco_max_dets
from instaseg.errors import InstasegError
from instaseg.evaluation.per_class import SORT_KEYS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, help="ground-truth COCO instances json")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="NAME_OR_PATH",
                        help="a catalogue name (`instaseg weights list`; fetched once) or an instaseg checkpoint "
                             "to run on the dataset")
    source.add_argument("--checkpoint", help="an instaseg checkpoint to run on the dataset (= --weights PATH)")
    source.add_argument("--results", help="a COCO results json made by anything, to score as is")
    parser.add_argument("--images", help="image folder (needed with --checkpoint)")
    parser.add_argument("--out", help="folder for metrics.json, per_class.csv, the PR / F1 curves, the confusion "
                                      "matrix (and results.json and val_predictions/ with --checkpoint)")
    parser.add_argument("--max-dets", type=int, nargs=3, metavar=("D1", "D2", "D3"),
                        help="COCO maxDets (default 1 10 100, the last raised to the most instances one image "
                             "of --json has, so that a crowded dataset is not clipped)")
    add_model_options(parser)
    parser.add_argument("--per-category", action="store_true", help="also print AP per category")
    parser.add_argument("--sort", choices=SORT_KEYS, default="ap",
                        help="order of the per-class table: ap (mask AP, best first), name, instances (most first)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--allow-partial", action="store_true",
                        help="load only the checkpoint tensors that fit the model (the rest stay untrained)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip bad annotations/images of --json (counted and reported) instead of stopping")


def run(args: argparse.Namespace) -> int:
    from instaseg.engine.evaluate import write_metrics_json
    from instaseg.evaluation import KEYPOINT_MAX_DETS, format_metrics_table, format_per_category_table

    out = ensure_writable_dir(args.out) if args.out else None
    crowd, keypoint_crowd = _max_instances(args.json)
    if keypoint_crowd > KEYPOINT_MAX_DETS[-1]:
        print(f"keypoints: {args.json} has images with up to {keypoint_crowd} instances with labelled keypoints; "
              f"keypoint AP counts at most {KEYPOINT_MAX_DETS[-1]} detections per image (COCO's keypoint maxDets)")
    if args.max_dets is None:  # COCO scores at most the largest maxDets per image: fit it to the data
        args.max_dets = coco_max_dets(crowd, args.max_detections)
        if crowd > COCO_MAX_DETS[-1]:
            print(f"maxDets {' '.join(map(str, args.max_dets))}: {args.json} has images with up to {crowd} "
                  f"instances (COCO's {COCO_MAX_DETS[-1]} would count the rest as misses)")
    elif args.max_detections is not None:
        args.max_dets = (*args.max_dets[:-1], max(args.max_dets[-1], args.max_detections))
    if args.results and args.overrides:
        raise InstasegError("--set changes the model of --checkpoint; --results has none")
    notes: dict[str, str] = {}
    if args.results:
        metrics, notes = _evaluate_results_file(args, out)
    else:
        if not args.images:
            raise InstasegError(f"{'--weights' if args.weights else '--checkpoint'} needs --images (the image "
                                "folder of --json)")
        metrics = _evaluate_checkpoint(args, out)
    print(format_metrics_table(metrics))
    for iou_type, note in notes.items():
        print(f"{iou_type}: {note}")
    if args.per_category:
        print(format_per_category_table(metrics))
    curves = {t: values.pop("curves") for t, values in metrics.items() if "curves" in values}
    if "bbox" in curves or "segm" in curves:  # the per-class table has box and mask columns
        print(_per_class_table(curves, args.sort))
    if out is not None:
        write_metrics_json(metrics, out / "metrics.json", notes=notes)
        print(f"wrote {out / 'metrics.json'}")
        from instaseg.engine.run_report import render_run_folder

        written = render_run_folder(out, parts=("evaluation",), sort=args.sort)
        pictures = sum(path.suffix == ".png" for path in written)
        print(f"wrote per_class.csv and {pictures} pictures (PR and F1 curves, confusion matrix, val_predictions/) "
              f"in {out}")
    return 0


def _per_class_table(curves: dict, sort: str) -> str:
    from instaseg.evaluation.per_class import format_per_class_table, per_class_rows, sort_rows, summary_row

    box, mask = curves.get("bbox"), curves.get("segm")
    return format_per_class_table(sort_rows(per_class_rows(box, mask), sort), total=summary_row(box, mask))


def _max_instances(json_path: str) -> tuple[int, int]:
    """The most non-crowd annotations one image of a COCO json has, and the most of those with
    labelled keypoints (``(0, 0)`` when it cannot be read here: the evaluation itself then says
    what is wrong with the file)."""
    from instaseg.evaluation import keypoint_category_ids

    try:
        data = json.loads(Path(json_path).read_text())
        annotations = [a for a in data.get("annotations") or [] if isinstance(a, dict) and not a.get("iscrowd")]
        counts = Counter(a["image_id"] for a in annotations)
        with_keypoints = set(keypoint_category_ids(data.get("categories") or []))
        keypoint_counts = Counter(a["image_id"] for a in annotations
                                  if a.get("category_id") in with_keypoints and a.get("num_keypoints", 1) > 0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0, 0
    return max(counts.values(), default=0), max(keypoint_counts.values(), default=0)


def _evaluate_results_file(args: argparse.Namespace, out: Path | None) -> tuple[dict, dict[str, str]]:
    """Score what the file holds: masks when it has them, boxes when it has boxes or masks (from the
    masks when it has no boxes), keypoints when it has them and ``--json`` declares keypoints.
    Returns the metrics and ``{iou_type: note}`` for each type not scored from its own field. With
    ``out``, the PR arrays and the confusion counts are stored there for the pictures."""
    from instaseg.evaluation import evaluate_coco, keypoint_category_ids, result_fields

    try:
        results = json.loads(Path(args.results).read_text())
        fields = result_fields(results)
        iou_types, notes = fields.iou_types, fields.notes
        if "keypoints" in iou_types and not keypoint_category_ids(_categories(args.json)):
            iou_types = tuple(t for t in iou_types if t != "keypoints")
            notes["keypoints"] = "skipped (no category of --json declares keypoint names)"
        if not iou_types:
            raise ValueError("nothing to score: the results have keypoints only and --json declares no keypoints")
        metrics = evaluate_coco(args.json, results, iou_types=iou_types, max_dets=tuple(args.max_dets),
                                verbose=False, per_category=args.per_category, curves=True)
    except (OSError, ValueError, TypeError) as error:
        raise InstasegError(f"cannot score {args.results}: {error}") from None
    if out is not None:
        _save_results_file_plot_data(args.json, results, fields, metrics, out)
    return metrics, notes


def _categories(json_path: str) -> list:
    """The ``categories`` of a COCO json (empty when it has none)."""
    categories = json.loads(Path(json_path).read_text()).get("categories")
    return categories if isinstance(categories, list) else []


def _save_results_file_plot_data(gt_json: str, results: list, fields, metrics: dict, out: Path) -> None:
    """PR arrays and confusion counts of a results file (its masks where it has them, else its boxes;
    no confusion counts for keypoints-only results)."""
    from instaseg.engine.run_report import SCORE_THRESH, save_evaluation_data
    from instaseg.evaluation.confusion import confusion_from_coco
    from instaseg.evaluation.results_file import complete_results

    data = json.loads(Path(gt_json).read_text())
    sizes = {image["id"]: (image["height"], image["width"]) for image in data["images"]}
    iou_type = "segm" if fields.has_segmentation else "bbox"
    confusion = None
    if fields.has_bbox or fields.has_segmentation:
        confusion = confusion_from_coco(data, complete_results(results, sizes), score_thresh=SCORE_THRESH,
                                        iou_type=iou_type)
    save_evaluation_data(out, {t: values["curves"] for t, values in metrics.items()}, confusion)


def _evaluate_checkpoint(args: argparse.Namespace, out: Path | None) -> dict:
    from instaseg.config.budget import crowding_warnings
    from instaseg.data.coco import CocoDataset
    from instaseg.hub.build import load_model
    from instaseg.engine.evaluate import evaluate_model
    from instaseg.hub.pretrained import resolve_checkpoint

    model, config = load_model(resolve_checkpoint(args.weights or args.checkpoint), allow_partial=args.allow_partial,
                               overrides=args.overrides, max_detections=args.max_detections)
    dataset = CocoDataset(args.json, args.images, skip_bad=args.skip_bad)
    if dataset.num_classes != model.num_classes:
        raise InstasegError(f"the checkpoint predicts {model.num_classes} classes but {args.json} has "
                            f"{dataset.num_classes}")
    for message in crowding_warnings(dataset.max_instances_per_image(), config, args.max_dets, where=args.json):
        warn(message)
    results_path = out / "results.json" if out is not None else None
    metrics = evaluate_model(model.to(args.device), dataset, max_dets=tuple(args.max_dets),
                             per_category=args.per_category, results_path=results_path, curves=True, plots_dir=out)
    if args.skip_bad:
        print(f"{args.json}: {dataset.skipped_summary}")
    return metrics
