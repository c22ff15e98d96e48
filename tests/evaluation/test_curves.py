"""PR curves are pycocotools' own accumulated arrays: their area is COCO's AP to the last bit."""

import numpy as np
import pytest

from instaseg.evaluation import evaluate_coco
from instaseg.evaluation.coco_eval import _load_gt, _run_cocoeval
from instaseg.evaluation.curves import (class_ap, confidence_curves, load_curves, mean_ap, precision_at_recall,
                                        save_curves)
from instaseg.evaluation.per_class import (format_per_class_table, per_class_rows, read_per_class_csv, sort_rows,
                                           summary_row, write_per_class_csv)

from tests.evaluation.test_coco_eval import det, make_gt, results_case


@pytest.fixture(scope="module")
def evaluated():
    gt, results = results_case()
    return gt, results, evaluate_coco(gt, results, verbose=False, per_category=True, curves=True)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_curves_are_cocoevals_arrays_and_their_area_is_its_ap(evaluated, iou_type):
    gt, results, metrics = evaluated
    curves = metrics[iou_type]["curves"]
    coco_gt = _load_gt(gt)
    reference = _run_cocoeval(coco_gt, results, iou_type, (1, 10, 100), None).eval
    np.testing.assert_array_equal(curves.precision, reference["precision"][:, :, :, 0, -1])
    np.testing.assert_array_equal(curves.scores, reference["scores"][:, :, :, 0, -1])
    np.testing.assert_array_equal(curves.recall, reference["recall"][:, :, 0, -1])
    assert curves.precision.shape == (10, 101, 3) and curves.max_dets == 100
    assert abs(mean_ap(curves) - metrics[iou_type]["AP"]) < 1e-12
    assert abs(mean_ap(curves, 0.5) - metrics[iou_type]["AP50"]) < 1e-12
    np.testing.assert_allclose(class_ap(curves), list(metrics[iou_type]["per_category"].values()), atol=1e-12)
    # the "all classes" curve drawn in pr_curves_*.png: its mean over recall is the AP
    assert abs(np.nanmean(precision_at_recall(curves).mean(axis=1)) - metrics[iou_type]["AP"]) < 1e-12


def test_ground_truth_counts_and_save_load_round_trip(evaluated, tmp_path):
    _, _, metrics = evaluated
    curves = metrics["segm"]["curves"]
    assert curves.category_names == ("a", "b", "c") and curves.num_images == 3
    assert curves.gt_instances.tolist() == [2, 2, 2] and curves.gt_images.tolist() == [2, 2, 2]
    loaded = load_curves(save_curves(curves, tmp_path / "pr.npz"))
    for name in ("precision", "scores", "recall", "iou_thresholds", "recall_thresholds", "category_ids",
                 "gt_instances", "gt_images"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(curves, name))
    assert (loaded.category_names, loaded.iou_type, loaded.num_images, loaded.max_dets) == (("a", "b", "c"), "segm",
                                                                                            3, 100)


def test_a_class_without_ground_truth_is_nan_not_zero():
    sizes = {1: (32, 32)}
    gt = make_gt(sizes, [(1, 1, (0, 0, 10, 10))], {1: "seen", 2: "unseen"})
    curves = evaluate_coco(gt, [det(1, 1, (0, 0, 10, 10), 0.9, sizes[1])], verbose=False, curves=True)["bbox"]["curves"]
    ap = class_ap(curves)
    assert ap[0] == pytest.approx(1.0) and np.isnan(ap[1]) and mean_ap(curves) == pytest.approx(1.0)


def test_confidence_curves_read_recall_off_the_scores():
    # class "a": two objects, detections 0.9 (hit), 0.7 (miss), 0.6 (hit)
    sizes = {1: (64, 64)}
    gt = make_gt(sizes, [(1, 1, (0, 0, 20, 20)), (1, 1, (30, 30, 50, 50))], {1: "a"})
    results = [det(1, 1, (0, 0, 20, 20), 0.9, sizes[1]), det(1, 1, (40, 0, 60, 20), 0.7, sizes[1]),
               det(1, 1, (30, 30, 50, 50), 0.6, sizes[1])]
    curves = evaluate_coco(gt, results, verbose=False, curves=True)["bbox"]["curves"]
    grid, precision, recall = confidence_curves(curves, 0.5, grid=np.array([0.95, 0.8, 0.65, 0.5]))
    assert recall[:, 0].tolist() == [0.0, 0.5, 0.5, 1.0]
    assert np.isnan(precision[0, 0])  # nothing scores 0.95
    # COCO's interpolated precision: the best precision at recall >= the recall reached (1 at 0.5, then 2/3)
    np.testing.assert_allclose(precision[1:, 0], [1.0, 1.0, 2 / 3])


def test_per_class_rows_table_sorting_and_csv(evaluated, tmp_path):
    _, _, metrics = evaluated
    box, mask = metrics["bbox"]["curves"], metrics["segm"]["curves"]
    rows = per_class_rows(box, mask)
    assert [r.name for r in rows] == ["a", "b", "c"]
    for r, name in zip(rows, "abc"):
        assert r.box_ap == pytest.approx(metrics["bbox"]["per_category"][name], abs=1e-12)
        assert r.mask_ap == pytest.approx(metrics["segm"]["per_category"][name], abs=1e-12)
    total = summary_row(box, mask)
    assert (total.images, total.instances) == (3, 6)
    assert total.mask_ap == pytest.approx(metrics["segm"]["AP"], abs=1e-12)
    by_ap = sort_rows(rows, "ap")
    assert [r.mask_ap for r in by_ap] == sorted([r.mask_ap for r in rows], reverse=True)
    assert [r.name for r in sort_rows(rows, "name")] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="sort by"):
        sort_rows(rows, "size")
    table = format_per_class_table(by_ap, total).splitlines()
    assert table[0].split()[:3] == ["class", "images", "instances"] and table[1].startswith("all")
    assert f"{total.mask_ap:.3f}" in table[1]  # fractions, as metrics.json and every other table
    back = read_per_class_csv(write_per_class_csv(by_ap, tmp_path / "per_class.csv", total=total))
    assert back == [total, *by_ap]
