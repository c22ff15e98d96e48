"""The per-class table of an evaluation: images, instances, box and mask AP / AP50 of each class.

Every number comes from the saved :class:`~instaseg.evaluation.curves.PRCurves` (pycocotools'
accumulated arrays), so the table, ``per_class.csv`` and the PR pictures cannot disagree. AP
values are fractions in [0, 1]; NaN where a class has no ground truth in the evaluated images
(or the iou type was not evaluated).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from instaseg.evaluation.tables import format_ap
from instaseg.evaluation.curves import PRCurves, class_ap, mean_ap

__all__ = ["ClassRow", "SORT_KEYS", "per_class_rows", "summary_row", "sort_rows", "format_per_class_table",
           "write_per_class_csv", "read_per_class_csv"]

SORT_KEYS = ("ap", "name", "instances")
_NAN = float("nan")


@dataclass(frozen=True)
class ClassRow:
    """One line of the table (``name="all"`` for the summary line)."""

    name: str
    images: int  # evaluated images holding the class (all: evaluated images)
    instances: int  # its non-crowd ground-truth instances
    box_ap: float  # AP at IoU 0.50:0.95, area all, the largest maxDets
    box_ap50: float
    mask_ap: float
    mask_ap50: float


def _reference(box: PRCurves | None, mask: PRCurves | None) -> PRCurves:
    if box is None and mask is None:
        raise ValueError("per-class rows need box or mask curves")
    return mask if mask is not None else box  # type: ignore[return-value]


def per_class_rows(box: PRCurves | None, mask: PRCurves | None) -> list[ClassRow]:
    """One row per class, in label order, from the box and / or mask curves of one evaluation."""
    ref = _reference(box, mask)
    nan = [_NAN] * ref.num_classes
    box_ap, box_ap50 = (class_ap(box), class_ap(box, 0.5)) if box is not None else (nan, nan)
    mask_ap, mask_ap50 = (class_ap(mask), class_ap(mask, 0.5)) if mask is not None else (nan, nan)
    return [ClassRow(name, int(ref.gt_images[k]), int(ref.gt_instances[k]), float(box_ap[k]), float(box_ap50[k]),
                     float(mask_ap[k]), float(mask_ap50[k]))
            for k, name in enumerate(ref.category_names)]


def summary_row(box: PRCurves | None, mask: PRCurves | None) -> ClassRow:
    """The "all" row: every evaluated image and instance, and the AP of ``metrics.json``."""
    ref = _reference(box, mask)
    return ClassRow("all", ref.num_images, int(ref.gt_instances.sum()),
                    mean_ap(box) if box is not None else _NAN, mean_ap(box, 0.5) if box is not None else _NAN,
                    mean_ap(mask) if mask is not None else _NAN, mean_ap(mask, 0.5) if mask is not None else _NAN)


def _ap_key(row: ClassRow) -> tuple[bool, float, str]:
    value = row.mask_ap if not math.isnan(row.mask_ap) else row.box_ap
    return (math.isnan(value), -value if not math.isnan(value) else 0.0, row.name)


def sort_rows(rows: Sequence[ClassRow], by: str = "ap") -> list[ClassRow]:
    """``"ap"``: mask AP (box AP without masks) high to low, classes without ground truth last;
    ``"name"``: alphabetical; ``"instances"``: most instances first."""
    if by == "ap":
        return sorted(rows, key=_ap_key)
    if by == "name":
        return sorted(rows, key=lambda r: r.name.lower())
    if by == "instances":
        return sorted(rows, key=lambda r: (-r.instances, r.name.lower()))
    raise ValueError(f"sort by one of {', '.join(SORT_KEYS)}, got {by!r}")


def format_per_class_table(rows: Sequence[ClassRow], total: ClassRow | None = None) -> str:
    """An aligned text table (AP as fractions, :func:`~instaseg.evaluation.tables.format_ap`), the
    ``total`` row first, then ``rows`` in the order given."""
    items = ([total] if total is not None else []) + list(rows)
    width = max([len(r.name) for r in items] + [5])
    header = (f"{'class':<{width}}  {'images':>7}  {'instances':>9}  {'box AP':>7}  {'AP50':>6}  "
              f"{'mask AP':>7}  {'AP50':>6}")
    lines = [header]
    for r in items:
        lines.append(f"{r.name:<{width}}  {r.images:>7d}  {r.instances:>9d}  {format_ap(r.box_ap):>7}  "
                     f"{format_ap(r.box_ap50):>6}  {format_ap(r.mask_ap):>7}  {format_ap(r.mask_ap50):>6}")
    return "\n".join(lines)


def write_per_class_csv(rows: Sequence[ClassRow], path: str | Path, total: ClassRow | None = None) -> Path:
    """``per_class.csv``: the columns of :class:`ClassRow` (AP as fractions, empty where NaN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f.name for f in fields(ClassRow)])
        for row in ([total] if total is not None else []) + list(rows):
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else repr(v) if isinstance(v, float) else v
                             for v in astuple(row)])
    return path


def read_per_class_csv(path: str | Path) -> list[ClassRow]:
    """The rows :func:`write_per_class_csv` wrote (the "all" row included, first)."""
    with open(path, newline="") as handle:
        return [ClassRow(r["name"], int(r["images"]), int(r["instances"]),
                         *(float(r[k]) if r[k] else _NAN for k in ("box_ap", "box_ap50", "mask_ap", "mask_ap50")))
                for r in csv.DictReader(handle)]
