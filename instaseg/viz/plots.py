"""The run folder's charts, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

Every function takes data (arrays, dataclasses of arrays), writes one PNG atomically (a viewer
never sees half a file) and returns its path; none needs a model. matplotlib is imported when a
picture is drawn, not when instaseg is.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from instaseg.data.label_stats import LabelStats
from instaseg.evaluation.confusion import ConfusionMatrix
from instaseg.evaluation.curves import PRCurves, class_ap, confidence_curves, mean_ap, precision_at_recall
from instaseg.viz.overlay import PALETTE

__all__ = ["smooth", "plot_results", "plot_pr_curves", "plot_confidence_curves", "plot_confusion_matrix",
           "plot_label_stats", "IOU_NAMES"]

DPI = 100
IOU_NAMES = {"bbox": "box", "segm": "mask", "keypoints": "keypoint"}
_MATCH_NAMES = {"keypoints": "OKS"}  # what the thresholds threshold (IoU for boxes and masks)
_ALL_COLOUR = "#0b3d91"  # the "all classes" line: darker than any class colour
_MANY_CLASSES = 20  # beyond this, class lines are grey and unlabelled


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        figure.savefig(handle, format="png", dpi=DPI)
    os.replace(tmp, path)
    return path


def _colour(k: int) -> tuple[float, float, float]:
    return tuple(float(c) / 255 for c in PALETTE[k % len(PALETTE)])  # type: ignore[return-value]


def smooth(values: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Gaussian smoothing of a 1-D series (edges padded with the end values); ``sigma`` in points,
    default ``max(1, len / 30)``."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 3:
        return values.copy()
    sigma = max(1.0, values.size / 30) if sigma is None else sigma
    radius = int(math.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    padded = np.pad(values, radius, mode="edge")
    return np.convolve(padded, kernel / kernel.sum(), mode="valid")


# ------------------------------------------------------------------------------------- results.png
_METRIC_PANELS = (("bbox_AP", "box AP"), ("bbox_AP50", "box AP50"), ("segm_AP", "mask AP"), ("segm_AP50", "mask AP50"),
                  ("keypoints_AP", "keypoint AP"), ("keypoints_AP50", "keypoint AP50"))


def _result_panels(columns: Mapping[str, np.ndarray]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(column, title) of the panels: the loss terms and total loss; then the LR, box, mask and keypoint
    AP / AP50 (those measured)."""
    def measured(name: str) -> bool:
        return name in columns and bool(np.isfinite(np.asarray(columns[name], dtype=np.float64)).any())

    losses = [(c, c) for c in columns if c != "total_loss" and (c.startswith("loss") or c.endswith("_loss"))]
    losses += [("total_loss", "total loss")]
    others = [("lr", "learning rate"), *_METRIC_PANELS]
    return [p for p in losses if measured(p[0])], [p for p in others if measured(p[0])]


def _draw_series(ax: Any, name: str, x: np.ndarray, y: np.ndarray) -> None:
    ax.plot(x, y, marker="o", markersize=2.5, linewidth=0.8, color="#4c72b0", alpha=0.55, label="raw")
    if name != "lr" and y.size >= 5:
        ax.plot(x, smooth(y), linewidth=2.0, color="#dd8452", label="smoothed")
    if name.startswith(("bbox_", "segm_", "keypoints_")):
        ax.set_ylim(0, max(0.05, 1.15 * float(y.max())))
        ax.annotate(f"{y[-1]:.3f}", (x[-1], y[-1]), textcoords="offset points", xytext=(-4, 6), ha="right",
                    fontsize=8, color="#333333")
    if name == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    else:
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def plot_results(columns: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """``results.png``: every loss, the LR and box / mask AP and AP50 against the iteration.

    ``columns`` maps names to equal-length series (``results.csv``'s columns; NaN where a row has
    no value) and holds ``"iteration"``. The losses fill the first row(s), the LR and the AP the
    last; each panel shows the raw values and, from 5 points on, a Gaussian-smoothed line (the
    LR is exact and shown raw only). Every panel spans iteration 0 to the last.
    """
    iteration = np.asarray(columns["iteration"], dtype=np.float64)
    losses, others = _result_panels(columns)
    ncols = max(5, min(7, len(losses)))
    loss_rows, other_rows = -(-len(losses) // ncols), -(-len(others) // ncols)
    nrows = max(1, loss_rows + other_rows)
    figure = _figure(3.2 * ncols, 2.6 * nrows + 0.6)
    axes = figure.subplots(nrows, ncols, squeeze=False)
    slots = [axes[r, c] for r in range(loss_rows) for c in range(ncols)][:len(losses)]
    slots += [axes[r, c] for r in range(loss_rows, nrows) for c in range(ncols)][:len(others)]
    last = float(np.nanmax(iteration)) if iteration.size else 1.0
    for ax, (name, title) in zip(slots, losses + others):
        values = np.asarray(columns[name], dtype=np.float64)
        keep = np.isfinite(values)
        _draw_series(ax, name, iteration[keep], values[keep])
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, max(1.0, last * 1.02))
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes.ravel():
        if not any(ax is slot for slot in slots):
            ax.set_visible(False)
    for ax in slots:
        ax.set_xlabel("iteration", fontsize=8)
    if slots:
        slots[0].legend(fontsize=8, loc="upper right")
    else:
        axes[0, 0].set_visible(True)
        axes[0, 0].text(0.5, 0.5, "nothing logged yet", ha="center", va="center", transform=axes[0, 0].transAxes)
    figure.suptitle("training losses, learning rate and validation AP against the iteration", fontsize=11)
    height = figure.get_figheight()
    figure.subplots_adjust(left=0.05, right=0.98, top=1 - 0.55 / height, bottom=0.5 / height, wspace=0.28,
                           hspace=0.55)
    return _save(figure, path)


# ------------------------------------------------------------------------------------- PR curves
def _class_lines(ax: Any, x: np.ndarray, ys: np.ndarray, names: Sequence[str], values: np.ndarray | None) -> None:
    """One thin line per class (columns of ``ys``), labelled "name value" unless there are many."""
    many = ys.shape[1] > _MANY_CLASSES
    for k, name in enumerate(names):
        if np.isnan(ys[:, k]).all():
            continue
        label = None if many else (f"{name} {values[k]:.3f}" if values is not None else name)
        ax.plot(x, ys[:, k], linewidth=0.6 if many else 1.1, alpha=0.35 if many else 0.9,
                color="#808080" if many else _colour(k), label=label)


def plot_pr_curves(curves: PRCurves, path: str | Path) -> Path:
    """``pr_curves_{box,mask}.png``: precision against recall per class and for all classes, at IoU
    0.50 and averaged over 0.50:0.95 (COCO's 101-point interpolation, pycocotools' own arrays).

    The legend gives each class's AP; the thick line is the mean over classes, whose area is the
    run's AP50 / AP.
    """
    figure = _figure(12, 5.2)
    axes = figure.subplots(1, 2)
    recall = curves.recall_thresholds
    match = _MATCH_NAMES.get(curves.iou_type, "IoU")
    for ax, iou, title in ((axes[0], 0.5, f"{match} 0.50"), (axes[1], None, f"mean over {match} 0.50:0.95")):
        precision = precision_at_recall(curves, iou)
        _class_lines(ax, recall, precision, curves.category_names, class_ap(curves, iou))
        if not np.isnan(precision).all():
            ax.plot(recall, np.nanmean(precision, axis=1), linewidth=3, color=_ALL_COLOUR,
                    label=f"all classes {'AP50' if iou else 'AP'} {mean_ap(curves, iou):.3f}")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    kind = IOU_NAMES.get(curves.iou_type, curves.iou_type)
    figure.suptitle(f"{kind} precision-recall: COCO 101-point interpolated precision, {curves.num_images} images, "
                    f"up to {curves.max_dets} detections per image", fontsize=11)
    figure.subplots_adjust(left=0.06, right=0.98, top=0.88, bottom=0.11, wspace=0.18)
    return _save(figure, path)


def plot_confidence_curves(curves: PRCurves, path: str | Path, iou: float = 0.5) -> Path:
    """``f1_curves_{box,mask}.png``: precision, recall and F1 against the score threshold at IoU
    ``iou``, per class and for all classes, read off pycocotools' 101 recall points (precision is
    COCO's interpolated precision at the recall reached; undefined, so not drawn, where no detection
    scores that high, and the "all classes" precision is the mean over the classes that have one).
    The title gives the threshold of the best mean F1."""
    grid, precision, recall = confidence_curves(curves, iou)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(recall == 0, 0.0, 2 * precision * recall / (precision + recall))  # nothing kept: F1 0
    figure = _figure(15, 4.8)
    axes = figure.subplots(1, 3)
    best = ""
    for ax, values, name in ((axes[0], precision, "precision"), (axes[1], recall, "recall"), (axes[2], f1, "F1")):
        _class_lines(ax, grid, values, curves.category_names, None)
        if not np.isnan(values).all():
            with warnings.catch_warnings():  # score thresholds no class reaches stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(values, axis=1)
            label = "all classes"
            if name == "F1" and np.isfinite(mean).any():
                at = int(np.nanargmax(mean))
                best = f"; best mean F1 {mean[at]:.3f} at score {grid[at]:.2f}"
                label = f"all classes {mean[at]:.2f} at {grid[at]:.2f}"
                ax.axvline(grid[at], color=_ALL_COLOUR, linestyle=":", linewidth=1)
            ax.plot(grid, mean, linewidth=3, color=_ALL_COLOUR, label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel=name,
               title=f"{name} ({_MATCH_NAMES.get(curves.iou_type, 'IoU')} {iou:.2f})")
        ax.grid(alpha=0.3)
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(fontsize=8, loc="best", framealpha=0.85)
    kind = IOU_NAMES.get(curves.iou_type, curves.iou_type)
    figure.suptitle(f"{kind} precision, recall and F1 against the score threshold{best}", fontsize=11)
    figure.subplots_adjust(left=0.05, right=0.98, top=0.87, bottom=0.12, wspace=0.2)
    return _save(figure, path)


# ------------------------------------------------------------------------------------- confusion matrix
def plot_confusion_matrix(matrix: ConfusionMatrix, path: str | Path) -> Path:
    """``confusion_matrix.png``: counts and row-normalised fractions side by side (rows: ground
    truth, columns: prediction, "background" last); the title states the score and IoU thresholds."""
    names = [*matrix.class_names, "background"]
    size = len(names)
    side = float(np.clip(0.42 * size + 2.6, 4.8, 24))
    figure = _figure(2 * side + 1.2, side + 0.6)
    axes = figure.subplots(1, 2)
    normalized = matrix.normalized()
    annotate = size <= 30
    for ax, values, title, fmt in ((axes[0], matrix.counts, "counts", "{:d}"),
                                   (axes[1], normalized, "fraction of each ground-truth row", "{:.2f}")):
        top = float(values.max()) or 1.0
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        ticks = np.arange(size)
        fontsize = 9 if size <= 12 else 7 if size <= 30 else 5
        ax.set_xticks(ticks, names, rotation=45 if size <= 30 else 90, ha="right", fontsize=fontsize,
                      rotation_mode="anchor")
        ax.set_yticks(ticks, names, fontsize=fontsize)
        ax.set_xlabel("predicted", fontsize=10)
        ax.set_ylabel("ground truth", fontsize=10)
        ax.set_title(title, fontsize=10)
        ax.axhline(size - 1.5, color="#999999", linewidth=0.8)
        ax.axvline(size - 1.5, color="#999999", linewidth=0.8)
        if annotate:
            for (i, j), value in np.ndenumerate(values):
                if value:
                    ax.text(j, i, fmt.format(int(value) if fmt == "{:d}" else value), ha="center", va="center",
                            fontsize=fontsize, color="white" if value > 0.55 * top else "black")
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    kind = IOU_NAMES.get(matrix.iou_type, matrix.iou_type)
    objects, kept = int(matrix.counts[:-1].sum()), int(matrix.counts[:, :-1].sum())
    figure.suptitle(f"confusion matrix: {kept} detections scoring >= {matrix.score_thresh:.2f} matched to {objects} "
                    f"objects at {kind} IoU >= {matrix.iou_thresh:.2f}\nbackground column: objects missed; "
                    "background row: detections of nothing", fontsize=10)
    figure.subplots_adjust(left=0.1, right=0.97, top=0.86, bottom=0.16, wspace=0.45)
    return _save(figure, path)


# ------------------------------------------------------------------------------------- labels.png
def _plain_number_formatter(minor: bool = False) -> Any:
    """Log-axis ticks as plain numbers (3, 30, 300) rather than 3x10^1; minor ticks only at 2 and 5."""
    from matplotlib.ticker import FuncFormatter

    def text(value: float, _: int) -> str:
        if minor and f"{value:.0e}"[0] not in "25":
            return ""
        return f"{value:g}"

    return FuncFormatter(text)


def _class_counts_panel(ax: Any, stats: LabelStats) -> None:
    counts = np.bincount(stats.labels, minlength=stats.num_classes)[:stats.num_classes]
    bars = ax.bar(np.arange(stats.num_classes), counts, color=[_colour(k) for k in range(stats.num_classes)])
    if stats.num_classes <= 30:
        ax.set_xticks(np.arange(stats.num_classes), stats.class_names, rotation=30, ha="right",
                      rotation_mode="anchor", fontsize=8)
        ax.bar_label(bars, fontsize=8)
    ax.set(ylabel="instances", title="instances per class")
    ax.yaxis.get_major_locator().set_params(integer=True)


def _box_panels(sizes: Any, aspects: Any, stats: LabelStats) -> None:
    """Box width against height (log-log, COCO's area limits drawn) and the aspect-ratio histogram."""
    widths, heights = stats.box_sizes[:, 0], stats.box_sizes[:, 1]
    ok = (widths > 0) & (heights > 0)
    sizes.set(xlabel="box width (px)", ylabel="box height (px)",
              title="box sizes (COCO: small < 32² <= medium < 96² <= large)")
    aspects.set(xlabel="width : height", ylabel="instances", title="box aspect ratio")
    if not ok.any():
        return
    count = int(ok.sum())
    colours = "#4c72b0" if stats.num_classes > _MANY_CLASSES else [_colour(k) for k in stats.labels[ok]]
    sizes.scatter(widths[ok], heights[ok], s=14 if count < 500 else 6, alpha=min(0.8, max(0.05, 300 / count)),
                  c=colours, linewidths=0)
    sizes.set(xscale="log", yscale="log")
    low, high = min(widths[ok].min(), heights[ok].min()) * 0.8, max(widths[ok].max(), heights[ok].max()) * 1.25
    line = np.geomspace(low, high, 50)
    for side, style in ((32, "--"), (96, ":")):
        sizes.plot(line, side * side / line, linestyle=style, color="#555555", linewidth=1, label=f"area {side}² px")
    sizes.set(xlim=(low, high), ylim=(low, high))
    sizes.legend(fontsize=8, loc="upper left")
    for axis in (sizes.xaxis, sizes.yaxis):
        axis.set_major_formatter(_plain_number_formatter())
        axis.set_minor_formatter(_plain_number_formatter(minor=True))
    ratio = np.log2(widths[ok] / heights[ok])
    span = max(1.0, float(np.ceil(np.abs(ratio).max())))
    aspects.hist(ratio, bins=np.linspace(-span, span, 41), color="#4c72b0")
    ticks = np.arange(-span, span + 1)
    aspects.set_xticks(ticks, [f"1:{2 ** int(-t)}" if t < 0 else f"{2 ** int(t)}:1" for t in ticks], fontsize=8)


def _per_image_panel(ax: Any, per: np.ndarray) -> None:
    ax.set(xlabel="instances in the image", ylabel="images", title="instances per image")
    if not per.size:
        return
    top = int(per.max())
    ax.hist(per, bins=np.arange(-0.5, top + 1.5, max(1, (top + 1) // 40)), color="#4c72b0")
    ax.axvline(per.mean(), color=_ALL_COLOUR, linestyle=":", label=f"mean {per.mean():.1f}, max {top}")
    ax.legend(fontsize=8)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.xaxis.get_major_locator().set_params(integer=True)


def plot_label_stats(stats: LabelStats, path: str | Path) -> Path:
    """``labels.png``: instances per class, box width against height (COCO's small / medium / large
    limits drawn), box aspect ratios and instances per image."""
    figure = _figure(12, 9)
    (classes, sizes), (aspects, per_image) = figure.subplots(2, 2)
    _class_counts_panel(classes, stats)
    _box_panels(sizes, aspects, stats)
    _per_image_panel(per_image, stats.instances_per_image)
    for ax in (classes, sizes, aspects, per_image):
        ax.grid(alpha=0.3)
    figure.suptitle(f"labels: {len(stats.instances_per_image)} images, {len(stats.labels)} instances, "
                    f"{stats.num_classes} classes", fontsize=11)
    figure.subplots_adjust(left=0.07, right=0.98, top=0.93, bottom=0.08, wspace=0.22, hspace=0.35)
    return _save(figure, path)
