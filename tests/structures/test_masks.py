import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from instaseg.structures import masks as masks_module
from instaseg.structures.masks import (
    annotation_to_bitmap,
    bitmap_to_rle,
    bitmaps_to_rles,
    crop_and_resize,
    polygons_to_bitmap,
    rle_to_bitmap,
)


# --------------------------------------------------------------------------- RLE


def _uncompressed_rle_reference(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE by an explicit loop: column-major runs, starting with a run of zeros."""
    height, width = mask.shape
    flat = [bool(mask[r, c]) for c in range(width) for r in range(height)]
    counts, current, run = [], False, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": [height, width], "counts": counts}


def _random_mask(height=9, width=13, p=0.4):
    return np.random.rand(height, width) < p


def test_bitmap_rle_round_trip_exact_and_json_serialisable():
    mask = _random_mask()
    rle = bitmap_to_rle(mask)
    assert isinstance(rle["counts"], str)
    assert rle["size"] == [9, 13]
    rle = json.loads(json.dumps(rle))  # must survive JSON
    decoded = rle_to_bitmap(rle)
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, mask)


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(dtype=bool, shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12)))
def test_bitmap_rle_round_trip_property(mask):
    np.testing.assert_array_equal(rle_to_bitmap(bitmap_to_rle(mask)), mask)
    np.testing.assert_array_equal(rle_to_bitmap(_uncompressed_rle_reference(mask)), mask)


def test_uncompressed_equals_compressed_and_bytes_counts():
    mask = _random_mask(7, 5)
    compressed = bitmap_to_rle(mask)
    uncompressed = _uncompressed_rle_reference(mask)
    as_bytes = {"size": compressed["size"], "counts": compressed["counts"].encode("ascii")}
    a = annotation_to_bitmap(compressed, 7, 5)
    b = annotation_to_bitmap(uncompressed, 7, 5)
    c = annotation_to_bitmap(as_bytes, 7, 5)
    np.testing.assert_array_equal(a, mask)
    np.testing.assert_array_equal(b, mask)
    np.testing.assert_array_equal(c, mask)


def test_bitmaps_to_rles_numpy_and_tensor():
    stack = np.stack([_random_mask(6, 8) for _ in range(3)])
    for source in (stack, torch.from_numpy(stack)):
        rles = bitmaps_to_rles(source)
        assert len(rles) == 3
        for rle, mask in zip(rles, stack):
            np.testing.assert_array_equal(rle_to_bitmap(rle, 6, 8), mask)
    assert bitmaps_to_rles(np.zeros((0, 4, 4), dtype=bool)) == []


def test_rle_errors():
    rle = bitmap_to_rle(_random_mask(6, 8))
    with pytest.raises(ValueError, match="does not match"):
        rle_to_bitmap(rle, 8, 6)
    with pytest.raises(ValueError, match="does not match"):
        annotation_to_bitmap(rle, 6, 9)
    with pytest.raises(ValueError, match="sum"):
        rle_to_bitmap({"size": [3, 3], "counts": [2, 3]})
    with pytest.raises(ValueError, match="counts"):
        rle_to_bitmap({"size": [3, 3]})
    with pytest.raises(ValueError, match="counts"):
        rle_to_bitmap({"size": [3, 3], "counts": 9})
    with pytest.raises(ValueError):
        bitmap_to_rle(np.zeros((2, 3, 4), dtype=bool))


# --------------------------------------------------------------------------- polygons


def _polygon_area(coords):
    """Shoelace formula on a flat [x1, y1, x2, y2, ...] list."""
    xs, ys = coords[0::2], coords[1::2]
    n = len(xs)
    return abs(sum(xs[i] * ys[(i + 1) % n] - xs[(i + 1) % n] * ys[i] for i in range(n))) / 2.0


def _perimeter(coords):
    xs, ys = coords[0::2], coords[1::2]
    n = len(xs)
    return sum(math.hypot(xs[(i + 1) % n] - xs[i], ys[(i + 1) % n] - ys[i]) for i in range(n))


@pytest.mark.parametrize(
    "polygon",
    [
        [2.0, 3.0, 12.0, 3.0, 12.0, 9.0, 2.0, 9.0],  # rectangle 10 x 6
        [1.0, 1.0, 17.0, 2.0, 6.0, 13.0],  # triangle
        [3.5, 2.25, 15.75, 4.5, 11.0, 12.5, 4.25, 10.0],  # fractional quadrilateral
    ],
)
def test_polygon_area_close_to_analytic(polygon):
    mask = polygons_to_bitmap([polygon], 16, 20)
    assert mask.shape == (16, 20) and mask.dtype == bool
    analytic = _polygon_area(polygon)
    # Rasterisation error is bounded by about half a pixel along the boundary.
    assert abs(mask.sum() - analytic) <= 0.5 * _perimeter(polygon) + 1
    # Every set pixel lies within one pixel of the polygon's bounding box.
    rows, cols = np.nonzero(mask)
    assert cols.min() >= min(polygon[0::2]) - 1 and cols.max() <= max(polygon[0::2])
    assert rows.min() >= min(polygon[1::2]) - 1 and rows.max() <= max(polygon[1::2])


def test_polygon_rectangle_interior_is_filled():
    mask = polygons_to_bitmap([[2.0, 3.0, 12.0, 3.0, 12.0, 9.0, 2.0, 9.0]], 16, 20)
    # Pixels well inside the rectangle are set, pixels well outside are not.
    assert mask[4:8, 3:11].all()
    assert not mask[:2].any() and not mask[11:].any() and not mask[:, :1].any() and not mask[:, 14:].any()


def test_polygon_parts_union():
    part_a = [0.0, 0.0, 6.0, 0.0, 6.0, 6.0, 0.0, 6.0]
    part_b = [4.0, 4.0, 10.0, 4.0, 10.0, 10.0, 4.0, 10.0]
    a = polygons_to_bitmap([part_a], 12, 12)
    b = polygons_to_bitmap([part_b], 12, 12)
    union = polygons_to_bitmap([part_a, part_b], 12, 12)
    np.testing.assert_array_equal(union, a | b)
    np.testing.assert_array_equal(annotation_to_bitmap([part_a, part_b], 12, 12), union)
    assert not polygons_to_bitmap([], 5, 7).any()


def test_polygon_errors():
    with pytest.raises(ValueError, match="odd"):
        polygons_to_bitmap([[0.0, 0.0, 4.0, 0.0, 4.0]], 8, 8)
    with pytest.raises(ValueError, match="at least 3"):
        # Four numbers: pycocotools would silently read this as a box.
        polygons_to_bitmap([[0.0, 0.0, 4.0, 4.0]], 8, 8)
    with pytest.raises(ValueError, match="at least 3"):
        annotation_to_bitmap([[0.0, 0.0, 4.0, 0.0, 4.0, 4.0], [1.0, 1.0]], 8, 8)
    with pytest.raises(ValueError, match="list of coordinate lists"):
        annotation_to_bitmap([0.0, 0.0, 4.0, 0.0, 4.0, 4.0], 8, 8)
    with pytest.raises(ValueError, match="unknown"):
        annotation_to_bitmap("not a segmentation", 8, 8)


# --------------------------------------------------------------------------- crop_and_resize


def _bilinear_torchvision_rule(image, y, x):
    """One bilinear sample of ``image`` (list of rows) with the RoIAlign kernel's edge rule."""
    height, width = len(image), len(image[0])
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * image[y_low][x_low]
        + hy * lx * image[y_low][x_high]
        + ly * hx * image[y_high][x_low]
        + ly * lx * image[y_high][x_high]
    )


def _crop_and_resize_reference(masks, boxes, size):
    """Aligned RoIAlign with adaptive sampling, one output cell at a time, in float64."""
    out = torch.zeros(len(masks), size, size, dtype=torch.float64)
    for n, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        image = masks[n].double().tolist()
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
                        total += _bilinear_torchvision_rule(image, y, x)
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
    monkeypatch.setattr(masks_module, "_MAX_PIXELS_PER_CHUNK", 2 * 36)  # two masks per chunk
    torch.testing.assert_close(crop_and_resize(masks, boxes, 3), whole)
    with pytest.raises(ValueError):
        crop_and_resize(masks, boxes[:3], 3)
