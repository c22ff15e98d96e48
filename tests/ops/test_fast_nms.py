"""YOLACT's Fast NMS checked against a slow, explicit float64 reference written here."""

import importlib
import math

import pytest
import torch

from instaseg.ops.fast_nms import _top_k_stable, fast_nms
from instaseg.ops.nms import _nms_torch
from tests.ops.test_nms import _chain, _integer_boxes, _iou_reference, _random_boxes

fast_nms_module = importlib.import_module("instaseg.ops.fast_nms")  # instaseg.ops.fast_nms is the function

# --------------------------------------------------------------------------- reference


def _fast_nms_reference(boxes, scores, threshold, top_k, score_threshold, max_detections):
    """Per class: top_k above the score threshold; drop j if any higher i has IoU > threshold."""
    found = []
    for c in range(scores.shape[0]):
        class_boxes = (boxes if boxes.dim() == 2 else boxes[c]).double().tolist()
        row = scores[c].double().tolist()
        ranked = sorted((i for i in range(len(row)) if row[i] > score_threshold),
                        key=lambda i: (-row[i], i))[:top_k]
        for rank, j in enumerate(ranked):
            worst = max((_iou_reference(class_boxes[i], class_boxes[j]) for i in ranked[:rank]),
                        default=-math.inf)  # nothing above it: kept
            if worst <= threshold:
                found.append((-row[j], c, rank, j))
    found.sort()
    found = found[:max_detections]
    return [f[3] for f in found], [f[1] for f in found], [-f[0] for f in found]


# --------------------------------------------------------------------------- fast_nms


@pytest.mark.parametrize("class_specific", [False, True])
@pytest.mark.parametrize("top_k,max_detections", [(200, 100), (7, 10), (50, 5)])
def test_fast_nms_matches_reference(class_specific, top_k, max_detections):
    num_classes, n = 4, 60
    boxes = _random_boxes(n, torch.float64, extent=60.0)
    if class_specific:
        boxes = boxes + torch.randn(num_classes, n, 4, dtype=torch.float64)
    scores = torch.rand(num_classes, n, dtype=torch.float64) ** 2
    got = fast_nms(boxes, scores, 0.5, top_k, 0.05, max_detections)
    expected = _fast_nms_reference(boxes, scores, 0.5, top_k, 0.05, max_detections)
    assert got[0].tolist() == expected[0]
    assert got[1].tolist() == expected[1]
    assert got[2].tolist() == expected[2]


def test_fast_nms_ties_and_integer_boxes():
    boxes = _integer_boxes(40)
    scores = torch.randint(0, 5, (3, 40)).float() / 4
    got = fast_nms(boxes, scores, 0.5, 20, 0.3, 30)
    expected = _fast_nms_reference(boxes, scores, 0.5, 20, 0.3, 30)
    assert [t.tolist() for t in got] == [expected[0], expected[1], expected[2]]


def test_fast_nms_differs_from_greedy_on_a_chain():
    # A suppresses B, B would suppress C, A does not touch C: greedy keeps C, Fast NMS drops it.
    boxes = _chain(3)
    scores = torch.tensor([[0.9, 0.8, 0.7]])
    assert _nms_torch(boxes, scores[0], 0.3).tolist() == [0, 2]
    index, labels, kept = fast_nms(boxes, scores, iou_threshold=0.3)
    assert index.tolist() == [0] and labels.tolist() == [0]
    torch.testing.assert_close(kept, torch.tensor([0.9]))


def test_fast_nms_empty_inputs():
    for boxes, scores in ((torch.zeros(0, 4), torch.zeros(3, 0)),
                          (torch.zeros(5, 4), torch.zeros(0, 5)),
                          (torch.zeros(5, 4), torch.full((2, 5), 0.01))):
        index, labels, kept = fast_nms(boxes, scores)
        assert index.shape == labels.shape == kept.shape == (0,)
        assert index.dtype == labels.dtype == torch.int64


def test_fast_nms_dense_fallback_matches_reference(monkeypatch):
    boxes = _random_boxes(50, torch.float64, extent=40.0)
    scores = torch.rand(3, 50, dtype=torch.float64)
    for threshold in (-0.5, 0.0, 0.5):
        expected = _fast_nms_reference(boxes, scores, threshold, 30, 0.05, 60)
        with monkeypatch.context() as patch:
            patch.setattr(fast_nms_module, "_suppression_edges", lambda *args: None)
            dense = fast_nms(boxes, scores, threshold, 30, 0.05, 60)
        sparse = fast_nms(boxes, scores, threshold, 30, 0.05, 60)
        for got in (dense, sparse):
            assert [t.tolist() for t in got] == [expected[0], expected[1], expected[2]]


def test_fast_nms_small_top_k_with_ties():
    boxes = _integer_boxes(60, extent=12)
    scores = torch.randint(1, 5, (5, 60)).float() / 4
    for top_k in (1, 3, 10):
        got = fast_nms(boxes, scores, 0.25, top_k, 0.2, 100)
        expected = _fast_nms_reference(boxes, scores, 0.25, top_k, 0.2, 100)
        assert [t.tolist() for t in got] == [expected[0], expected[1], expected[2]]


@pytest.mark.parametrize("levels", [6, 30, 1000])  # many ties, some, hardly any (at the cut or not)
@pytest.mark.parametrize("k", [1, 4, 9, 40])
def test_top_k_stable_matches_sorted_reference(k, levels):
    scores = torch.randint(0, levels, (7, 40)).float()
    scores[0, :3] = levels  # ties at the top of a row
    values, index = _top_k_stable(scores, k)
    for row in range(7):
        ranked = sorted(range(40), key=lambda i: (-float(scores[row, i]), i))[:k]
        assert index[row].tolist() == ranked
        assert values[row].tolist() == [float(scores[row, i]) for i in ranked]
