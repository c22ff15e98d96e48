"""What a dataset's labels hold, as arrays: classes, box sizes, instances per image.

Read straight from the COCO json (no image or mask is decoded), so it costs a second or two even
for COCO itself. Crowd regions (``iscrowd=1``) are left out: they are not instances.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["LabelStats", "label_stats_from_coco", "save_label_stats", "load_label_stats"]


@dataclass(frozen=True)
class LabelStats:
    """One entry per non-crowd instance (``labels``, ``box_sizes``) or per image (the rest)."""

    class_names: tuple[str, ...]  # (C,) label k -> name (categories sorted by id)
    labels: np.ndarray  # (N,) int64 in [0, C)
    box_sizes: np.ndarray  # (N, 2) float64 box width, height in pixels of the original image
    image_sizes: np.ndarray  # (I, 2) int64 height, width
    instances_per_image: np.ndarray  # (I,) int64

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def label_stats_from_coco(json_path: str | Path) -> LabelStats:
    """The :class:`LabelStats` of a COCO instances json (categories in id order = label order)."""
    data = json.loads(Path(json_path).read_text())
    categories = sorted(data.get("categories", []), key=lambda c: c["id"])
    label_of = {c["id"]: k for k, c in enumerate(categories)}
    anns = [a for a in data.get("annotations", [])
            if not a.get("iscrowd", 0) and a.get("category_id") in label_of and len(a.get("bbox") or []) == 4]
    images = data.get("images", [])
    per_image = Counter(a["image_id"] for a in anns)
    return LabelStats(
        class_names=tuple(str(c.get("name", c["id"])) for c in categories),
        labels=np.array([label_of[a["category_id"]] for a in anns], dtype=np.int64),
        box_sizes=np.array([a["bbox"][2:4] for a in anns], dtype=np.float64).reshape(-1, 2),
        image_sizes=np.array([[im.get("height", 0), im.get("width", 0)] for im in images],
                             dtype=np.int64).reshape(-1, 2),
        instances_per_image=np.array([per_image.get(im["id"], 0) for im in images], dtype=np.int64),
    )


def save_label_stats(stats: LabelStats, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez(handle, class_names=np.array(stats.class_names, dtype=str), labels=stats.labels,
                 box_sizes=stats.box_sizes, image_sizes=stats.image_sizes,
                 instances_per_image=stats.instances_per_image)
    return path


def load_label_stats(path: str | Path) -> LabelStats:
    with np.load(path, allow_pickle=False) as data:
        return LabelStats(tuple(str(n) for n in data["class_names"]), data["labels"], data["box_sizes"],
                          data["image_sizes"], data["instances_per_image"])
