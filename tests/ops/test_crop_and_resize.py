"""crop_and_resize (the Mask R-CNN mask target) against a float64 reference, one output cell at a time."""

import importlib
import math

import pytest
import torch

from instaseg.ops.crop_and_resize import crop_and_resize

from tests.ops._reference import bilinear_sample

# the module (``instaseg.ops.crop_and_resize`` the attribute is the function)
crop_module = importlib.import_module("instaseg.ops.crop_and_resize")


def _crop_and_resize_reference(masks, boxes, size):
    """Aligned RoIAlign with adaptive sampling, one output cell at a time, in float64."""
    out = torch.zeros(len(masks), size, size, dtype=torch.float64)
    for n, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        image = masks[n].double()[None]
        start_x, start_y = x1 - 0.5, y1 - 0.5  # aligned: pixel centres at +0.5
        bin_w, bin_h = (x2 - x1) / size, (y2 - y1) / size
        grid_w, grid_h = math.ceil((x2 - x1) / size), math.ceil((y2 - y1) / size)
        count = max(grid_w * grid_h, 1)
        for i in range(size):
            for j in range(size):
                total = 0.0
                for iy in range(grid_h):
                    y = start_y + i * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_x + j * bin_w + (ix + 0.5) * bin_w / grid_w
                        total += float(bilinear_sample(image, y, x)[0])
                out[n, i, j] = total / count
    return out


def test_crop_and_resize_matches_reference_including_boxes_outside():
    masks = torch.rand(4, 10, 12, dtype=torch.float64) > 0.5
    boxes = torch.tensor(
        [
            [1.0, 2.0, 9.0, 8.0],  # inside
            [-3.5, -2.0, 6.25, 7.5],  # past the top-left corner
            [7.3, 4.1, 15.0, 13.0],  # past the bottom-right corner
            [2.2, 3.7, 4.9, 5.1],  # small fractional box (adaptive grid 1)
        ],
        dtype=torch.float64,
    )
    got = crop_and_resize(masks, boxes, 5)
    assert got.shape == (4, 5, 5) and got.dtype == torch.float64
    torch.testing.assert_close(got, _crop_and_resize_reference(masks, boxes, 5), rtol=1e-9, atol=1e-9)


def test_crop_and_resize_float_masks_float32():
    masks = torch.rand(3, 9, 7)
    xy = torch.rand(3, 2) * 6
    boxes = torch.cat([xy, xy + torch.rand(3, 2) * 8 + 0.5], dim=1)
    got = crop_and_resize(masks, boxes, 4)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _crop_and_resize_reference(masks, boxes, 4), rtol=1e-5, atol=1e-5)


def test_crop_and_resize_full_image_box_is_average_pooling():
    masks = torch.rand(2, 8, 12) > 0.5
    boxes = torch.tensor([[0.0, 0.0, 12.0, 8.0]] * 2)
    got = crop_and_resize(masks, boxes, 4)
    # Box [0, W] x [0, H] at 4x4 -> 2x3 samples per bin, exactly at pixel centres: block averages.
    expected = torch.zeros(2, 4, 4)
    for n in range(2):
        for i in range(4):
            for j in range(4):
                expected[n, i, j] = masks[n, 2 * i : 2 * i + 2, 3 * j : 3 * j + 3].float().mean()
    torch.testing.assert_close(got, expected)
    # A box over a region that is all ones gives all ones.
    ones = torch.zeros(1, 10, 10, dtype=torch.bool)
    ones[0, 2:8, 3:9] = True
    torch.testing.assert_close(crop_and_resize(ones, torch.tensor([[3.0, 2.0, 9.0, 8.0]]), 6), torch.ones(1, 6, 6))


def test_crop_and_resize_empty_and_chunked(monkeypatch):
    empty = crop_and_resize(torch.zeros(0, 5, 6, dtype=torch.bool), torch.zeros(0, 4), 7)
    assert empty.shape == (0, 7, 7)
    masks = torch.rand(5, 6, 6) > 0.3
    boxes = torch.tensor([[0.5, 1.0, 5.0, 6.0]] * 5) + torch.rand(5, 4) * 0.5
    whole = crop_and_resize(masks, boxes, 3)
    monkeypatch.setattr(crop_module, "_MAX_PIXELS_PER_CHUNK", 2 * 36)  # two masks per chunk
    torch.testing.assert_close(crop_and_resize(masks, boxes, 3), whole)
    with pytest.raises(ValueError):
        crop_and_resize(masks, boxes[:3], 3)
