"""A run folder a person can read at a glance: the pictures, drawn from the run folder's files.

What each picture shows (README, "What a run folder holds")::

    results.csv, results.png       losses, LR and box / mask / keypoint AP against the iteration
    pr_curves_box.png, _mask.png   precision-recall per class at IoU 0.50 and over 0.50:0.95
                                   (_keypoints.png: at OKS thresholds, keypoint models)
    f1_curves_box.png, _mask.png   precision, recall and F1 against the score threshold
    confusion_matrix.png           which class each object was taken for, at one operating point
    per_class.csv                  images, instances, box and mask AP / AP50 of each class
    labels.png                     the training labels: classes, box sizes and shapes, crowding
    train_batch_<k>.png            the first training batches after augmentation, with targets
    val_predictions/<id>.png       the first validation images holding objects: ground truth | prediction

Keypoint datasets and models: the pictures draw the keypoints and the skeleton's limbs too (labelled
ground-truth joints; predicted joints whose score is above 0, the default of ``instaseg predict``
for logit scores); detections without masks are drawn as boxes.

Training calls :func:`record_label_stats` once, :func:`record_train_batch` for its first
``NUM_TRAIN_BATCHES`` iterations (the first micro-batch of each, as the loop received it) and
:func:`refresh_run_folder` after each evaluation and at the end; evaluation stores its part with
:func:`save_evaluation_data`; ``instaseg report`` calls :func:`render_run_folder`. A picture that
cannot be drawn (matplotlib missing, a broken file) is skipped with a warning: pictures never stop
a training run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instaseg.data.label_stats import label_stats_from_coco, load_label_stats, save_label_stats
from instaseg.engine.logging import get_logger
from instaseg.engine.run_data import (PLOT_DATA, ValSample, decode_masks, load_train_batch, load_val_samples,
                                      read_results_csv, save_train_batch, save_val_samples, train_pictures,
                                      write_results_csv)
from instaseg.evaluation.confusion import ConfusionMatrix, load_confusion, save_confusion
from instaseg.evaluation.curves import PRCurves, load_curves, save_curves
from instaseg.evaluation.per_class import per_class_rows, sort_rows, summary_row, write_per_class_csv

__all__ = ["SCORE_THRESH", "NUM_VAL_SAMPLES", "NUM_TRAIN_BATCHES", "save_evaluation_data", "record_label_stats",
           "record_train_batch", "refresh_run_folder", "render_run_folder", "PARTS"]

SCORE_THRESH = 0.5  # the operating point of the confusion matrix and the prediction pictures (predict's default)
NUM_VAL_SAMPLES = 4
NUM_TRAIN_BATCHES = 3
PARTS = ("results", "evaluation", "data")
_PR_FILES = {"bbox": "pr_box.npz", "segm": "pr_mask.npz", "keypoints": "pr_keypoints.npz"}
_KIND = {"bbox": "box", "segm": "mask", "keypoints": "keypoints"}
_VIEW_SIDE = 384  # small images are enlarged to about this many pixels so that labels read


# ------------------------------------------------------------------------------------- storing
def save_evaluation_data(folder: str | Path, curves: dict[str, PRCurves], confusion: ConfusionMatrix | None,
                         samples: Sequence[ValSample] = (), class_names: Sequence[str] = ()) -> None:
    """Write an evaluation's PR arrays, confusion counts and validation samples to ``folder/plot_data``."""
    data = Path(folder) / PLOT_DATA
    for iou_type, value in curves.items():
        save_curves(value, data / _PR_FILES[iou_type])
    if confusion is not None:
        save_confusion(confusion, data / "confusion.json")
    if samples:
        save_val_samples(samples, class_names, data)


def record_label_stats(out_dir: str | Path, dataset: Any) -> None:
    """Store (once per run folder) the statistics of the training labels and draw ``labels.png``;
    nothing for a dataset without a COCO ``json_path``."""
    path = Path(out_dir) / PLOT_DATA / "labels.npz"
    json_path = getattr(dataset, "json_path", None)
    if json_path is None or path.is_file():
        return
    try:
        save_label_stats(label_stats_from_coco(json_path), path)
    except Exception as error:  # noqa: BLE001 - pictures never stop a training run
        get_logger().warning(f"run folder pictures: could not read the label statistics of {json_path} ({error})")
        return
    written: list[Path] = []
    _attempt(written, "labels.png", lambda: _labels(Path(out_dir), Path(out_dir)))


def record_train_batch(out_dir: str | Path, index: int, batch: Any, class_names: Sequence[str] | None,
                       skeleton: Sequence[tuple[int, int]] = ()) -> None:
    """Store training batch ``index`` as the loop received it (after augmentation; ``images``
    (3, H, W) float, ``targets``, ``image_ids``) and draw ``train_batch_<index>.png``. Without
    ``class_names`` the pictures show label numbers; targets' keypoints are drawn with ``skeleton``."""
    out_dir = Path(out_dir)
    try:
        pictures = train_pictures(batch, skeleton=skeleton)
        save_train_batch(pictures, list(class_names or []), out_dir / PLOT_DATA / f"train_batch_{index}.npz")
    except Exception as error:  # noqa: BLE001 - pictures never stop a training run
        get_logger().warning(f"run folder pictures: could not store training batch {index} ({error})")
        return
    written: list[Path] = []
    path = out_dir / PLOT_DATA / f"train_batch_{index}.npz"
    _attempt(written, f"train_batch_{index}.png", lambda: _train_batch(path, out_dir))


def refresh_run_folder(out_dir: str | Path) -> list[Path]:
    """Redraw what changes during training: results.csv / .png and the evaluation pictures."""
    return render_run_folder(out_dir, parts=("results", "evaluation"))


# ------------------------------------------------------------------------------------- drawing
def _attempt(written: list[Path], what: str, draw: Callable[[], Path | list[Path] | None]) -> None:
    try:
        result = draw()
    except ImportError as error:
        get_logger().warning(f"run folder pictures: {what} skipped, {error} (pip install matplotlib)")
        return
    except Exception as error:  # noqa: BLE001 - one broken file costs one picture, not the run
        get_logger().warning(f"run folder pictures: could not draw {what} ({type(error).__name__}: {error})")
        return
    if result is not None:
        written.extend(result if isinstance(result, list) else [result])


def _results_png(out: Path) -> Path | None:
    from instaseg.viz.plots import plot_results

    path = out / "results.csv"
    return plot_results(read_results_csv(path), out / "results.png") if path.is_file() else None


def _curves(run_dir: Path, out: Path, sort: str) -> list[Path]:
    from instaseg.viz.plots import plot_confidence_curves, plot_pr_curves

    written, curves = [], {}
    for iou_type, name in _PR_FILES.items():
        if (run_dir / PLOT_DATA / name).is_file():
            curves[iou_type] = load_curves(run_dir / PLOT_DATA / name)
            kind = _KIND[iou_type]
            written.append(plot_pr_curves(curves[iou_type], out / f"pr_curves_{kind}.png"))
            written.append(plot_confidence_curves(curves[iou_type], out / f"f1_curves_{kind}.png"))
    box, mask = curves.get("bbox"), curves.get("segm")
    if box is not None or mask is not None:  # the per-class table has box and mask columns
        rows = sort_rows(per_class_rows(box, mask), sort)
        written.append(write_per_class_csv(rows, out / "per_class.csv", total=summary_row(box, mask)))
    return written


def _confusion(run_dir: Path, out: Path) -> Path | None:
    from instaseg.viz.plots import plot_confusion_matrix

    path = run_dir / PLOT_DATA / "confusion.json"
    return plot_confusion_matrix(load_confusion(path), out / "confusion_matrix.png") if path.is_file() else None


def _enlarge(image: np.ndarray, masks: np.ndarray, boxes: np.ndarray, keypoints: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Small pictures enlarged by a whole factor (nearest pixel) to about ``_VIEW_SIDE`` pixels, with
    their ``(N, H, W)`` masks, ``(N, 4)`` boxes and ``(N, K, 3)`` keypoints (x, y scaled; the third value kept)."""
    factor = max(1, int(_VIEW_SIDE // max(image.shape[:2])))
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if factor == 1:
        return image, masks, boxes, keypoints
    grow = np.ones((factor, factor), dtype=np.uint8)
    image = np.kron(image, grow[..., None]).astype(np.uint8)
    masks = masks.repeat(factor, axis=1).repeat(factor, axis=2)
    if keypoints is not None:
        keypoints = np.concatenate([keypoints[..., :2] * factor, keypoints[..., 2:]], axis=-1).astype(np.float32)
    return image, masks, boxes * factor, keypoints


def _item_keypoints(items: Sequence[dict[str, Any]]) -> np.ndarray | None:
    """``(N, K, 3)`` keypoints of the items when every one has them, else None."""
    if not items or not all("keypoints" in i for i in items):
        return None
    return np.asarray([i["keypoints"] for i in items], dtype=np.float32)


def _overlay(image: np.ndarray, items: Sequence[dict[str, Any]], names: Sequence[str], scores: bool,
             skeleton: Sequence[tuple[int, int]] = ()) -> Any:
    from instaseg.viz.overlay import draw_instances

    masks = decode_masks(items, *image.shape[:2])
    image, masks, boxes, keypoints = _enlarge(image, masks, np.array([i["bbox"] for i in items], np.float32),
                                              _item_keypoints(items))
    return draw_instances(image, torch.from_numpy(boxes), torch.tensor([i["label"] for i in items], dtype=torch.int64),
                          torch.from_numpy(masks), torch.tensor([i["score"] for i in items]) if scores else None,
                          list(names), keypoints=None if keypoints is None else torch.from_numpy(keypoints),
                          skeleton=skeleton)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _val_predictions(run_dir: Path, out: Path) -> list[Path] | None:
    from instaseg.viz.overlay import add_title, side_by_side

    path = run_dir / PLOT_DATA / "val_samples.json"
    if not path.is_file():
        return None
    samples, names = load_val_samples(path)
    folder = out / "val_predictions"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for sample in samples:
        kept = [p for p in sample.predictions if p["score"] >= SCORE_THRESH]
        truth = add_title(_overlay(sample.image, sample.gt, names, False, sample.skeleton),
                          f"ground truth: {_count(len(sample.gt), 'object')}")
        found = add_title(_overlay(sample.image, kept, names, True, sample.skeleton),
                          f"prediction: {_count(len(kept), 'detection')} scoring >= {SCORE_THRESH:.2f}")
        written.append(folder / f"{sample.image_id}.png")
        side_by_side(truth, found, gap=8).save(written[-1])
    return written


def _train_batch(path: Path, out: Path) -> Path:
    """``train_batch_<k>.png`` from ``plot_data/train_batch_<k>.npz``: the batch's images as a grid."""
    from instaseg.viz.overlay import add_title, draw_instances, tile_pictures

    pictures, names = load_train_batch(path)
    tiles = []
    for p in pictures:
        image, masks, boxes, keypoints = _enlarge(p.image, p.masks, p.boxes, p.keypoints)
        picture = draw_instances(image, torch.from_numpy(boxes), torch.from_numpy(p.labels), torch.from_numpy(masks),
                                 class_names=names, skeleton=p.skeleton,
                                 keypoints=None if keypoints is None else torch.from_numpy(keypoints))
        tiles.append(add_title(picture, f"image {p.image_id}: {_count(len(p.labels), 'object')}", size=12))
    index = path.stem.rsplit("_", 1)[-1]
    mosaic = tile_pictures(tiles, columns=math.ceil(math.sqrt(len(tiles))), gap=6)
    target = out / f"train_batch_{index}.png"
    add_title(mosaic, f"training batch {index} after augmentation, with its targets").save(target)
    return target


def _train_batches(run_dir: Path, out: Path) -> list[Path]:
    return [_train_batch(path, out) for path in sorted((run_dir / PLOT_DATA).glob("train_batch_*.npz"))]


def _labels(run_dir: Path, out: Path) -> Path | None:
    from instaseg.viz.plots import plot_label_stats

    path = run_dir / PLOT_DATA / "labels.npz"
    return plot_label_stats(load_label_stats(path), out / "labels.png") if path.is_file() else None


def render_run_folder(run_dir: str | Path, out: str | Path | None = None, parts: Sequence[str] = PARTS,
                      sort: str = "ap") -> list[Path]:
    """Draw every picture whose data ``run_dir`` holds into ``out`` (default: ``run_dir``).

    ``parts``: ``"results"`` (results.csv, results.png), ``"evaluation"`` (PR and F1 curves,
    per_class.csv sorted by ``sort``, confusion matrix, validation pictures), ``"data"`` (labels,
    training batches). Returns the paths written.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if "results" in parts and (run_dir / "metrics.jsonl").is_file():
        _attempt(written, "results.csv", lambda: write_results_csv(run_dir / "metrics.jsonl", out / "results.csv"))
        _attempt(written, "results.png", lambda: _results_png(out))
    if "evaluation" in parts:
        _attempt(written, "the PR curves", lambda: _curves(run_dir, out, sort))
        _attempt(written, "confusion_matrix.png", lambda: _confusion(run_dir, out))
        _attempt(written, "val_predictions", lambda: _val_predictions(run_dir, out))
    if "data" in parts:
        _attempt(written, "labels.png", lambda: _labels(run_dir, out))
        _attempt(written, "the training batches", lambda: _train_batches(run_dir, out))
    return written
