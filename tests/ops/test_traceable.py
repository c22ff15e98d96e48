"""The traceable paths of instaseg's ops (what ``torch.export`` traces: fixed-size lists, symbolic
sizes, graph ops) against their eager paths and against slow references written here."""

from __future__ import annotations

import math

import pytest
import torch

import importlib
from instaseg.ops import fast_nms, multiscale_roi_align, paste_masks_in_image
from instaseg.ops.fast_nms import dense_fast_nms
from instaseg.ops.keypoints import heatmaps_to_keypoints, heatmaps_to_keypoints_ragged
from instaseg.ops.graph_ops import sort_by_score
from instaseg.ops.multiclass_nms import multiclass_nms
from instaseg.ops.nms import floor_to_dtype
from instaseg.ops.paste_masks import paste_masks_dense
from instaseg.structures.boxes import clip_boxes_to_image
from instaseg.structures.image_list import (batch_images, pad_to_multiple, resize_image, resize_shortest_side,
                                            resized_shape)
from instaseg.targets.anchors import AnchorGenerator, grid_anchors


def _random_boxes(n: int, scale: float = 40.0) -> torch.Tensor:
    xy = torch.rand(n, 2) * scale
    wh = torch.rand(n, 2) * scale * 0.6 + 0.5
    return torch.cat((xy, xy + wh), dim=1)


@pytest.mark.parametrize("height,width", [(96, 128), (128, 112), (300, 200), (200, 300), (33, 1000), (799, 800)])
def test_resize_shortest_side_picks_the_eager_size_and_pixels(height, width):
    image = torch.rand(3, height, width) * 255
    resized, size = resize_shortest_side(image, 128, 192)
    expected_size = resized_shape(height, width, 128, 192)  # float32 scale, as torchvision
    assert tuple(int(v) for v in size) == expected_size
    assert torch.equal(resized, resize_image(image, expected_size))


def test_pad_to_multiple_matches_batch_images():
    image = torch.rand(3, 37, 70)
    assert torch.equal(pad_to_multiple(image[None], 32), batch_images([image], 32).tensor)
    assert pad_to_multiple(image[None], 1).shape == (1, 3, 37, 70)


def test_clip_boxes_to_a_size_tensor_matches_a_size_tuple():
    boxes = _random_boxes(20, scale=80.0) - 20.0
    size = torch.tensor([37.0, 51.0], dtype=torch.float64)
    assert torch.equal(clip_boxes_to_image(boxes, size), clip_boxes_to_image(boxes, (37, 51)))


@pytest.mark.parametrize("convention", ["detectron2", "torchvision"])
def test_grid_anchors_match_the_anchor_generator(convention):
    generator = AnchorGenerator(((32.0, 45.0), (64.0, 90.0)), ((0.5, 1.0, 2.0),) * 2, (8, 16), offset=0.5,
                                convention=convention)
    sizes = [(5, 7), (3, 4)]
    expected = generator(sizes)
    for level, (h, w) in enumerate(sizes):
        stride = generator.strides[level]
        got = grid_anchors(generator.cell_anchors[level], (h, w), (stride, stride), generator.offset)
        assert torch.equal(got, expected[level])


def test_multiscale_roi_align_traced_path_matches_the_eager_one(monkeypatch):
    features = [torch.randn(1, 3, 32 // 2**i, 40 // 2**i) for i in range(4)]
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    boxes = torch.cat((_random_boxes(10, scale=30.0), _random_boxes(6, scale=120.0) * 2))
    rois = torch.cat((torch.zeros(16, 1), boxes), dim=1)
    expected = multiscale_roi_align(features, rois, scales, 7, 0, True)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    calls = []
    roi_align_module = importlib.import_module("instaseg.ops.roi_align")
    op = roi_align_module.roi_align_op
    monkeypatch.setattr(roi_align_module, "roi_align_op", lambda *args: calls.append(1) or op(*args))
    assert torch.equal(multiscale_roi_align(features, rois, scales, 7, 0, True), expected)
    assert len(calls) == 4  # one graph node per level, empty levels included
    assert multiscale_roi_align(features, rois[:0], scales, 7, 0, True).shape == (0, 3, 7, 7)


def reference_paste(mask: torch.Tensor, box: list[float], height: int, width: int) -> torch.Tensor:
    """Bilinear sampling of ``mask (M, M)`` at every pixel centre, zeros outside: explicit loops, float64."""
    cells_y, cells_x = mask.shape
    x1, y1, x2, y2 = box
    out = torch.zeros(height, width, dtype=torch.float64)
    if not (x2 > x1 and y2 > y1):
        return out

    def cell(i: int, j: int) -> float:
        return float(mask[i, j]) if 0 <= i < cells_y and 0 <= j < cells_x else 0.0

    for r in range(height):
        v = (r + 0.5 - y1) / (y2 - y1) * cells_y - 0.5
        for c in range(width):
            u = (c + 0.5 - x1) / (x2 - x1) * cells_x - 0.5
            i0, j0 = math.floor(v), math.floor(u)
            fy, fx = v - i0, u - j0
            out[r, c] = ((1 - fy) * (1 - fx) * cell(i0, j0) + (1 - fy) * fx * cell(i0, j0 + 1)
                         + fy * (1 - fx) * cell(i0 + 1, j0) + fy * fx * cell(i0 + 1, j0 + 1))
    return out


def test_paste_masks_dense_matches_a_pixel_loop():
    masks = torch.rand(4, 5, 5)
    boxes = torch.tensor([[2.3, 1.5, 9.8, 7.1], [-3.0, 4.0, 6.0, 15.0], [5.0, 5.0, 5.0, 8.0], [0.0, 0.0, 14.0, 12.0]])
    got = paste_masks_dense(masks, boxes, (12, 14))
    for n in range(4):
        expected = reference_paste(masks[n].double(), boxes[n].tolist(), 12, 14)
        torch.testing.assert_close(got[n].double(), expected, atol=1e-5, rtol=0)


def test_paste_masks_traced_path_matches_the_eager_one(monkeypatch):
    masks = torch.rand(12, 14, 14)
    boxes = torch.cat((_random_boxes(10, scale=50.0) - 5.0, torch.tensor([[3.0, 3.0, 3.0, 9.0], [0, 0, 60, 45]])))
    expected = paste_masks_in_image(masks, boxes, (45, 60), threshold=0.5)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    got = paste_masks_in_image(masks, boxes, (45, 60), threshold=0.5)
    # Same formula; only the summation order of the matmuls may differ (a pixel at 0.5 +- 1e-7).
    assert (got != expected).float().mean() < 1e-4


def test_keypoint_decoding_traced_path_is_the_ragged_one(monkeypatch):
    torch.manual_seed(0)
    heatmaps = torch.randn(9, 4, 14, 14) * 3
    rois = torch.cat((_random_boxes(8, scale=60.0), torch.tensor([[3.0, 3.0, 3.2, 9.0]])))
    expected = heatmaps_to_keypoints(heatmaps, rois)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    got = heatmaps_to_keypoints(heatmaps, rois)
    assert torch.equal(got, heatmaps_to_keypoints_ragged(heatmaps, rois))
    # The same locations; scores up to rounding (tests/ops/test_keypoints.py).
    assert torch.equal(got[..., :2], expected[..., :2])
    torch.testing.assert_close(got[..., 2], expected[..., 2])


def test_sort_by_score_breaks_ties_by_key():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.1, 0.9, 0.5])
    keys = torch.tensor([7, 3, 2, 0, 1, 5])
    expected = sorted(range(6), key=lambda i: (-float(scores[i]), int(keys[i])))[:4]
    assert sort_by_score(scores, keys, 4).tolist() == expected


def test_floor_to_dtype_float32():
    for value in (0.3, 0.5, 0.7, 0.05, 1.0 / 3.0):
        low = floor_to_dtype(value, torch.float32)
        assert low <= value
        assert torch.nextafter(torch.tensor(low, dtype=torch.float32), torch.tensor(math.inf)).item() > value


@pytest.mark.parametrize("top_k,max_detections", [(200, 100), (6, 10), (40, 5)])
def test_dense_fast_nms_matches_fast_nms(top_k, max_detections):
    boxes = _random_boxes(60, scale=30.0)
    scores = torch.rand(4, 60) ** 2
    scores[1, 10] = scores[1, 11]  # a tie inside a class
    got = dense_fast_nms(boxes, scores, 0.5, top_k, 0.05, max_detections)
    expected = fast_nms(boxes, scores, 0.5, top_k, 0.05, max_detections)
    assert expected[0].numel() > 0
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    none = dense_fast_nms(boxes, scores, 0.5, top_k, 1.0, max_detections)
    assert all(t.numel() == 0 for t in none)


@pytest.mark.parametrize("top_k,max_detections", [(200, 100), (6, 10), (40, 5)])
def test_dense_fast_nms_fill_matches_fast_nms(top_k, max_detections):
    """dbolya/yolact's rule: each class's top-k candidates enter whatever their score there."""
    boxes = _random_boxes(60, scale=30.0)
    scores = torch.rand(4, 60) ** 2 * 0.1  # about a quarter of the boxes are candidates
    got = dense_fast_nms(boxes, scores, 0.5, top_k, 0.05, max_detections, keep_below_threshold=True)
    expected = fast_nms(boxes, scores, 0.5, top_k, 0.05, max_detections, keep_below_threshold=True)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    if max_detections == 100:
        assert (expected[2] <= 0.05).any()  # the case this checks: below-threshold entries fill
    none = dense_fast_nms(boxes, scores, 0.5, top_k, 1.0, max_detections, keep_below_threshold=True)
    assert all(t.numel() == 0 for t in none)


@pytest.mark.parametrize("max_keep", [5, 100])
def test_multiclass_nms_traced_path_matches_the_eager_one(max_keep, monkeypatch):
    boxes = torch.stack([_random_boxes(50, scale=30.0) for _ in range(4)], dim=1)  # (R, C, 4)
    scores = torch.rand(50, 4) ** 2
    scores[7, 2] = scores[9, 2]  # a tie inside a class
    scores[3] = -math.inf  # a row that may never be kept
    expected = multiclass_nms(boxes, scores, 0.5, 0.05, max_keep)
    assert expected[0].numel() > 0 and not (expected[0] == 3).any()
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    for a, b in zip(multiclass_nms(boxes, scores, 0.5, 0.05, max_keep), expected):
        assert torch.equal(a, b)


def test_anchor_generator_traced_path_matches_the_cached_one(monkeypatch):
    generator = AnchorGenerator(((32.0,), (64.0,)), ((0.5, 1.0, 2.0),) * 2, (8, 16), offset=0.5)
    expected = generator([(5, 7), (3, 4)])
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    for got, want in zip(generator([(5, 7), (3, 4)]), expected):
        assert torch.equal(got, want)
