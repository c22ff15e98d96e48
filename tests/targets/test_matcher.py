import math

import pytest
import torch

from instaseg.structures.boxes import box_ioa, box_iou
from instaseg.targets.matcher import Matcher, MatchResult, ignore_crowd

CONFIGS = [
    ([0.3, 0.7], [0, -1, 1], True),  # RPN
    ([0.5], [0, 1], False),  # RoI heads
    ([0.4, 0.5], [0, -1, 1], False),  # YOLACT
    ([0.4, 0.5], [0, -1, 1], True),
]


def _reference_match(iou, thresholds, labels, allow_low_quality):
    """Slow loop matcher: intervals low <= iou < high, first argmax, low-quality ties promoted."""
    rows = iou.tolist()
    num_gt = len(rows)
    num_pred = iou.shape[1]
    gt_index, label = [0] * num_pred, [labels[0]] * num_pred
    if num_gt == 0:
        return gt_index, label
    bounds = [-math.inf] + list(thresholds) + [math.inf]
    for a in range(num_pred):
        best, best_g = rows[0][a], 0
        for g in range(1, num_gt):
            if rows[g][a] > best:
                best, best_g = rows[g][a], g
        gt_index[a] = best_g
        for k, value in enumerate(labels):
            if bounds[k] <= best < bounds[k + 1]:
                label[a] = value
    if allow_low_quality:
        for g in range(num_gt):
            top = max(rows[g])
            for a in range(num_pred):
                if top > 0 and rows[g][a] == top:
                    label[a] = 1
    return gt_index, label


@pytest.mark.parametrize("thresholds, labels, low_quality", CONFIGS)
@pytest.mark.parametrize("trial", range(4))
def test_matcher_matches_reference_on_quantized_iou(thresholds, labels, low_quality, trial):
    # IoUs on a 0.1 grid: exact threshold values and ties are common.
    num_gt, num_pred = [(1, 9), (3, 12), (5, 7), (4, 30)][trial]
    iou = torch.randint(0, 11, (num_gt, num_pred)).double() / 10
    result = Matcher(thresholds, labels, low_quality)(iou)
    ref_index, ref_label = _reference_match(iou, thresholds, labels, low_quality)
    assert result.gt_index.dtype == torch.int64 and result.label.dtype == torch.int8
    assert result.gt_index.tolist() == ref_index
    assert result.label.tolist() == ref_label


@pytest.mark.parametrize("thresholds, labels, low_quality", CONFIGS)
def test_matcher_matches_reference_on_box_iou(thresholds, labels, low_quality):
    xy = torch.rand(40, 2) * 60
    preds = torch.cat([xy, xy + 5 + torch.rand(40, 2) * 30], dim=1)
    gxy = torch.rand(4, 2) * 60
    gts = torch.cat([gxy, gxy + 10 + torch.rand(4, 2) * 30], dim=1)
    iou = box_iou(gts, preds)
    result = Matcher(thresholds, labels, low_quality)(iou)
    ref_index, ref_label = _reference_match(iou, thresholds, labels, low_quality)
    assert result.gt_index.tolist() == ref_index
    assert result.label.tolist() == ref_label


def test_threshold_edges_are_low_inclusive_high_exclusive():
    iou = torch.tensor([[0.0, 0.2999, 0.3, 0.6999, 0.7, 1.0]])
    rpn = Matcher([0.3, 0.7], [0, -1, 1], False)(iou)
    assert rpn.label.tolist() == [0, 0, -1, -1, 1, 1]
    roi = Matcher([0.5], [0, 1], False)(torch.tensor([[0.4999, 0.5, 0.9]]))
    assert roi.label.tolist() == [0, 1, 1]


def test_low_quality_matches_with_ties_keep_argmax_gt():
    # gt0's best IoU is 0.4, reached by predictions 0 and 2 (a tie); prediction 2 overlaps gt1
    # more (0.6), so it becomes positive but stays matched to gt1. gt1's best (0.6) is prediction 2.
    iou = torch.tensor([
        [0.4, 0.1, 0.4, 0.0],
        [0.0, 0.2, 0.6, 0.0],
    ])
    plain = Matcher([0.3, 0.7], [0, -1, 1], False)(iou)
    low = Matcher([0.3, 0.7], [0, -1, 1], True)(iou)
    assert plain.label.tolist() == [-1, 0, -1, 0]
    assert low.label.tolist() == [1, 0, 1, 0]
    assert low.gt_index.tolist() == [0, 1, 1, 0]
    assert low.positive.tolist() == [True, False, True, False]
    assert low.negative.tolist() == [False, True, False, True]


def test_low_quality_ignores_gt_without_overlap():
    # gt1 overlaps nothing: the peers would turn every prediction positive; we promote none.
    iou = torch.tensor([[0.5, 0.1, 0.0], [0.0, 0.0, 0.0]])
    result = Matcher([0.3, 0.7], [0, -1, 1], True)(iou)
    assert result.label.tolist() == [1, 0, 0]


def test_no_ground_truth_and_no_predictions():
    empty_gt = Matcher([0.3, 0.7], [0, -1, 1], True)(torch.zeros(0, 5))
    assert isinstance(empty_gt, MatchResult)
    assert empty_gt.gt_index.tolist() == [0] * 5 and empty_gt.label.tolist() == [0] * 5
    empty_pred = Matcher([0.5], [0, 1], False)(torch.zeros(3, 0))
    assert empty_pred.gt_index.shape == (0,) and empty_pred.label.shape == (0,)
    both = Matcher([0.5], [0, 1], True)(torch.zeros(0, 0))
    assert both.label.numel() == 0


def test_nan_iou_is_ignored():
    result = Matcher([0.5], [0, 1], False)(torch.tensor([[float("nan"), 0.7, 0.2]]))
    assert result.label.tolist() == [-1, 1, 0]


def test_matcher_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Matcher([0.7, 0.3], [0, -1, 1], False)
    with pytest.raises(ValueError):
        Matcher([0.5], [0, -1, 1], False)
    with pytest.raises(ValueError):
        Matcher([0.5], [0, 2], False)
    with pytest.raises(ValueError):
        Matcher([0.5], [0, 1], False)(torch.zeros(3))


def test_ignore_crowd_matches_reference_and_is_strict():
    preds = torch.tensor([[0.0, 0.0, 10.0, 10.0], [7.0, 7.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0],
                          [0.0, 0.0, 4.0, 4.0]])
    crowd = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 11.0, 11.0]])
    ioa = box_ioa(crowd, preds)  # intersection over each prediction's area, as YOLACT
    expected = []
    for a in range(len(preds)):
        best = max(ioa[c, a].item() for c in range(len(crowd)))
        expected.append(best > 0.7)
    assert ignore_crowd(ioa, 0.7).tolist() == expected == [True, True, False, True]
    # A value equal to the threshold is not ignored (strict >).
    assert ignore_crowd(torch.tensor([[0.7, 0.71]]), 0.7).tolist() == [False, True]
    assert ignore_crowd(torch.zeros(0, 3), 0.7).tolist() == [False, False, False]
