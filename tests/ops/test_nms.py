"""Greedy NMS (``nms``, ``batched_nms``) checked against slow, explicit float64 references written here.

The references and input makers here are shared with test_soft_nms.py and test_fast_nms.py.
"""

import importlib

import pytest
import torch

from instaseg.ops.nms import _dense_greedy, _nms_torch, batched_nms, nms

nms_module = importlib.import_module("instaseg.ops.nms")  # the module; instaseg.ops.nms is the function

# --------------------------------------------------------------------------- references


def _iou_reference(a, b):
    """IoU of two xyxy boxes given as Python floats; an empty union gives 0."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _nms_reference(boxes, scores, threshold, idxs=None):
    """Textbook greedy NMS: visit by (score desc, index asc), keep if no kept box overlaps."""
    box_list = boxes.double().tolist()
    score_list = scores.double().tolist()
    cats = [0] * len(box_list) if idxs is None else idxs.tolist()
    order = sorted(range(len(box_list)), key=lambda i: (-score_list[i], i))
    kept = []
    for i in order:
        if all(cats[j] != cats[i] or _iou_reference(box_list[j], box_list[i]) <= threshold
               for j in kept):
            kept.append(i)
    return kept

# --------------------------------------------------------------------------- inputs


def _random_boxes(n, dtype=torch.float32, extent=100.0, max_size=30.0, min_size=1.0):
    xy = torch.rand(n, 2, dtype=torch.float64) * extent
    wh = torch.rand(n, 2, dtype=torch.float64) * (max_size - min_size) + min_size
    return torch.cat((xy, xy + wh), dim=1).to(dtype)


def _integer_boxes(n, extent=8, max_size=4):
    """Small integer boxes: many exact ties, identical boxes and IoUs equal to 1/2, 1/4, ..."""
    xy = torch.randint(0, extent, (n, 2))
    wh = torch.randint(0, max_size + 1, (n, 2))
    return torch.cat((xy, xy + wh), dim=1).float()


def _chain(n, step=4.0, width=10.0, dtype=torch.float32):
    """A row of boxes, each overlapping the next (IoU 0.43) but not the one after (0.11)."""
    x1 = torch.arange(n, dtype=torch.float64) * step
    boxes = torch.stack((x1, torch.zeros(n, dtype=torch.float64), x1 + width,
                         torch.full((n,), 10.0, dtype=torch.float64)), dim=1)
    return boxes.to(dtype)


# --------------------------------------------------------------------------- nms


def test_nms_empty_and_single():
    empty = _nms_torch(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    one = _nms_torch(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0.3]), 0.5)
    assert one.tolist() == [0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [2, 7, 60, 300])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 0.95])
def test_nms_random_matches_reference(n, threshold, dtype):
    boxes = _random_boxes(n, dtype)
    scores = torch.rand(n, dtype=dtype)
    assert _nms_torch(boxes, scores, threshold).tolist() == _nms_reference(boxes, scores, threshold)


@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.5, 0.75])
def test_nms_integer_boxes_ties_and_exact_thresholds(threshold):
    # Scores drawn from few values give ties (broken by index); integer boxes give IoUs exactly
    # equal to the threshold (which must not suppress) and identical or degenerate boxes.
    for _ in range(40):
        boxes = _integer_boxes(30)
        scores = torch.randint(0, 4, (30,)).float()
        expected = _nms_reference(boxes, scores, threshold)
        assert _nms_torch(boxes, scores, threshold).tolist() == expected


def test_nms_iou_equal_to_threshold_is_kept():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 1.0], [0.0, 0.0, 2.0, 1.0]])  # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    assert _nms_torch(boxes, scores, 0.5).tolist() == [0, 1]
    assert _nms_torch(boxes, scores, 0.4999).tolist() == [0]
    # 0.3 rounds *up* in float32; IoU 0.3 (= fl32(0.3) > 0.3) must still compare as real numbers.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [0.0, 0.0, 3.0, 1.0]])  # IoU 0.3
    iou = float(nms_module.box_iou(boxes[:1], boxes[1:]))
    assert _nms_torch(boxes, scores, 0.3).tolist() == ([0] if iou > 0.3 else [0, 1])


def test_nms_ties_prefer_lower_index():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3 + [[50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.5, 0.7, 0.7, 0.7])
    assert _nms_torch(boxes, scores, 0.5).tolist() == [1, 3]


def test_nms_identical_nested_and_degenerate():
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],   # 0
        [0.0, 0.0, 10.0, 10.0],   # 1 identical to 0
        [2.0, 2.0, 8.0, 8.0],     # 2 nested in 0, IoU 0.36
        [3.0, 3.0, 3.0, 9.0],     # 3 zero width
        [5.0, 5.0, 5.0, 5.0],     # 4 a point
        [9.0, 9.0, 1.0, 1.0],     # 5 inverted (empty)
        [5.0, 5.0, 5.0, 5.0],     # 6 the same point
    ])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.6, 0.5, 0.4])
    for threshold in (0.0, 0.3, 0.5):
        expected = _nms_reference(boxes, scores, threshold)
        assert _nms_torch(boxes, scores, threshold).tolist() == expected
    # Empty boxes have IoU 0 with everything: they are neither suppressed nor suppress.
    assert _nms_torch(boxes, scores, 0.5).tolist() == [3, 0, 2, 4, 5, 6]


@pytest.mark.parametrize("n", [3, 50, 300])
def test_nms_long_chain(n):
    boxes = _chain(n)
    scores = torch.linspace(1.0, 0.5, n)  # chain order = score order: greedy keeps every other
    keep = _nms_torch(boxes, scores, 0.3)
    assert keep.tolist() == _nms_reference(boxes, scores, 0.3) == list(range(0, n, 2))
    shuffled = torch.randperm(n)
    keep = _nms_torch(boxes[shuffled], scores[shuffled], 0.3)
    assert keep.tolist() == _nms_reference(boxes[shuffled], scores[shuffled], 0.3)


def test_nms_clustered_boxes_match_reference():
    # Jittered copies of a few boxes: deep suppression structure, many overlapping pairs.
    centers = _random_boxes(8, torch.float64, extent=200.0, max_size=60.0, min_size=20.0)
    boxes = centers.repeat(40, 1) + torch.randn(320, 4, dtype=torch.float64) * 3.0
    scores = torch.rand(320, dtype=torch.float64)
    for threshold in (0.3, 0.5, 0.8):
        expected = _nms_reference(boxes, scores, threshold)
        assert _nms_torch(boxes, scores, threshold).tolist() == expected


def test_nms_sweeps_along_y_for_wide_boxes():
    n = 200
    y1 = torch.rand(n, dtype=torch.float64) * 400
    boxes = torch.stack((torch.zeros(n, dtype=torch.float64), y1,
                         torch.full((n,), 1000.0, dtype=torch.float64),
                         y1 + 5 + torch.rand(n, dtype=torch.float64) * 10), dim=1)
    scores = torch.rand(n, dtype=torch.float64)
    assert _nms_torch(boxes, scores, 0.5).tolist() == _nms_reference(boxes, scores, 0.5)


def test_nms_many_identical_boxes_use_dense_path(monkeypatch):
    calls = []
    original = nms_module._dense_greedy
    monkeypatch.setattr(nms_module, "_dense_greedy",
                        lambda *args: calls.append(1) or original(*args))
    boxes = torch.tensor([[1.0, 2.0, 30.0, 40.0]]).repeat(600, 1)
    boxes[300:] += 100.0  # two stacks of 300 identical boxes
    scores = torch.rand(600)
    keep = _nms_torch(boxes, scores, 0.5)
    assert calls, "expected the edge list to overflow into the dense path"
    assert keep.tolist() == _nms_reference(boxes, scores, 0.5)


@pytest.mark.parametrize("threshold", [-0.5, 0.0, 0.4, 0.9])
def test_dense_path_matches_reference(threshold):
    boxes = _random_boxes(200, torch.float64, extent=120.0)
    scores = torch.rand(200, dtype=torch.float64)
    idxs = torch.randint(0, 3, (200,))
    order = torch.argsort(scores, descending=True, stable=True)
    for cats in (None, idxs):
        keep = _dense_greedy(boxes[order], None if cats is None else cats[order], threshold)
        assert order[keep].tolist() == _nms_reference(boxes, scores, threshold, cats)


def test_nms_threshold_outside_unit_interval():
    boxes = _random_boxes(30, extent=20.0)
    scores = torch.rand(30)
    order = torch.argsort(scores, descending=True, stable=True)
    assert _nms_torch(boxes, scores, 1.0).tolist() == order.tolist()
    assert _nms_torch(boxes, scores, -0.1).tolist() == order[:1].tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nms_low_precision_agrees_with_dense_path(dtype):
    # Both paths compute IoU with box_iou's arithmetic in the input dtype: results match exactly.
    boxes = _random_boxes(300, dtype, extent=150.0)
    scores = torch.rand(300).to(dtype)
    for threshold in (0.3, 0.6):
        order = torch.argsort(scores, descending=True, stable=True)
        floor = nms_module.floor_to_dtype(threshold, dtype)
        expected = order[_dense_greedy(boxes[order], None, floor)]
        assert torch.equal(_nms_torch(boxes, scores, threshold), expected)


def test_nms_large_input_matches_dense_path():
    # Many slabs of the sweep (windows of ~100 boxes): the benchmark's distribution, scaled.
    boxes = _random_boxes(1500, extent=400.0, max_size=80.0, min_size=4.0)
    scores = torch.rand(1500)
    order = torch.argsort(scores, descending=True, stable=True)
    for threshold in (0.5, 0.7):
        expected = order[_dense_greedy(boxes[order], None, threshold)]
        assert torch.equal(_nms_torch(boxes, scores, threshold), expected)


def test_nms_dispatches_to_torchvision_when_available(monkeypatch):
    boxes, scores = _random_boxes(20), torch.rand(20)
    monkeypatch.setattr(nms_module, "torchvision_ops", lambda: None)
    assert torch.equal(nms(boxes, scores, 0.5), _nms_torch(boxes, scores, 0.5))

    class FakeOps:
        @staticmethod
        def nms(b, s, t):
            return torch.tensor([-1])

        @staticmethod
        def batched_nms(b, s, i, t):
            return torch.tensor([-2])

    monkeypatch.setattr(nms_module, "torchvision_ops", lambda: FakeOps)
    assert nms(boxes, scores, 0.5).tolist() == [-1]
    assert batched_nms(boxes, scores, torch.zeros(20, dtype=torch.long), 0.5).tolist() == [-2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nms_cuda_matches_cpu():
    boxes, scores = _random_boxes(2000, extent=500.0), torch.rand(2000)
    idxs = torch.randint(0, 5, (2000,))
    assert torch.equal(_nms_torch(boxes.cuda(), scores.cuda(), 0.5).cpu(),
                       _nms_torch(boxes, scores, 0.5))
    assert torch.equal(_nms_torch(boxes.cuda(), scores.cuda(), 0.5, idxs.cuda()).cpu(),
                       _nms_torch(boxes, scores, 0.5, idxs))


# --------------------------------------------------------------------------- batched_nms


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.8])
def test_batched_nms_matches_per_class_reference(monkeypatch, threshold):
    monkeypatch.setattr(nms_module, "torchvision_ops", lambda: None)
    boxes = _random_boxes(300, torch.float64, extent=60.0)
    scores = torch.rand(300, dtype=torch.float64)
    idxs = torch.randint(0, 5, (300,)) * 1000 - 2000  # arbitrary, negative and large ids
    keep = batched_nms(boxes, scores, idxs, threshold)
    expected = []
    for cat in idxs.unique().tolist():
        members = torch.nonzero(idxs == cat).flatten()
        expected += members[_nms_reference(boxes[members], scores[members], threshold)].tolist()
    expected.sort(key=lambda i: (-float(scores[i]), i))
    assert keep.tolist() == expected == _nms_reference(boxes, scores, threshold, idxs)


def test_batched_nms_same_boxes_in_every_class():
    # Class-specific copies of the same boxes: categories must not suppress each other.
    boxes = _random_boxes(80, extent=50.0).repeat(6, 1)
    scores = torch.rand(480)
    idxs = torch.arange(6).repeat_interleave(80)
    assert _nms_torch(boxes, scores, 0.5, idxs).tolist() == _nms_reference(boxes, scores, 0.5, idxs)


def test_batched_nms_huge_category_ids():
    boxes = _random_boxes(120, torch.float64, extent=30.0)
    scores = torch.rand(120, dtype=torch.float64)
    idxs = torch.tensor([-(2**62), 7, 2**62])[torch.randint(0, 3, (120,))]
    assert _nms_torch(boxes, scores, 0.4, idxs).tolist() == _nms_reference(boxes, scores, 0.4, idxs)


def test_nms_rejects_integer_boxes():
    with pytest.raises(TypeError):
        _nms_torch(torch.zeros(3, 4, dtype=torch.long), torch.rand(3), 0.5)


def test_batched_nms_empty():
    keep = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
