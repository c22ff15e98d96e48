import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from instaseg.structures.boxes import (
    BoxCoder,
    box_area,
    box_ioa,
    box_iou,
    clip_boxes_to_image,
    nonempty,
    remove_small_boxes,
)


def _iou_reference(a, b):
    """Slow float64 IoU with explicit arithmetic, one pair at a time."""
    out = torch.zeros(len(a), len(b), dtype=torch.float64)
    for i, (ax1, ay1, ax2, ay2) in enumerate(a.tolist()):
        for j, (bx1, by1, bx2, by2) in enumerate(b.tolist()):
            iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
            ih = max(0.0, min(ay2, by2) - max(ay1, by1))
            inter = iw * ih
            area_a = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1)
            area_b = max(0.0, bx2 - bx1) * max(0.0, by2 - by1)
            union = area_a + area_b - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def _random_boxes(n, size=100.0, dtype=torch.float64):
    xy = torch.rand(n, 2, dtype=dtype) * size
    wh = torch.rand(n, 2, dtype=dtype) * size / 2
    return torch.cat([xy, xy + wh], dim=1)


def test_box_area_continuous_coordinates():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0], [2.0, 2.0, 2.0, 8.0], [5.0, 5.0, 3.0, 3.0]])
    assert box_area(boxes).tolist() == [50.0, 0.0, 0.0]


def test_box_iou_matches_reference():
    a, b = _random_boxes(7), _random_boxes(5)
    torch.testing.assert_close(box_iou(a, b), _iou_reference(a, b))


def test_box_iou_is_bit_identical_to_the_corner_tensor_form_and_differentiable():
    """The per-coordinate in-place form computes the same float32 operations in the same order as
    the textbook ``(N, M, 2)`` corner form, so the matrices agree bit for bit; NaN/inf boxes give 0."""
    torch.manual_seed(0)
    a = torch.cat([_random_boxes(40, dtype=torch.float32), torch.tensor([[3.0, 3.0, 3.0, 9.0]])])
    b = torch.cat([_random_boxes(70, dtype=torch.float32), torch.tensor([[3.0, 3.0, 3.0, 9.0]])])
    top_left = torch.max(a[:, None, :2], b[None, :, :2])
    wh = (torch.min(a[:, None, 2:], b[None, :, 2:]) - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    textbook = torch.where(union > 0, inter / union.clamp(min=torch.finfo(torch.float32).tiny), 0.0)
    assert torch.equal(box_iou(a, b), textbook)
    bad = torch.tensor([[math.nan, 0.0, 1.0, 1.0], [0.0, 0.0, math.inf, 1.0]])
    assert torch.equal(box_iou(bad, torch.tensor([[0.0, 0.0, 1.0, 1.0]])), torch.zeros(2, 1))
    x = _random_boxes(4).requires_grad_(True)
    y = _random_boxes(5).requires_grad_(True)
    assert torch.autograd.gradcheck(box_iou, (x, y)) and torch.autograd.gradcheck(box_ioa, (x, y))


def test_box_iou_degenerate_and_empty():
    a = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_iou(a, a).item() == 0.0
    assert box_iou(torch.zeros(0, 4), _random_boxes(3).float()).shape == (0, 3)


def test_box_ioa_is_fraction_of_second_box():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 4.0, 4.0]])
    torch.testing.assert_close(box_ioa(a, b), torch.tensor([[0.25, 1.0]]))


def test_clip_and_small_box_removal():
    boxes = torch.tensor([[-5.0, -2.0, 50.0, 8.0], [10.0, 10.0, 10.5, 30.0]])
    clipped = clip_boxes_to_image(boxes, (20, 40))
    assert clipped.tolist() == [[0.0, 0.0, 40.0, 8.0], [10.0, 10.0, 10.5, 20.0]]
    assert remove_small_boxes(clipped, 1.0).tolist() == [0]
    assert nonempty(clipped).tolist() == [True, True]
    assert nonempty(clipped, threshold=1.0).tolist() == [True, False]


def test_box_coder_round_trip_and_known_values():
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0]], dtype=torch.float64)
    tgt = torch.tensor([[5.0, 0.0, 15.0, 40.0]], dtype=torch.float64)
    deltas = coder.encode(ref, tgt)
    # centre moves by half a width in x (0.5 * 10), height doubles (log 2 * 5).
    torch.testing.assert_close(deltas, torch.tensor([[5.0, 10.0 * 10 / 20, 0.0, 5.0 * math.log(2.0)]], dtype=torch.float64))
    torch.testing.assert_close(coder.decode(deltas, ref), tgt)


def test_box_coder_decodes_class_specific_deltas_and_clamps():
    coder = BoxCoder()
    ref = _random_boxes(6) + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    targets = [_random_boxes(6) + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64) for _ in range(3)]
    deltas = torch.cat([coder.encode(ref, t) for t in targets], dim=1)  # (6, 12)
    decoded = coder.decode(deltas, ref)
    assert decoded.shape == (6, 12)
    for k, t in enumerate(targets):
        torch.testing.assert_close(decoded[:, 4 * k : 4 * k + 4], t)
    huge = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    box = coder.decode(huge, torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert torch.isfinite(box).all()
    torch.testing.assert_close(box[0, 2] - box[0, 0], torch.tensor(1000.0))


finite = st.floats(min_value=-500, max_value=500, allow_nan=False, width=32)


@st.composite
def box_lists(draw, max_n=6):
    n = draw(st.integers(1, max_n))
    rows = []
    for _ in range(n):
        x1, y1 = draw(finite), draw(finite)
        w = draw(st.floats(min_value=0, max_value=300, width=32))
        h = draw(st.floats(min_value=0, max_value=300, width=32))
        rows.append([x1, y1, x1 + w, y1 + h])
    return torch.tensor(rows, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(box_lists(), box_lists())
def test_iou_properties(a, b):
    iou = box_iou(a, b)
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all()
    torch.testing.assert_close(iou, box_iou(b, a).T)
    torch.testing.assert_close(iou, _iou_reference(a, b))
    self_iou = torch.diagonal(box_iou(a, a))
    assert torch.allclose(self_iou[box_area(a) > 1e-6], torch.ones(1, dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(box_lists())
def test_coder_round_trip_property(boxes):
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0), clamp=float("inf"))
    ref = boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    tgt = ref.flip(0) + 3.0
    torch.testing.assert_close(coder.decode(coder.encode(ref, tgt), ref), tgt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_keeps_dtype(dtype):
    boxes = _random_boxes(4, dtype=dtype) - 20
    assert clip_boxes_to_image(boxes, (30, 30)).dtype == dtype
