"""Every chart is drawn from data alone and written as a valid PNG."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.data.label_stats import LabelStats
from instaseg.evaluation import evaluate_coco
from instaseg.evaluation.confusion import ConfusionMatrix
from instaseg.viz.plots import (plot_confidence_curves, plot_confusion_matrix, plot_label_stats, plot_pr_curves,
                                plot_results, smooth)

from tests.evaluation.test_coco_eval import results_case

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_width: int = 300, min_height: int = 200) -> tuple[int, int]:
    """A whole PNG file of at least the given size; returns (width, height)."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as picture:
        picture.verify()
    with Image.open(path) as picture:
        assert picture.width >= min_width and picture.height >= min_height, (path, picture.size)
        return picture.size


@pytest.fixture(scope="module")
def curves():
    gt, results = results_case()
    metrics = evaluate_coco(gt, results, verbose=False, curves=True)
    return {t: values["curves"] for t, values in metrics.items()}


def test_smooth_keeps_constants_and_length_and_damps_noise():
    np.testing.assert_allclose(smooth(np.full(50, 3.0)), 3.0)
    noisy = np.sin(np.linspace(0, 3, 200)) + np.random.default_rng(0).normal(0, 0.3, 200)
    smoothed = smooth(noisy)
    assert smoothed.shape == noisy.shape and np.std(np.diff(smoothed)) < 0.2 * np.std(np.diff(noisy))
    assert smooth(np.array([1.0, 2.0])).tolist() == [1.0, 2.0]


def test_results_png_with_losses_lr_and_sparse_ap(tmp_path):
    n = 30
    iteration = np.arange(1, n + 1) * 20.0
    nan = np.full(n, np.nan)
    ap = nan.copy()
    ap[[9, 19, 29]] = [0.1, 0.3, 0.4]
    columns = {"iteration": iteration, "lr": np.linspace(0.02, 0.0, n), "total_loss": np.linspace(3, 1, n),
               "loss_cls": np.linspace(1, 0.2, n), "loss_mask": np.linspace(0.7, 0.3, n), "time": np.ones(n),
               "bbox_AP": ap, "bbox_AP50": ap * 1.5, "segm_AP": ap * 0.9, "segm_AP50": ap * 1.3, "segm_APl": nan}
    width, height = assert_png(plot_results(columns, tmp_path / "results.png"), 800, 400)
    assert width > height
    assert_png(plot_results({"iteration": np.zeros(0)}, tmp_path / "empty.png"))  # nothing logged yet


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_pr_and_confidence_curves(curves, iou_type, tmp_path):
    assert_png(plot_pr_curves(curves[iou_type], tmp_path / "pr.png"), 800, 400)
    assert_png(plot_confidence_curves(curves[iou_type], tmp_path / "f1.png"), 800, 300)


def test_confusion_matrix_few_and_many_classes(tmp_path):
    counts = np.array([[2, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 0, 0]])
    assert_png(plot_confusion_matrix(ConfusionMatrix(counts, ("a", "b", "c"), 0.5, 0.5, "segm"), tmp_path / "cm.png"))
    many = np.random.default_rng(0).integers(0, 20, size=(41, 41))
    many[-1, -1] = 0
    names = tuple(f"class {k}" for k in range(40))
    assert_png(plot_confusion_matrix(ConfusionMatrix(many, names, 0.25, 0.5, "bbox"), tmp_path / "cm40.png"), 1000, 500)


def test_label_stats_and_an_empty_dataset(tmp_path):
    rng = np.random.default_rng(0)
    stats = LabelStats(("nucleus", "cell"), rng.integers(0, 2, 500), rng.uniform(3, 90, size=(500, 2)),
                       np.full((20, 2), 256), rng.integers(0, 50, 20))
    assert_png(plot_label_stats(stats, tmp_path / "labels.png"), 800, 600)
    empty = LabelStats(("a",), np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, 2), np.int64),
                       np.zeros(0, np.int64))
    assert_png(plot_label_stats(empty, tmp_path / "empty.png"))


def test_pictures_are_written_atomically(curves, tmp_path):
    path = plot_pr_curves(curves["segm"], tmp_path / "pr.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pr.png"]  # no temporary file left behind
    assert path == tmp_path / "pr.png"
