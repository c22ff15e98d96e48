"""The files a run folder's pictures are drawn from, so that ``instaseg report`` needs no model.

A run folder (``instaseg train --out``, ``instaseg eval --out``) holds, besides its checkpoints::

    metrics.jsonl                  the training log (see instaseg.engine.logging)
    results.csv                    that log as a table: one row per logged or evaluated iteration
    plot_data/pr_box.npz           pycocotools' accumulated PR arrays (instaseg.evaluation.curves)
    plot_data/pr_mask.npz
    plot_data/confusion.json       confusion counts (instaseg.evaluation.confusion)
    plot_data/labels.npz           the training labels' statistics (instaseg.data.label_stats)
    plot_data/train_batch_<k>.npz  training batch k (k < 3) after augmentation, with its targets
    plot_data/val_samples.json     a few validation images' ground truth and predictions (RLE masks)
    plot_data/val_samples/*.png    those images

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
    gt: list[dict[str, Any]]  # {"label": k, "bbox": xyxy, "segmentation": compressed RLE}
    predictions: list[dict[str, Any]]  # {"label", "bbox" xyxy, "score", "segmentation"}


def _xyxy(bbox_xywh: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox_xywh)
    return [x, y, x + w, y + h]


def _rle_str(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def val_samples(images: dict[int, np.ndarray], coco_gt: Any, results: Sequence[dict[str, Any]],
                category_ids: Sequence[int]) -> list[ValSample]:
    """Samples of the images in ``images`` ({image id: (H, W, 3) uint8}) from the ground truth
    (pycocotools ``COCO``, crowd regions left out) and COCO results (dataset category ids)."""
    label_of = {int(c): k for k, c in enumerate(category_ids)}
    wanted: dict[int, list[dict[str, Any]]] = {int(i): [] for i in images}
    for r in results:
        if int(r["image_id"]) in wanted and "segmentation" in r and "bbox" in r:
            wanted[int(r["image_id"])].append(r)
    samples = []
    for image_id, image in images.items():
        gt = [{"label": label_of[a["category_id"]], "bbox": _xyxy(a["bbox"]),
               "segmentation": _rle_str(coco_gt.annToRLE(a))}
              for a in coco_gt.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0) and a["category_id"] in label_of]
        predictions = [{"label": label_of[int(r["category_id"])], "bbox": _xyxy(r["bbox"]), "score": float(r["score"]),
                        "segmentation": _rle_str(r["segmentation"])}
                       for r in wanted[int(image_id)]]
        samples.append(ValSample(int(image_id), image, gt, predictions))
    return samples


def save_val_samples(samples: Sequence[ValSample], class_names: Sequence[str], folder: str | Path) -> Path:
    """``folder/val_samples.json`` and the images as ``folder/val_samples/<image id>.png``."""
    folder = Path(folder)
    (folder / "val_samples").mkdir(parents=True, exist_ok=True)
    entries = []
    for sample in samples:
        name = f"val_samples/{sample.image_id}.png"
        Image.fromarray(sample.image).save(folder / name)
        entries.append({"image_id": sample.image_id, "image": name, "gt": sample.gt, "predictions": sample.predictions})
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
                         e["gt"], e["predictions"]) for e in data["samples"]]
    return samples, list(data["class_names"])


def decode_masks(items: Sequence[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """``(N, H, W)`` bool masks of the items' compressed RLE ``segmentation``."""
    if not items:
        return np.zeros((0, height, width), dtype=bool)
    return np.ascontiguousarray(mask_util.decode([i["segmentation"] for i in items]).transpose(2, 0, 1).astype(bool))


# ------------------------------------------------------------------------------------- training batches
@dataclass(frozen=True)
class TrainPicture:
    """One augmented training image as the model received it, with its targets, maybe shrunk."""

    image_id: int
    image: np.ndarray  # (H, W, 3) uint8
    boxes: np.ndarray  # (G, 4) float32 xyxy in this picture's pixels
    labels: np.ndarray  # (G,) int64
    masks: np.ndarray  # (G, H, W) bool


def train_pictures(batch: Any, max_side: int = 512) -> list[TrainPicture]:
    """The images of a training batch (``images``: (3, H, W) float in [0, 255]; ``targets``;
    ``image_ids``), shrunk to at most ``max_side`` pixels (the mosaics show them small anyway)."""
    pictures = []
    for image, target, image_id in zip(batch.images, batch.targets, batch.image_ids):
        image = image.detach().float().cpu()
        masks = target.masks.detach().cpu()
        scale = min(1.0, max_side / max(image.shape[-2:]))
        if scale < 1.0:
            size = [max(1, round(s * scale)) for s in image.shape[-2:]]
            image = torch.nn.functional.interpolate(image[None], size=size, mode="area")[0]
            masks = torch.nn.functional.interpolate(masks[None].float(), size=size, mode="nearest")[0] > 0.5
        pictures.append(TrainPicture(
            int(image_id), image.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy(),
            (target.boxes.detach().cpu().float() * scale).numpy(),
            target.labels.detach().cpu().numpy().astype(np.int64),
            masks.bool().numpy()))
    return pictures


def save_train_batch(pictures: Sequence[TrainPicture], class_names: Sequence[str], path: str | Path) -> Path:
    """One batch as a compressed ``.npz``: image ``i`` as ``{i}_image``, ``{i}_boxes``, ``{i}_labels``,
    ``{i}_masks`` (bit-packed) and ``{i}_id``, with the class names."""
    arrays: dict[str, np.ndarray] = {"class_names": np.array(list(class_names), dtype=str),
                                     "size": np.array(len(pictures))}
    for i, p in enumerate(pictures):
        arrays.update({f"{i}_image": p.image, f"{i}_boxes": p.boxes, f"{i}_labels": p.labels,
                       f"{i}_masks": np.packbits(p.masks.reshape(-1)), f"{i}_id": np.array(p.image_id)})
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
            pictures.append(TrainPicture(int(data[f"{i}_id"]), image, data[f"{i}_boxes"], labels, masks))
        return pictures, [str(n) for n in data["class_names"]]
