"""Tables of COCO metrics: the keys a summary shows, the markdown tables of ``instaseg eval`` and
pycocotools' classic 12-line summary, with AP and AR written as fractions in [0, 1] everywhere."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["AP_KEYS", "AR_SIZE_KEYS", "SIZE_KEYS", "summary_keys", "classic_table", "format_ap",
           "format_metrics_table", "format_per_category_table"]

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
AR_SIZE_KEYS = ("ARs", "ARm", "ARl")  # recall at the largest maxDets per object size
# pycocotools' area range labels (``params.areaRngLbl``; COCO: 32^2 and 96^2 px) -> key suffix
SIZE_KEYS = {"small": "s", "medium": "m", "large": "l"}


def summary_keys(values: dict[str, Any], every_max_dets: bool = False) -> list[str]:
    """The AP keys, then average recall: ``AR@<largest maxDets>`` (every ``AR@m`` with
    ``every_max_dets``) and ``ARs`` / ``ARm`` / ``ARl``, those of them that ``values`` has.

    Recall is the number that shows a detection cap: AP can look fine while AR@100 stays far below
    what a dataset of 300 objects per image needs.
    """
    at = sorted((k for k in values if k.startswith("AR@")), key=lambda k: int(k[3:]))
    return [*(k for k in AP_KEYS if k in values), *(at if every_max_dets else at[-1:]),
            *(k for k in AR_SIZE_KEYS if k in values)]


def classic_table(metrics: dict[str, Any], max_dets: Sequence[int]) -> str:
    """pycocotools' summarize() layout, with AP at the largest max_dets (the area rows that
    ``metrics`` has: keypoints have no small objects)."""
    line = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {:0.3f}"
    ap, ar = ("Average Precision", "(AP)"), ("Average Recall", "(AR)")
    top = max_dets[-1]
    sizes = [(label, key) for label, key in SIZE_KEYS.items() if f"AP{key}" in metrics]
    rows = [
        (*ap, "0.50:0.95", "all", top, metrics["AP"]),
        (*ap, "0.50", "all", top, metrics["AP50"]),
        (*ap, "0.75", "all", top, metrics["AP75"]),
        *[(*ap, "0.50:0.95", label, top, metrics[f"AP{key}"]) for label, key in sizes],
        *[(*ar, "0.50:0.95", "all", m, metrics[f"AR@{m}"]) for m in max_dets],
        *[(*ar, "0.50:0.95", label, top, metrics[f"AR{key}"]) for label, key in sizes],
    ]
    return "\n".join(line.format(*row) for row in rows)


def format_ap(value: float | None) -> str:
    """An AP or AR as every output gives it: a fraction in [0, 1] with 3 decimals, as in
    ``metrics.json`` and pycocotools' summary (``0.545``, not ``54.5``); NaN / None -> ``"-"``."""
    return "-" if value is None or value != value else f"{value:.3f}"


def _column_rank(key: str) -> tuple[int, int]:
    """Column order: AP keys, then AR@m by m, then ARs / ARm / ARl."""
    if key.startswith("AR@"):
        return (1, int(key[3:]))
    return (0, AP_KEYS.index(key)) if key in AP_KEYS else (2, AR_SIZE_KEYS.index(key))


def format_metrics_table(metrics: dict[str, dict[str, Any]]) -> str:
    """Markdown table of ``evaluate_coco``'s output: one row per iou type, AP and AR columns as
    fractions (:func:`format_ap`). The columns are every type's :func:`summary_keys` (keypoints
    add ``AR@20`` beside box and mask ``AR@100``); ``-`` where a type has no such value."""
    keys = sorted({k for values in metrics.values() for k in summary_keys(values)}, key=_column_rank) \
        if metrics else list(AP_KEYS)
    header = "| type | " + " | ".join(keys) + " |"
    rule = "|------|" + "|".join("-" * (len(k) + 2) for k in keys) + "|"
    rows = [
        f"| {iou_type} | " + " | ".join(format_ap(values.get(k, float("nan"))) for k in keys) + " |"
        for iou_type, values in metrics.items()
    ]
    return "\n".join([header, rule, *rows])


def format_per_category_table(metrics: dict[str, dict[str, Any]]) -> str:
    """Markdown table of per-category AP (fractions): one row per category, one column per iou type.

    ``metrics`` is ``evaluate_coco(..., per_category=True)``'s output.
    """
    iou_types = [t for t, values in metrics.items() if "per_category" in values]
    if not iou_types:
        raise ValueError("no per-category AP in metrics: call evaluate_coco(per_category=True)")
    # keypoint AP covers only the keypoint categories: every category of any type, in order of appearance
    names = list(dict.fromkeys(name for t in iou_types for name in metrics[t]["per_category"]))
    header = "| category | " + " | ".join(f"{t} AP" for t in iou_types) + " |"
    rule = "|----------|" + "|".join("-" * (len(t) + 5) for t in iou_types) + "|"
    rows = [
        f"| {name} | "
        + " | ".join(format_ap(metrics[t]["per_category"].get(name, float("nan"))) for t in iou_types)
        + " |"
        for name in names
    ]
    return "\n".join([header, rule, *rows])
