"""COCO instance-segmentation datasets: a validated json, contiguous labels and lazily decoded masks.

``CocoDataset`` reads a COCO ``instances`` json once, checks every entry and keeps a compact record
per image; the image file and the masks of an image are only read and decoded in ``__getitem__``
(decoding all masks at load would hold ``G x H x W`` bytes per image in memory for the whole run).

Frames: boxes are absolute-pixel ``xyxy`` float in continuous coordinates (COCO's ``[x, y, w, h]``
becomes ``[x, y, x + w, y + h]``, no "+1"); masks are ``(G, H, W)`` bool; labels are ``0..C-1``
with label ``k`` standing for ``category_ids[k]`` (category ids sorted ascending).

Keypoints (a COCO ``person_keypoints`` json: categories with ``keypoints`` names and a ``skeleton``,
annotations with ``keypoints`` and ``num_keypoints``): ``Targets.keypoints`` is ``(G, K, 3)`` float
``(x, y, v)`` in the frame of the boxes (+0.5 on COCO's integer coordinates, ``(0, 0, 0)`` for
``v == 0``), checked and parsed by :mod:`instaseg.data.coco_keypoints`. A json without keypoint
names gives ``Targets.keypoints = None``, as before.

Bad entries: by default the first one stops loading with a :class:`DatasetError` naming the json
file, the image or annotation id and what to do. With ``skip_bad=True`` bad annotations and images
are skipped instead and counted in ``dataset.skipped`` (reason -> count). A ``file_name`` that
escapes the image folder (absolute, or with ``..``) is always refused: skipping would hide a json
that tries to read files it should not.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from instaseg.data.coco_keypoints import KeypointSchema, num_keypoints_mismatch, parse_keypoint_schema, \
    parse_keypoints
from instaseg.data.image_io import read_image
from instaseg.errors import DatasetError
from instaseg.structures.instances import Targets
from instaseg.structures.masks import annotation_to_bitmap

__all__ = ["CocoDataset", "Sample", "compressed_rle_runs"]

# A bbox may overhang the image by this many pixels (float rounding in real COCO files puts some
# boxes at x + w = W + 0.01); it is clipped to the image. Larger overhangs are errors.
_BOX_TOLERANCE = 1.0
_SKIP_HINT = "fix or remove it, or skip bad entries (skip_bad=True; --skip-bad on the command line)"
_COCO_SMALL, _COCO_MEDIUM = 32**2, 96**2  # COCO's small/medium/large area limits (pixels)


@dataclass
class Sample:
    """One image and its ground truth, in the frame of ``image``."""

    image: Tensor  # (3, H, W) uint8 RGB as read; float in [0, 255] once transformed
    targets: Targets  # non-crowd instances: boxes (G, 4) xyxy, labels (G,), masks (G, H, W) bool; crowd_boxes
    image_id: int  # the COCO image id
    crowd_boxes: Tensor  # (Gc, 4) float xyxy of the iscrowd regions (also in targets.crowd_boxes)
    # What loading this item skipped (skip_bad: reason -> count). A DataLoader worker's dataset is a
    # copy whose ``skipped`` counter the main process never sees: this marker travels with the batch
    # and the loader adds it to the main process's dataset (instaseg.data.loader).
    skipped: dict[str, int] = field(default_factory=dict)


class _Annotation(NamedTuple):
    ann_id: int
    label: int
    box_xyxy: tuple[float, float, float, float]  # clipped to the image
    iscrowd: bool
    segmentation: Any
    keypoints: np.ndarray | None = None  # (K, 3) float32 continuous frame; None without keypoint names


class _ImageRecord(NamedTuple):
    image_id: int
    file_name: str
    height: int
    width: int
    annotations: list[_Annotation]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def compressed_rle_runs(counts: str | bytes) -> list[int]:
    """Run lengths encoded in a compressed COCO RLE ``counts`` string (column-major runs, 0s first).

    The format (pycocotools' ``rleToString``): each run is a variable-length integer of 5-bit groups,
    one character per group (value + 48), bit 0x20 set while more groups follow, bit 0x10 of the
    last group is the sign; from the third run on, the stored value is the difference to the run
    two places before. Decoding it here lets :class:`CocoDataset` check that the runs add up to
    ``H * W`` before pycocotools decodes them: its decoder writes past the bitmap otherwise.

    Raises:
        ValueError: a character outside the alphabet or a truncated last run.
    """
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    runs: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("compressed RLE counts end in the middle of a run")
            code = ord(text[pos]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"compressed RLE counts hold an invalid character {text[pos]!r}")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            pos, shift = pos + 1, shift + 5
            if not more and code & 0x10:
                value -= 1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """What is wrong with a COCO segmentation for an image of ``height x width``, or None."""
    if isinstance(segmentation, list):
        if not segmentation or all(isinstance(p, (list, tuple)) and not p for p in segmentation):
            return "has an empty segmentation"
        for i, part in enumerate(segmentation):
            if not isinstance(part, (list, tuple)) or not all(_is_number(v) for v in part):
                return f"has a malformed polygon (part {i} is not a list of finite numbers)"
            if len(part) % 2 or len(part) < 6:
                return f"has a malformed polygon (part {i} has {len(part)} numbers: need an even count >= 6)"
        return None
    if not isinstance(segmentation, dict) or not {"counts", "size"} <= segmentation.keys():
        return "has a segmentation that is neither a polygon list nor an RLE dict with 'counts' and 'size'"
    size, counts = segmentation["size"], segmentation["counts"]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or [height, width] != list(size):
        return f"has an RLE of size {size} but the image is [{height}, {width}] (height, width)"
    if isinstance(counts, list):
        if not counts:
            return "has an empty segmentation"
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
            return f"has an uncompressed RLE whose runs are not non-negative ints summing to {height * width}"
        return None
    if not isinstance(counts, (str, bytes)) or not counts:
        return "has an empty segmentation" if counts in ("", b"") else "has RLE counts of a wrong type"
    return None


def _box_problem(bbox: Any, height: int, width: int) -> str | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return f"has bbox {bbox!r}: expected [x, y, width, height] of 4 finite numbers"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"has bbox {list(bbox)} with zero or negative width/height"
    t = _BOX_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t or x >= width or y >= height:
        return f"has bbox {list(bbox)} outside the image ({width}x{height}, width x height)"
    return None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error}); give a COCO instances json file") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: the top level must be a JSON object with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: missing or non-list '{key}'; a COCO instances json needs "
                               "'images', 'annotations' and 'categories' lists")
    return data


def _parse_categories(path: Path, categories: list) -> tuple[list[int], list[str]]:
    """Category ids sorted ascending (label k -> ids[k]) and their names; problems always stop."""
    names: dict[int, str] = {}
    for i, category in enumerate(categories):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise DatasetError(f"{path}: categories[{i}] has no integer 'id'; fix the category list")
        cid = category["id"]
        if cid in names:
            raise DatasetError(f"{path}: duplicate category id {cid}; category ids must be unique")
        names[cid] = str(category.get("name", cid))
    if not names:
        raise DatasetError(f"{path}: 'categories' is empty; list the classes the annotations use")
    ids = sorted(names)
    return ids, [names[c] for c in ids]


def _safe_file_name(path: Path, image_id: Any, file_name: str) -> str:
    """``file_name`` if it stays inside the image folder; refuse absolute paths and ``..``."""
    normal = os.path.normpath(file_name.replace("\\", "/"))
    if os.path.isabs(normal) or normal == ".." or normal.startswith("../") or Path(normal).drive:
        raise DatasetError(f"{path}: image id {image_id} has file_name {file_name!r} that escapes the image "
                           "folder (absolute or '..'); refused: give paths relative to the image folder")
    return normal


class CocoDataset:
    """A COCO-format instance segmentation dataset (see the module docstring for the rules).

    Args:
        json_path: COCO ``instances`` json.
        image_dir: folder the images' ``file_name`` entries are relative to.
        keep_negatives: keep images without (non-crowd) annotations as negatives.
        skip_bad: skip bad annotations/images and count them instead of stopping.

    Attributes:
        category_ids: label ``k`` -> COCO category id (sorted ascending).
        category_names: label ``k`` -> name.
        image_ids: COCO image id of each item, in dataset order (json order).
        keypoint_names: the K keypoint names the categories declare, None without keypoints.
        skeleton: 0-based keypoint index pairs to draw (COCO's are 1-based); empty without keypoints.
        num_keypoints: K, 0 without keypoints.
        keypoint_flip_map: the left/right swap of a horizontal flip (None without keypoints).
        skipped: reason -> number of entries skipped (``skip_bad=True`` only). Entries found bad
            while loading items (image files, RLE runs) are counted each time they are met, and
            also reported in the item's ``Sample.skipped``: the loaders of
            :mod:`instaseg.data.loader` add those of items loaded in worker processes to this
            counter in the main process, so the count printed at the end is complete.
    """

    def __init__(self, json_path: str | Path, image_dir: str | Path, *, keep_negatives: bool = True,
                 skip_bad: bool = False) -> None:
        self.json_path, self.image_dir, self.skip_bad = Path(json_path), Path(image_dir), skip_bad
        self.skipped: Counter[str] = Counter()
        data = _read_json(self.json_path)
        self.category_ids, self.category_names = _parse_categories(self.json_path, data["categories"])
        self._label_of = {cid: k for k, cid in enumerate(self.category_ids)}
        self.keypoint_schema: KeypointSchema | None = parse_keypoint_schema(self.json_path, data["categories"])
        self._num_keypoints_mismatches: list[int] = []  # annotation ids whose num_keypoints disagrees
        records = self._parse_images(data["images"])
        self._parse_annotations(data["annotations"], records)
        num_annotated = sum(any(not a.iscrowd for a in r.annotations) for r in records.values())
        if num_annotated == 0 and records:
            warnings.warn(f"{self.json_path}: none of the {len(records)} images has a (non-crowd) annotation; "
                          "training on it teaches only background", stacklevel=2)
        self._records = [r for r in records.values()
                         if keep_negatives or any(not a.iscrowd for a in r.annotations)]
        if self.skipped:
            warnings.warn(f"{self.json_path}: {self.skipped_summary}", stacklevel=2)
        if self._num_keypoints_mismatches:
            ids = self._num_keypoints_mismatches
            warnings.warn(f"{self.json_path}: {len(ids)} annotation(s) (first: annotation id {ids[0]}) have a "
                          "'num_keypoints' that differs from their count of keypoints with v > 0; the "
                          "visibilities are used (COCO evaluation ignores ground truth with num_keypoints 0)",
                          stacklevel=2)

    # --- loading and validation ---------------------------------------------------------------

    def _bad(self, reason: str, message: str) -> None:
        """Stop with ``message`` or, with ``skip_bad``, count the entry under ``reason``."""
        if not self.skip_bad:
            raise DatasetError(f"{self.json_path}: {message}; {_SKIP_HINT}")
        self.skipped[reason] += 1

    def _parse_images(self, images: list) -> dict[int, _ImageRecord]:
        records: dict[int, _ImageRecord] = {}
        for i, entry in enumerate(images):
            image_id = entry.get("id") if isinstance(entry, dict) else None
            if not _is_int(image_id):
                self._bad("malformed image entry", f"images[{i}] has no integer 'id'")
                continue
            file_name, height, width = entry.get("file_name"), entry.get("height"), entry.get("width")
            if not isinstance(file_name, str) or not file_name:
                self._bad("malformed image entry", f"image id {image_id} has no 'file_name' string")
                continue
            file_name = _safe_file_name(self.json_path, image_id, file_name)
            if not (_is_int(height) and _is_int(width) and height > 0 and width > 0):
                self._bad("malformed image entry", f"image id {image_id} ({file_name}) needs positive "
                          f"integer 'height' and 'width', got {height!r} and {width!r}")
            elif image_id in records:
                self._bad("duplicate image id", f"image id {image_id} appears more than once in 'images'")
            else:
                records[image_id] = _ImageRecord(image_id, file_name, height, width, [])
        return records

    def _parse_annotations(self, annotations: list, records: dict[int, _ImageRecord]) -> None:
        seen: set[int] = set()
        for i, ann in enumerate(annotations):
            ann_id = ann.get("id") if isinstance(ann, dict) else None
            if not _is_int(ann_id):
                self._bad("malformed annotation", f"annotations[{i}] has no integer 'id'")
                continue
            if ann_id in seen:
                self._bad("duplicate annotation id", f"annotation id {ann_id} appears more than once")
                continue
            seen.add(ann_id)
            problem, reason = self._annotation_problem(ann, records)
            if problem is not None:
                self._bad(reason, f"annotation id {ann_id} (image id {ann.get('image_id')}) {problem}")
                continue
            record = records[ann["image_id"]]
            keypoints, problem = self._keypoints(ann, record)
            if problem is not None:
                self._bad("bad keypoints", f"annotation id {ann_id} (image id {ann.get('image_id')}) {problem}")
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = (max(x, 0.0), max(y, 0.0), min(x + w, float(record.width)), min(y + h, float(record.height)))
            record.annotations.append(_Annotation(ann_id, self._label_of[ann["category_id"]], box,
                                                  bool(ann.get("iscrowd", 0)), ann["segmentation"], keypoints))

    def _keypoints(self, ann: dict, record: _ImageRecord) -> tuple[np.ndarray | None, str | None]:
        """``(K, 3)`` keypoints of a (box- and segmentation-checked) annotation, or a problem."""
        raw = ann.get("keypoints")
        if self.keypoint_schema is None:
            if raw not in (None, []):
                return None, "has 'keypoints' but no category declares keypoint names ('keypoints' in 'categories')"
            return None, None
        keypoints, problem = parse_keypoints(raw, self.keypoint_schema.num_keypoints, record.height,
                                             record.width, _BOX_TOLERANCE)
        if keypoints is not None and num_keypoints_mismatch(ann.get("num_keypoints"), keypoints):
            self._num_keypoints_mismatches.append(ann["id"])
        return keypoints, problem

    def _annotation_problem(self, ann: dict, records: dict[int, _ImageRecord]) -> tuple[str | None, str]:
        """``(problem, reason)`` for an annotation, ``(None, "")`` when it is good."""
        if ann.get("image_id") not in records:
            return "points at an image id missing from 'images' (or skipped)", "annotation of a missing image"
        if ann.get("category_id") not in self._label_of:
            return f"has category_id {ann.get('category_id')!r} not in 'categories'", "unknown category"
        if ann.get("iscrowd", 0) not in (0, 1):
            return f"has iscrowd {ann.get('iscrowd')!r}: expected 0 or 1", "malformed annotation"
        record = records[ann["image_id"]]
        problem = _box_problem(ann.get("bbox"), record.height, record.width)
        if problem is not None:
            return problem, "bad bbox"
        if "segmentation" not in ann:
            return "has no 'segmentation'", "bad segmentation"
        problem = _segmentation_problem(ann["segmentation"], record.height, record.width)
        return (problem, "bad segmentation") if problem is not None else (None, "")

    # --- access -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    @property
    def num_classes(self) -> int:
        """Foreground classes (background not counted)."""
        return len(self.category_ids)

    @property
    def keypoint_names(self) -> tuple[str, ...] | None:
        return None if self.keypoint_schema is None else self.keypoint_schema.names

    @property
    def skeleton(self) -> list[tuple[int, int]]:
        return [] if self.keypoint_schema is None else list(self.keypoint_schema.skeleton)

    @property
    def num_keypoints(self) -> int:
        return 0 if self.keypoint_schema is None else self.keypoint_schema.num_keypoints

    @property
    def keypoint_flip_map(self) -> list[int] | None:
        """Raises :class:`DatasetError` when a ``left_`` name has no ``right_`` twin (or the reverse)."""
        if self.keypoint_schema is None:
            return None
        try:
            return self.keypoint_schema.flip_map()
        except ValueError as error:
            raise DatasetError(f"{self.json_path}: cannot flip its keypoints horizontally: {error}; rename the "
                               "keypoints or train without horizontal flips (train.flip_prob=0)") from None

    @property
    def image_ids(self) -> list[int]:
        return [r.image_id for r in self._records]

    def image_ids_of_files(self, paths: Sequence[str | Path]) -> list[int | None]:
        """The image id of each file in ``paths``, None for a file the json does not list.

        A path matches the ``file_name`` equal to its longest trailing part (``a/b/x.png`` matches
        ``b/x.png``, then ``x.png``), else the one ``file_name`` with its base name (none when
        several share it), so images found in any copy of the image folder are known.
        """
        by_name = {Path(r.file_name).as_posix(): r.image_id for r in self._records}
        by_base: dict[str, int | None] = {}
        for r in self._records:
            base = Path(r.file_name).name
            by_base[base] = None if base in by_base else r.image_id  # ambiguous: no match
        found = []
        for path in paths:
            parts = Path(path).parts
            suffixes = ("/".join(parts[k:]) for k in range(len(parts)))
            found.append(next((by_name[s] for s in suffixes if s in by_name), by_base.get(Path(path).name)))
        return found

    def file_name(self, index: int) -> str:
        """Item ``index``'s ``file_name`` in the json (relative to the image folder)."""
        return self._records[index].file_name

    def describe(self, index: int) -> str:
        """``"image id 7, <image_dir>/x.png"``: how messages name item ``index``."""
        record = self._records[index]
        return f"image id {record.image_id}, {self.image_dir / record.file_name}"

    @property
    def skipped_summary(self) -> str:
        """One line saying what was skipped, e.g. ``skipped 3 entries: 2 bad bbox, 1 unknown category``."""
        if not self.skipped:
            return "skipped nothing"
        parts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return f"skipped {sum(self.skipped.values())} entries: {parts}"

    def __getitem__(self, index: int) -> Sample:
        """Read image ``index`` and decode its masks. With ``skip_bad``, an unreadable image or one
        whose size disagrees with the json is replaced by the next good one (index order, so the
        replacement is deterministic) and counted in ``skipped``; otherwise it stops."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index %= len(self)
        found: Counter[str] = Counter()  # what this call skips: counted here and sent with the sample
        try:
            for attempt in range(len(self)):
                try:
                    sample = self._load((index + attempt) % len(self), found)
                except DatasetError as error:
                    if not self.skip_bad:
                        raise
                    found["bad image file"] += 1
                    warnings.warn(f"skipping: {error}", stacklevel=2)
                    continue
                sample.skipped = dict(found)
                return sample
        finally:
            self.skipped.update(found)
        raise DatasetError(f"{self.json_path}: no image of the dataset could be read")

    def _load(self, index: int, found: Counter[str]) -> Sample:
        record = self._records[index]
        path = self.image_dir / record.file_name
        pixels = read_image(path)
        if pixels.shape[:2] != (record.height, record.width):
            raise DatasetError(
                f"{self.json_path}: image id {record.image_id} ({path}) is {pixels.shape[0]}x{pixels.shape[1]} "
                f"(height x width) but the json says {record.height}x{record.width}; fix the json entry "
                "(an EXIF rotation swaps the sides) or the file")
        image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        instances = [a for a in record.annotations if not a.iscrowd]
        crowds = [a for a in record.annotations if a.iscrowd]
        decoded = [(ann, self._decode(record, ann, found)) for ann in instances]
        instances = [ann for ann, mask in decoded if mask is not None]
        masks = torch.zeros((len(instances), record.height, record.width), dtype=torch.bool)
        for i, mask in enumerate(mask for _, mask in decoded if mask is not None):
            masks[i] = torch.from_numpy(mask)
        crowd_boxes = torch.tensor([a.box_xyxy for a in crowds], dtype=torch.float32).reshape(-1, 4)
        targets = Targets(
            boxes=torch.tensor([a.box_xyxy for a in instances], dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor([a.label for a in instances], dtype=torch.int64),
            masks=masks,
            crowd_boxes=crowd_boxes,  # YOLACT ignores anchors inside them; Mask R-CNN does not read them
            keypoints=self._stack_keypoints(instances),
        )
        return Sample(image=image, targets=targets, image_id=record.image_id, crowd_boxes=crowd_boxes)

    def _stack_keypoints(self, instances: list[_Annotation]) -> Tensor | None:
        """``(G, K, 3)`` float32 keypoints of ``instances``, None when the dataset has none."""
        if self.keypoint_schema is None:
            return None
        rows = np.stack([a.keypoints for a in instances]) if instances else \
            np.zeros((0, self.keypoint_schema.num_keypoints, 3), np.float32)
        return torch.from_numpy(rows)

    def _decode(self, record: _ImageRecord, ann: _Annotation, found: Counter[str]) -> np.ndarray | None:
        """``(H, W)`` bool mask; compressed RLE runs are checked first (see compressed_rle_runs).
        A malformed one stops, or with ``skip_bad`` is counted in ``found`` and gives None (the
        instance is dropped)."""
        segmentation, expected = ann.segmentation, record.height * record.width
        try:
            if isinstance(segmentation, dict) and isinstance(segmentation["counts"], (str, bytes)):
                runs = compressed_rle_runs(segmentation["counts"])
                if min(runs) < 0 or sum(runs) != expected:
                    raise ValueError(f"its runs sum to {sum(runs)} (some negative: {min(runs) < 0}), "
                                     f"expected {expected}")
            return annotation_to_bitmap(segmentation, record.height, record.width)
        except ValueError as error:
            message = (f"{self.json_path}: annotation id {ann.ann_id} (image id {record.image_id}) has a "
                       f"malformed segmentation: {error}")
            if not self.skip_bad:
                raise DatasetError(f"{message}; {_SKIP_HINT}") from None
            found["bad segmentation"] += 1
            warnings.warn(f"skipping: {message}", stacklevel=3)
            return None

    # --- statistics (``instaseg data stats``) ---------------------------------------------------

    def class_counts(self) -> dict[str, int]:
        """Non-crowd instances per class name, in label order."""
        counts = Counter(a.label for r in self._records for a in r.annotations if not a.iscrowd)
        return {name: counts[k] for k, name in enumerate(self.category_names)}

    def max_instances_per_image(self) -> int:
        """The most non-crowd instances one image has (0 for an empty dataset): what every
        detection cap must let through (:mod:`instaseg.config.budget`)."""
        return max((sum(not a.iscrowd for a in r.annotations) for r in self._records), default=0)

    def size_stats(self) -> dict[str, int | float]:
        """Image sizes, instances per image and box sizes (COCO's small < 32^2 <= medium < 96^2
        pixels <= large, measured here on the bbox area since masks are not decoded at load).
        Counts, minima and maxima are ints; means are floats."""
        heights = np.array([r.height for r in self._records], dtype=np.int64)
        widths = np.array([r.width for r in self._records], dtype=np.int64)
        per_image = np.array([sum(not a.iscrowd for a in r.annotations) for r in self._records], np.int64)
        areas = np.array([(a.box_xyxy[2] - a.box_xyxy[0]) * (a.box_xyxy[3] - a.box_xyxy[1])
                          for r in self._records for a in r.annotations if not a.iscrowd], np.float64)
        crowds = sum(a.iscrowd for r in self._records for a in r.annotations)
        empty = not len(self._records)

        def summary(name: str, values: np.ndarray) -> dict[str, int | float]:
            if empty:
                return {f"{name}_min": 0, f"{name}_mean": 0.0, f"{name}_max": 0}
            return {f"{name}_min": int(values.min()), f"{name}_mean": float(values.mean()),
                    f"{name}_max": int(values.max())}

        return {
            "images": len(self._records), "negatives": int((per_image == 0).sum()),
            **summary("height", heights), **summary("width", widths), **summary("instances", per_image),
            "crowd_regions": int(crowds), "boxes_small": int((areas < _COCO_SMALL).sum()),
            "boxes_medium": int(((areas >= _COCO_SMALL) & (areas < _COCO_MEDIUM)).sum()),
            "boxes_large": int((areas >= _COCO_MEDIUM).sum()),
        }

    def __repr__(self) -> str:
        return (f"CocoDataset({self.json_path}, {len(self)} images, {self.num_classes} classes"
                f"{', ' + self.skipped_summary if self.skipped else ''})")
