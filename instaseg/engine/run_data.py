"""The files a run folder's pictures are drawn from, so that ``instaseg report`` needs no model.

A run folder (``instaseg train --out``, ``instaseg eval --out``) holds, besides its checkpoints::

    metrics.jsonl                  the training log (see instaseg.engine.logging)
    results.csv                    that log as a table: one row per logged or evaluated iteration
    plot_data/pr_box.npz           pycocotools' accumulated PR arrays (instaseg.evaluation.curves)
    plot_data/pr_mask.npz
    plot_data/confusion.json       confusion counts (instaseg.evaluation.confusion)
    plot_data/labels.npz           the training labels' statistics (instaseg.data.label_stats)
    plot_data/train_batch_<k>.npz  training batch k (k < 3) after augmentation, with its targets
    plot_data/val_samples.json     a few validation images' ground truth and predictions (RLE masks;
                                   keypoints and skeleton for a keypoint dataset or model)
    plot_data/val_samples/*.png    those images

Keypoints in these files are ``(K, 3)`` lists / arrays in the picture's continuous pixel frame
(``instaseg.structures.keypoints``): ``(x, y, v)`` for ground truth (v the COCO visibility),
``(x, y, score)`` for predictions; the skeleton is 0-based keypoint pairs.

``results.csv`` columns, in this order, those the log has: ``iteration``, ``lr``, ``total_loss``,
each loss term by its name in ``metrics.jsonl`` (``loss_cls`` ...), ``time``, ``data_time``,
``skipped_steps``, then ``bbox_<key>`` and ``segm_<key>`` for each metric of ``metrics.json``
(``bbox_AP``, ``bbox_AP50`` ...). A cell is empty where the row's iteration has no such value (an
evaluation without a log line, or the other way round); floats are written exactly (``repr``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from instaseg.data.coco_keypoints import parse_keypoint_schema

__all__ = ["PLOT_DATA", "results_table", "write_results_csv", "read_results_csv", "ValSample", "val_samples",
           "save_val_samples", "load_val_samples", "decode_masks", "TrainPicture", "train_pictures",
           "save_train_batch", "load_train_batch"]

PLOT_DATA = "plot_data"
_TRAIN_FIELDS = ("lr", "total_loss")
_TIMING_FIELDS = ("time", "data_time", "skipped_steps")


# ------------------------------------------------------------------------------------- results.csv
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a crash
    return records


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def results_table(records: Iterable[dict[str, Any]]) -> dict[str, list[float]]:
    """``metrics.jsonl`` records -> columns (see the module docstring), one row per iteration."""
    rows: dict[int, dict[str, float]] = {}
    losses: list[str] = []
    metrics: list[str] = []
    for record in records:
        row = rows.setdefault(int(record["iteration"]), {})
        for key in (*_TRAIN_FIELDS, *_TIMING_FIELDS):
            if key in record:
                row[key] = _number(record[key])
        for name, value in (record.get("losses") or {}).items():
            losses += [name] if name not in losses else []
            row[name] = _number(value)
        for iou_type, values in (record.get("eval") or {}).items():
            for key, value in values.items():
                column = f"{iou_type}_{key}"
                metrics += [column] if column not in metrics else []
                row[column] = _number(value)
    present = {key for row in rows.values() for key in row}
    names = [k for k in _TRAIN_FIELDS if k in present] + losses + [k for k in _TIMING_FIELDS if k in present]
    names += sorted(metrics, key=lambda c: (not c.startswith("bbox_"), metrics.index(c)))
    order = sorted(rows)
    table = {"iteration": [float(i) for i in order]}
    for name in names:
        table[name] = [rows[i].get(name, float("nan")) for i in order]
    return table


def write_results_csv(metrics_jsonl: str | Path, path: str | Path) -> Path:
    """Write ``results.csv`` from ``metrics.jsonl`` (atomically)."""
    table = results_table(_read_jsonl(Path(metrics_jsonl)))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(table))
        for values in zip(*table.values()):
            writer.writerow([str(int(values[0]))] + ["" if math.isnan(v) else repr(v) for v in values[1:]])
    os.replace(tmp, path)
    return path


def read_results_csv(path: str | Path) -> dict[str, np.ndarray]:
    """``results.csv`` as float columns (NaN in empty cells)."""
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows = [[float(v) if v else float("nan") for v in row] for row in reader]
    data = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    return {name: data[:, j] for j, name in enumerate(header)}


# ------------------------------------------------------------------------------------- validation samples
@dataclass(frozen=True)
class ValSample:
    """One validation image with its ground truth and the model's detections (original frame)."""

    image_id: int
    image: np.ndarray  # (H, W, 3) uint8 RGB
    # {"label": k, "bbox": xyxy, "segmentation": compressed RLE (when annotated), "keypoints": (K, 3) (x, y, v)}
    gt: list[dict[str, Any]]
    # {"label", "bbox" xyxy, "score", "segmentation" (models with masks), "keypoints" (K, 3) (x, y, score)}
    predictions: list[dict[str, Any]]
    skeleton: tuple[tuple[int, int], ...] = ()  # 0-based keypoint pairs the limbs join; () without keypoints


def _xyxy(bbox_xywh: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox_xywh)
    return [x, y, x + w, y + h]


def _rle_str(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _keypoints(flat: Any, num_keypoints: int, labelled_only: bool) -> list[list[float]] | None:
    """COCO's flat ``[x, y, v_or_score] * K`` (pixel indices) -> ``(K, 3)`` in the continuous frame
    (+0.5); None when absent or not K long. ``labelled_only``: ground truth, whose unlabelled points
    (v = 0) stay ``(0, 0, 0)``."""
    if not num_keypoints or not isinstance(flat, list) or len(flat) != 3 * num_keypoints:
        return None
    points = np.asarray(flat, dtype=np.float64).reshape(num_keypoints, 3)
    shift = (points[:, 2:] > 0) if labelled_only else np.ones((num_keypoints, 1), bool)
    points[:, :2] += 0.5 * shift
    return points.tolist()


def _truth_item(coco_gt: Any, annotation: dict[str, Any], label: int, num_keypoints: int) -> dict[str, Any]:
    item: dict[str, Any] = {"label": label, "bbox": _xyxy(annotation["bbox"])}
    if annotation.get("segmentation"):
        item["segmentation"] = _rle_str(coco_gt.annToRLE(annotation))
    keypoints = _keypoints(annotation.get("keypoints"), num_keypoints, labelled_only=True)
    if keypoints is not None:
        item["keypoints"] = keypoints
    return item


def _predicted_item(result: dict[str, Any], label: int, num_keypoints: int) -> dict[str, Any]:
    item: dict[str, Any] = {"label": label, "bbox": _xyxy(result["bbox"]), "score": float(result["score"])}
    if "segmentation" in result:
        item["segmentation"] = _rle_str(result["segmentation"])
    keypoints = _keypoints(result.get("keypoints"), num_keypoints, labelled_only=False)
    if keypoints is not None:
        item["keypoints"] = keypoints
    return item


def val_samples(images: dict[int, np.ndarray], coco_gt: Any, results: Sequence[dict[str, Any]],
                category_ids: Sequence[int]) -> list[ValSample]:
    """Samples of the images in ``images`` ({image id: (H, W, 3) uint8}) from the ground truth
    (pycocotools ``COCO``, crowd regions left out) and COCO results (dataset category ids).

    Results without masks (a boxes + keypoints model) are kept with their boxes; keypoints (ground
    truth and results) come along when the categories declare them, with their skeleton.
    """
    label_of = {int(c): k for k, c in enumerate(category_ids)}
    schema = parse_keypoint_schema(Path("the validation json"), coco_gt.dataset.get("categories", []))
    num_keypoints = 0 if schema is None else schema.num_keypoints
    skeleton = () if schema is None else schema.skeleton
    wanted: dict[int, list[dict[str, Any]]] = {int(i): [] for i in images}
    for r in results:
        if int(r["image_id"]) in wanted and "bbox" in r:
            wanted[int(r["image_id"])].append(r)
    samples = []
    for image_id, image in images.items():
        gt = [_truth_item(coco_gt, a, label_of[a["category_id"]], num_keypoints)
              for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0) and a["category_id"] in label_of]
        predictions = [_predicted_item(r, label_of[int(r["category_id"])], num_keypoints)
                       for r in wanted[int(image_id)]]
        samples.append(ValSample(int(image_id), image, gt, predictions, skeleton))
    return samples


def save_val_samples(samples: Sequence[ValSample], class_names: Sequence[str], folder: str | Path) -> Path:
    """``folder/val_samples.json`` and the images as ``folder/val_samples/<image id>.png``."""
    folder = Path(folder)
    (folder / "val_samples").mkdir(parents=True, exist_ok=True)
    entries = []
    for sample in samples:
        name = f"val_samples/{sample.image_id}.png"
        Image.fromarray(sample.image).save(folder / name)
        entries.append({"image_id": sample.image_id, "image": name, "gt": sample.gt, "predictions": sample.predictions,
                        "skeleton": [list(pair) for pair in sample.skeleton]})
    path = folder / "val_samples.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"class_names": list(class_names), "samples": entries}))
    os.replace(tmp, path)
    return path


def load_val_samples(path: str | Path) -> tuple[list[ValSample], list[str]]:
    """The samples and class names :func:`save_val_samples` wrote."""
    path = Path(path)
    data = json.loads(path.read_text())
    samples = [ValSample(int(e["image_id"]), np.asarray(Image.open(path.parent / e["image"]).convert("RGB")),
                         e["gt"], e["predictions"], tuple((int(a), int(b)) for a, b in e.get("skeleton", [])))
               for e in data["samples"]]
    return samples, list(data["class_names"])


def decode_masks(items: Sequence[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """``(N, H, W)`` bool masks of the items' compressed RLE ``segmentation`` (empty for an item without one)."""
    masks = np.zeros((len(items), height, width), dtype=bool)
    rows = [k for k, item in enumerate(items) if "segmentation" in item]
    if rows:
        masks[rows] = mask_util.decode([items[k]["segmentation"] for k in rows]).transpose(2, 0, 1).astype(bool)
    return masks


# ------------------------------------------------------------------------------------- training batches
@dataclass(frozen=True)
class TrainPicture:
    """One augmented training image as the model received it, with its targets, maybe shrunk."""

    image_id: int
    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (G, 4) float32 xyxy in this picture's pixels
    labels: np.ndarray  # (G,) int64
    masks: np.ndarray  # (G, H, W) bool
    keypoints: np.ndarray | None = None  # (G, K, 3) float32 (x, y, v) in this picture's pixels; None without
    skeleton: tuple[tuple[int, int], ...] = ()  # 0-based keypoint pairs the limbs join


def train_pictures(batch: Any, max_side: int = 512, skeleton: Sequence[tuple[int, int]] = ()) -> list[TrainPicture]:
    """The images of a training batch (``images``: (3, H, W) float in [0, 255]; ``targets``;
    ``image_ids``), shrunk to at most ``max_side`` pixels (the mosaics show them small anyway);
    targets' keypoints come along, to be drawn with ``skeleton``."""
    pictures = []
    for image, target, image_id in zip(batch.images, batch.targets, batch.image_ids):
        image = image.detach().float().cpu()
        masks = target.masks.detach().cpu()
        scale = min(1.0, max_side / max(image.shape[-2:]))
        if scale < 1.0:
            size = [max(1, round(s * scale)) for s in image.shape[-2:]]
            image = torch.nn.functional.interpolate(image[None], size=size, mode="area")[0]
            masks = torch.nn.functional.interpolate(masks[None].float(), size=size, mode="nearest")[0] > 0.5
        keypoints = None
        if target.keypoints is not None:  # x, y scale as the image; the visibility stays
            keypoints = target.keypoints.detach().cpu().float().clone()
            keypoints[..., :2] *= scale
            keypoints = keypoints.numpy()
        pictures.append(TrainPicture(
            int(image_id), image.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy(),
            (target.boxes.detach().cpu().float() * scale).numpy(),
            target.labels.detach().cpu().numpy().astype(np.int64),
            masks.bool().numpy(), keypoints, tuple((int(a), int(b)) for a, b in skeleton)))
    return pictures


def save_train_batch(pictures: Sequence[TrainPicture], class_names: Sequence[str], path: str | Path) -> Path:
    """One batch as a compressed ``.npz``: image ``i`` as ``{i}_image``, ``{i}_boxes``, ``{i}_labels``,
    ``{i}_masks`` (bit-packed), ``{i}_id`` and, with keypoints, ``{i}_keypoints`` and ``{i}_skeleton``;
    with the class names."""
    arrays: dict[str, np.ndarray] = {"class_names": np.array(list(class_names), dtype=str),
                                     "size": np.array(len(pictures))}
    for i, p in enumerate(pictures):
        arrays.update({f"{i}_image": p.image, f"{i}_boxes": p.boxes, f"{i}_labels": p.labels,
                       f"{i}_masks": np.packbits(p.masks.reshape(-1)), f"{i}_id": np.array(p.image_id)})
        if p.keypoints is not None:
            arrays[f"{i}_keypoints"] = p.keypoints.astype(np.float32)
            arrays[f"{i}_skeleton"] = np.array(p.skeleton, dtype=np.int64).reshape(-1, 2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(tmp, path)
    return path


def load_train_batch(path: str | Path) -> tuple[list[TrainPicture], list[str]]:
    """The pictures and class names :func:`save_train_batch` wrote."""
    with np.load(path, allow_pickle=False) as data:
        pictures = []
        for i in range(int(data["size"])):
            image, labels = data[f"{i}_image"], data[f"{i}_labels"]
            shape = (len(labels), *image.shape[:2])
            masks = np.unpackbits(data[f"{i}_masks"], count=int(np.prod(shape))).reshape(shape).astype(bool)
            keypoints = data[f"{i}_keypoints"] if f"{i}_keypoints" in data.files else None
            skeleton = tuple(map(tuple, data[f"{i}_skeleton"].tolist())) if keypoints is not None else ()
            pictures.append(TrainPicture(int(data[f"{i}_id"]), image, data[f"{i}_boxes"], labels, masks,
                                         keypoints, skeleton))
        return pictures, [str(n) for n in data["class_names"]]
