"""The confusion matrix of a hand-made case equals the hand count."""

import numpy as np
import pytest

from instaseg.evaluation.confusion import (ConfusionMatrix, confusion_from_coco, load_confusion, match_confusion,
                                           save_confusion)

from tests.evaluation.test_coco_eval import det, make_gt


def three_images():
    """Classes a, b, c (ids 1, 2, 3). Image 1: a found, b taken for c, a detection of nothing (a).
    Image 2: a found, c missed (its only detection scores 0.3, under the threshold). Image 3: b found
    and found again (a duplicate: false positive b), c taken for a, and a detection (a) on a crowd
    region, which counts as nothing."""
    sizes = {1: (64, 64), 2: (48, 80), 3: (64, 64)}
    objects = [(1, 1, (0, 0, 20, 20)), (1, 2, (30, 30, 60, 50)),
               (2, 1, (10, 5, 40, 40)), (2, 3, (50, 10, 70, 30)),
               (3, 3, (5, 5, 15, 15)), (3, 2, (20, 20, 60, 60)), (3, 1, (0, 40, 16, 64), 1)]
    gt = make_gt(sizes, objects, {1: "a", 2: "b", 3: "c"})
    results = [
        det(1, 1, (0, 0, 20, 20), 0.9, sizes[1]), det(1, 3, (30, 30, 60, 50), 0.8, sizes[1]),
        det(1, 1, (40, 0, 60, 20), 0.7, sizes[1]),
        det(2, 1, (10, 5, 40, 40), 0.6, sizes[2]), det(2, 3, (50, 10, 70, 30), 0.3, sizes[2]),
        det(3, 2, (20, 20, 60, 60), 0.95, sizes[3]), det(3, 2, (20, 22, 60, 60), 0.9, sizes[3]),
        det(3, 1, (0, 40, 16, 64), 0.8, sizes[3]), det(3, 1, (5, 5, 15, 15), 0.55, sizes[3]),
    ]
    return gt, results


HAND_COUNT = [  # rows: ground truth a, b, c, background; columns: predicted a, b, c, background
    [2, 0, 0, 0],
    [0, 1, 1, 0],
    [1, 0, 0, 1],
    [1, 1, 0, 0],
]


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_hand_made_case_equals_the_hand_count(iou_type):
    gt, results = three_images()
    matrix = confusion_from_coco(gt, results, score_thresh=0.5, iou_thresh=0.5, iou_type=iou_type)
    assert matrix.class_names == ("a", "b", "c")
    assert matrix.counts.tolist() == HAND_COUNT
    # every non-crowd object is counted once, in its row
    assert matrix.counts[:3].sum() == 6
    np.testing.assert_allclose(matrix.normalized()[2], [0.5, 0, 0, 0.5])


def test_lower_score_threshold_lets_the_weak_detection_in_and_crowd_regions_still_count_nothing():
    gt, results = three_images()
    counts = confusion_from_coco(gt, results, score_thresh=0.25).counts
    assert counts[2].tolist() == [1, 0, 1, 0]  # c of image 2 is now found
    assert counts[3].tolist() == [1, 1, 0, 0]


def test_matching_is_greedy_by_iou_and_class_agnostic():
    iou = np.array([[0.6, 0.9],  # detection 0 overlaps both objects, object 1 more
                    [0.7, 0.0]])
    counts = match_confusion(iou, np.array([1, 0]), np.array([0, 1]), num_classes=2, iou_thresh=0.5)
    # (det 0, object 1) first: b -> b; then (det 1, object 0): a -> a
    assert counts.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert match_confusion(np.zeros((0, 2)), np.zeros(0, int), np.array([0, 0]), 2, 0.5).tolist() == \
        [[0, 0, 2], [0, 0, 0], [0, 0, 0]]


def test_save_load_round_trip(tmp_path):
    matrix = ConfusionMatrix(np.array(HAND_COUNT), ("a", "b", "c"), 0.5, 0.5, "segm")
    loaded = load_confusion(save_confusion(matrix, tmp_path / "confusion.json"))
    assert loaded.counts.tolist() == HAND_COUNT and loaded.class_names == matrix.class_names
    assert (loaded.score_thresh, loaded.iou_thresh, loaded.iou_type) == (0.5, 0.5, "segm")
