import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from instaseg.structures.masks import (
    annotation_to_bitmap,
    bitmap_to_rle,
    bitmaps_to_rles,
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
