"""Property-based checks (hypothesis) that complete tests/structures: polygon vs bitmap areas on
random triangles, RLE of random bitmaps, the compressed RLE run decoder, crop_and_resize of a
full-image box, box clipping."""

from __future__ import annotations

import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from instaseg.data.coco import compressed_rle_runs
from instaseg.ops.crop_and_resize import crop_and_resize
from instaseg.structures.boxes import box_area, box_iou, clip_boxes_to_image
from instaseg.structures.masks import bitmap_to_rle, polygons_to_bitmap, rle_to_bitmap

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

coordinate = st.floats(min_value=0.0, max_value=24.0, allow_nan=False, width=32)


def _shoelace(coords: list[float]) -> float:
    xs, ys = coords[0::2], coords[1::2]
    return abs(sum(xs[i] * ys[(i + 1) % len(xs)] - xs[(i + 1) % len(xs)] * ys[i] for i in range(len(xs)))) / 2


def _perimeter(coords: list[float]) -> float:
    xs, ys = coords[0::2], coords[1::2]
    return sum(math.hypot(xs[(i + 1) % len(xs)] - xs[i], ys[(i + 1) % len(ys)] - ys[i]) for i in range(len(xs)))


@settings(max_examples=80, deadline=None)
@given(st.lists(coordinate, min_size=6, max_size=6))
def test_triangle_bitmap_area_is_within_the_boundary_band(coords):
    mask = polygons_to_bitmap([coords], 26, 26)
    # every pixel whose centre is inside is set and every set pixel touches the triangle, up to
    # rasterisation at the boundary: the difference is at most a band of about one pixel along it
    assert abs(int(mask.sum()) - _shoelace(coords)) <= _perimeter(coords) + 2


@st.composite
def bitmaps(draw, max_side: int = 12) -> np.ndarray:
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    bits = draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    return np.array(bits, dtype=bool).reshape(h, w)


def _runs_by_loop(mask: np.ndarray) -> list[int]:
    runs, value, length = [], False, 0
    for bit in mask.flatten(order="F"):  # COCO runs are column-major, background first
        if bool(bit) != value:
            runs.append(length)
            value, length = bool(bit), 0
        length += 1
    return runs + [length]


@settings(max_examples=80, deadline=None)
@given(bitmaps())
def test_rle_of_random_bitmaps_round_trips_and_runs_match_a_loop(mask):
    rle = bitmap_to_rle(mask)
    assert np.array_equal(rle_to_bitmap(rle), mask)
    runs = compressed_rle_runs(rle["counts"])
    assert runs == _runs_by_loop(mask) and sum(runs) == mask.size
    uncompressed = {"size": list(mask.shape), "counts": _runs_by_loop(mask)}
    assert np.array_equal(rle_to_bitmap(uncompressed), mask)
    assert int(mask_util.area(mask_util.encode(np.asfortranarray(mask.astype(np.uint8))))) == int(mask.sum())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.data())
def test_crop_and_resize_of_the_full_image_box_preserves_the_mean(size, ky, kx, data):
    h, w = size * ky, size * kx  # whole multiples: each output cell averages a ky x kx block exactly
    values = data.draw(st.lists(st.floats(0, 1, width=32), min_size=h * w, max_size=h * w))
    masks = torch.tensor(values, dtype=torch.float32).reshape(1, h, w)
    out = crop_and_resize(masks, torch.tensor([[0.0, 0.0, float(w), float(h)]]), size)
    assert out.shape == (1, size, size)
    assert abs(float(out.double().mean()) - float(masks.double().mean())) <= 1e-5


box_coordinate = st.floats(min_value=-50, max_value=80, allow_nan=False, width=32)


@st.composite
def boxes(draw) -> torch.Tensor:
    n = draw(st.integers(1, 5))
    rows = []
    for _ in range(n):
        x1, y1 = draw(box_coordinate), draw(box_coordinate)
        rows.append([x1, y1, x1 + draw(st.floats(0, 60, width=32)), y1 + draw(st.floats(0, 60, width=32))])
    return torch.tensor(rows, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(boxes(), st.integers(1, 40), st.integers(1, 40))
def test_clip_is_idempotent_and_stays_inside(b, h, w):
    clipped = clip_boxes_to_image(b, (h, w))
    assert torch.equal(clip_boxes_to_image(clipped, (h, w)), clipped)
    assert (clipped[:, 0::2] >= 0).all() and (clipped[:, 0::2] <= w).all()
    assert (clipped[:, 1::2] >= 0).all() and (clipped[:, 1::2] <= h).all()
    assert (box_area(clipped) <= box_area(b) + 1e-9).all()


@settings(max_examples=60, deadline=None)
@given(boxes(), boxes())
def test_iou_symmetric_bounded_and_one_on_itself(a, b):
    iou = box_iou(a, b)
    assert torch.equal(iou, box_iou(b, a).T) and (iou >= 0).all() and (iou <= 1 + 1e-12).all()
    self_iou = box_iou(a, a).diagonal()
    assert torch.allclose(self_iou[box_area(a) > 1e-6], torch.ones((), dtype=torch.float64))
