"""Soft-NMS checked against a slow, explicit float64 reference written here."""

import importlib
import math

import pytest
import torch

from instaseg.ops.soft_nms import batched_soft_nms, soft_nms
from tests.ops.test_nms import _iou_reference, _random_boxes

soft_nms_module = importlib.import_module("instaseg.ops.soft_nms")  # instaseg.ops.soft_nms is the function

# --------------------------------------------------------------------------- reference


def _soft_nms_reference(boxes, scores, threshold, sigma, method, score_threshold, idxs=None):
    box_list = boxes.double().tolist()
    current = dict(enumerate(scores.double().tolist()))
    cats = [0] * len(box_list) if idxs is None else idxs.tolist()
    picks, values = [], []
    while current:
        best = max(current, key=lambda i: (current[i], -i))  # highest score, then lowest index
        if current[best] < score_threshold:
            break
        picks.append(best)
        values.append(current.pop(best))
        for j in current:
            if cats[j] != cats[best]:
                continue
            iou = _iou_reference(box_list[best], box_list[j])
            if method == "linear":
                current[j] *= (1.0 - iou) if iou > threshold else 1.0
            else:
                current[j] *= math.exp(-iou * iou / sigma)
    return picks, values


# --------------------------------------------------------------------------- soft_nms


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("n", [0, 1, 40, 250])
def test_soft_nms_matches_reference(method, n):
    boxes = _random_boxes(n, torch.float64, extent=80.0)
    scores = torch.rand(n, dtype=torch.float64)
    keep, kept_scores = soft_nms(boxes, scores, iou_threshold=0.3, sigma=0.5, method=method,
                                 score_threshold=0.05)
    picks, values = _soft_nms_reference(boxes, scores, 0.3, 0.5, method, 0.05)
    assert keep.dtype == torch.int64
    assert keep.tolist() == picks
    torch.testing.assert_close(kept_scores, torch.tensor(values, dtype=torch.float64))


def test_soft_nms_float32_and_identical_boxes():
    # Identical boxes: linear decay by (1 - 1) = 0 drops the copies entirely.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[1.0, 0.0, 11.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    for method in ("linear", "gaussian"):
        keep, kept_scores = soft_nms(boxes, scores, 0.3, 0.5, method, 0.001)
        picks, values = _soft_nms_reference(boxes, scores, 0.3, 0.5, method, 0.001)
        assert keep.tolist() == picks
        torch.testing.assert_close(kept_scores, torch.tensor(values, dtype=torch.float32))


def test_soft_nms_rounds_match_one_box_per_round(monkeypatch):
    # Clustered boxes: rounds of several boxes and rounds cut short by overlaps both occur.
    boxes = _random_boxes(8, torch.float64, extent=60.0).repeat(10, 1)
    boxes += torch.rand(80, 4, dtype=torch.float64) * 6
    scores = torch.rand(80, dtype=torch.float64)
    for method in ("linear", "gaussian"):
        expected = soft_nms(boxes, scores, 0.3, 0.5, method, 0.01)
        with monkeypatch.context() as patch:
            patch.setattr(soft_nms_module, "_SOFT_NMS_ROUND", 1)
            single = soft_nms(boxes, scores, 0.3, 0.5, method, 0.01)
        assert torch.equal(single[0], expected[0])
        torch.testing.assert_close(single[1], expected[1])
        picks, values = _soft_nms_reference(boxes, scores, 0.3, 0.5, method, 0.01)
        assert expected[0].tolist() == picks


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_batched_soft_nms_matches_reference(method):
    boxes = _random_boxes(150, torch.float64, extent=50.0)
    scores = torch.rand(150, dtype=torch.float64)
    idxs = torch.randint(0, 4, (150,))
    keep, kept_scores = batched_soft_nms(boxes, scores, idxs, 0.4, 0.5, method, 0.01)
    picks, values = _soft_nms_reference(boxes, scores, 0.4, 0.5, method, 0.01, idxs)
    assert keep.tolist() == picks
    torch.testing.assert_close(kept_scores, torch.tensor(values, dtype=torch.float64))


def test_soft_nms_score_threshold_is_inclusive():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0], [9.0, 9.0, 10.0, 10.0]])
    scores = torch.tensor([0.5, 0.25, 0.125])  # exact in float32
    keep, kept_scores = soft_nms(boxes, scores, score_threshold=0.25)
    assert keep.tolist() == [0, 1] and kept_scores.tolist() == [0.5, 0.25]
    # 0.3 is not a float32 number: fl32(0.3) > 0.3 passes, the next float below does not.
    below = torch.nextafter(torch.tensor(0.3), torch.tensor(0.0))
    scores = torch.stack((torch.tensor(0.3), below, torch.tensor(0.9)))
    assert soft_nms(boxes, scores, score_threshold=0.3)[0].tolist() == [2, 0]


def test_soft_nms_rejects_bad_arguments():
    with pytest.raises(ValueError):
        soft_nms(torch.zeros(1, 4), torch.ones(1), method="hard")
    with pytest.raises(ValueError):
        soft_nms(torch.zeros(1, 4), torch.ones(1), method="gaussian", sigma=0.0)
