import math

import pytest
import torch

from instaseg.targets.anchors import (
    YOLACT_ASPECT_RATIOS,
    YOLACT_PLUS_SCALES,
    YOLACT_SCALES,
    AnchorGenerator,
    yolact_anchors,
)


def _reference_level(sizes, ratios, stride, offset, size, convention):
    """Slow float64 anchors of one level: explicit loops over rows, columns and cell anchors."""
    cells = []
    if convention == "torchvision":
        pairs = [(s, r) for r in ratios for s in sizes]  # ratio-major
    else:
        pairs = [(s, r) for s in sizes for r in ratios]  # size-major
    for s, r in pairs:
        half_w, half_h = s / math.sqrt(r) / 2.0, s * math.sqrt(r) / 2.0
        if convention == "torchvision":
            half_w, half_h = float(round(half_w)), float(round(half_h))  # half to even, like torch
        cells.append((half_w, half_h))
    height, width = size
    rows = []
    for y in range(height):
        for x in range(width):
            cx, cy = x * stride + offset * stride, y * stride + offset * stride
            for half_w, half_h in cells:
                rows.append([cx - half_w, cy - half_h, cx + half_w, cy + half_h])
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


@pytest.mark.parametrize("convention", ["torchvision", "detectron2"])
@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_anchor_generator_matches_loop_reference(convention, offset):
    sizes = ((32.0, 48.0), (64.0,), (100.0, 150.0, 200.0))
    ratios = ((0.5, 1.0, 2.0), (0.5, 1.0, 2.0), (1.0, 3.0))
    strides = (4, 8, 16)
    feature_sizes = [(3, 5), (2, 3), (1, 2)]
    gen = AnchorGenerator(sizes, ratios, strides, offset=offset, convention=convention)
    out = gen(feature_sizes, dtype=torch.float64)
    assert len(out) == 3
    for level, anchors in enumerate(out):
        expected = _reference_level(
            sizes[level], ratios[level], strides[level], offset, feature_sizes[level], convention
        )
        torch.testing.assert_close(anchors, expected, rtol=0, atol=1e-9)


def test_anchor_generator_hand_checked_values():
    gen = AnchorGenerator(((32,),), ((1.0,),), (4,))
    anchors = gen([(2, 3)])[0]
    assert anchors.shape == (6, 4)
    assert anchors[0].tolist() == [-16.0, -16.0, 16.0, 16.0]
    assert anchors[1].tolist() == [-12.0, -16.0, 20.0, 16.0]  # next column: x shifted by the stride
    assert anchors[3].tolist() == [-16.0, -12.0, 16.0, 20.0]  # next row starts after W locations


def test_torchvision_rounding_and_detectron2_exact():
    # size 32, ratio h/w = 0.5: w = 32 * sqrt(2) = 45.25..., h = 22.62...
    tv = AnchorGenerator(((32,),), ((0.5,),), (4,), convention="torchvision")([(1, 1)])[0]
    d2 = AnchorGenerator(((32,),), ((0.5,),), (4,), convention="detectron2")([(1, 1)], dtype=torch.float64)[0]
    assert tv[0].tolist() == [-23.0, -11.0, 23.0, 11.0]
    half_w, half_h = 16 * math.sqrt(2), 8 * math.sqrt(2)
    torch.testing.assert_close(d2[0], torch.tensor([-half_w, -half_h, half_w, half_h], dtype=torch.float64))


def test_order_within_location_differs_by_convention():
    sizes, ratios = ((32, 64),), ((0.5, 1.0, 2.0),)
    tv = AnchorGenerator(sizes, ratios, (8,), convention="torchvision")([(1, 1)])[0]
    d2 = AnchorGenerator(sizes, ratios, (8,), convention="detectron2")([(1, 1)])[0]
    wh_tv = (tv[:, 2:] - tv[:, :2]).tolist()
    wh_d2 = (d2[:, 2:] - d2[:, :2]).tolist()
    # torchvision: index 1 is (ratio 0.5, size 64); Detectron2: index 1 is (size 32, ratio 1).
    assert wh_tv[1] == [90.0, 46.0]  # rounded half-extents 45, 23
    assert wh_d2[1] == pytest.approx([32.0, 32.0])
    # Same set of shapes up to the rounding of half-extents (at most 1 pixel per side).
    for (w_tv, h_tv), (w_d2, h_d2) in zip(sorted(wh_tv), sorted(wh_d2)):
        assert abs(w_tv - w_d2) <= 1.0 and abs(h_tv - h_d2) <= 1.0


def test_num_anchors_and_shapes():
    gen = AnchorGenerator(((32,), (64, 80)), ((0.5, 1.0, 2.0), (1.0,)), (4, 8))
    assert gen.num_anchors_per_location() == [3, 2]
    out = gen([(4, 6), (2, 3)], device="cpu", dtype=torch.float32)
    assert [a.shape for a in out] == [(4 * 6 * 3, 4), (2 * 3 * 2, 4)]
    assert all(a.dtype == torch.float32 for a in out)
    assert gen([(0, 6), (2, 0)])[0].shape == (0, 4)


def test_torchvision_preset_and_no_state():
    sizes = ((32,), (64,), (128,), (256,), (512,))
    gen = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5, (4, 8, 16, 32, 64))
    assert gen.num_anchors_per_location() == [3] * 5
    assert list(gen.parameters()) == [] and gen.state_dict() == {}
    # Level 5 (size 512, ratio 1) at location (0, 0): (-256, -256, 256, 256).
    assert gen([(2, 2)] * 5)[4][1].tolist() == [-256.0, -256.0, 256.0, 256.0]


def test_cache_gives_equal_results_per_dtype():
    gen = AnchorGenerator(((16,),), ((1.0, 2.0),), (4,))
    first = gen([(3, 3)])[0]
    again = gen([(3, 3)])[0]
    double = gen([(3, 3)], dtype=torch.float64)[0]
    torch.testing.assert_close(first, again)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), first)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        AnchorGenerator(((32,),), ((1.0,),), (4, 8))
    with pytest.raises(ValueError):
        AnchorGenerator(((32,),), ((1.0,),), (4,), convention="mmdet")
    with pytest.raises(ValueError):
        AnchorGenerator(((32,),), ((1.0,),), (4,))([(2, 2), (1, 1)])


def _yolact_reference(feature_sizes, image_size, scales, ratios, square):
    rows = []
    for (height, width), level_scales in zip(feature_sizes, scales):
        for j in range(height):
            for i in range(width):
                cx = (i + 0.5) / width * image_size
                cy = (j + 0.5) / height * image_size
                for s in level_scales:
                    for r in ratios:
                        w = s * math.sqrt(r)
                        h = w if square else s / math.sqrt(r)
                        rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("square", [False, True])
def test_yolact_anchors_match_loop_reference(square):
    feature_sizes = [(5, 5), (3, 3), (2, 2)]
    scales = ((24.0, 30.0), (48.0,), (96.0, 120.0, 150.0))
    out = yolact_anchors(feature_sizes, 80, scales, (1.0, 0.5, 2.0), square, dtype=torch.float64)
    torch.testing.assert_close(out, _yolact_reference(feature_sizes, 80, scales, (1.0, 0.5, 2.0), square))


def test_yolact_anchors_hand_checked_values():
    out = yolact_anchors([(69, 69)], 550, ((24.0,),), dtype=torch.float64)
    c = 0.5 / 69 * 550
    torch.testing.assert_close(out[0], torch.tensor([c - 12, c - 12, c + 12, c + 12], dtype=torch.float64))
    # ratio 0.5 is w / h in YOLACT: a tall box, w = 24 / sqrt(2), h = 24 * sqrt(2).
    wh = out[1, 2:] - out[1, :2]
    torch.testing.assert_close(wh, torch.tensor([24 / math.sqrt(2), 24 * math.sqrt(2)], dtype=torch.float64))
    square = yolact_anchors([(69, 69)], 550, ((24.0,),), square_anchors=True, dtype=torch.float64)
    wh_sq = square[1, 2:] - square[1, :2]
    torch.testing.assert_close(wh_sq, torch.full((2,), 24 / math.sqrt(2), dtype=torch.float64))
    # Second anchor location is one column to the right: x centre + 550 / 69.
    torch.testing.assert_close(out[3, 0] - out[0, 0], torch.tensor(550 / 69, dtype=torch.float64))


def test_yolact_prior_counts_match_papers():
    sizes = [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]  # P3-P7 of a 550 input
    base = yolact_anchors(sizes, 550, YOLACT_SCALES, YOLACT_ASPECT_RATIOS, square_anchors=True)
    plus = yolact_anchors(sizes, 550, YOLACT_PLUS_SCALES, YOLACT_ASPECT_RATIOS)
    assert base.shape == (19248, 4)  # YOLACT's well-known prior count
    assert plus.shape == (19248 * 3, 4)
    assert YOLACT_PLUS_SCALES[0] == pytest.approx((24.0, 24 * 2 ** (1 / 3), 24 * 2 ** (2 / 3)))
    assert base.dtype == torch.float32


def _torchvision_grid_reference(cell, feature_size, image_size):
    """torchvision/models/detection/anchor_utils.py ``AnchorGenerator``: ``strides = [image_size[0]
    // g[0], image_size[1] // g[1]]`` per level (``forward``), then ``shifts_x = arange(0,
    grid_width) * stride_width`` (``grid_anchors``) and ``shifts + base_anchors``: slow loops."""
    (height, width), (image_h, image_w) = feature_size, image_size
    stride_y, stride_x = image_h // height, image_w // width
    rows = []
    for y in range(height):
        for x in range(width):
            for x1, y1, x2, y2 in cell.tolist():
                rows.append([x1 + x * stride_x, y1 + y * stride_y, x2 + x * stride_x, y2 + y * stride_y])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("padded", [(800, 1120), (800, 1088), (608, 800), (800, 800)])
def test_padded_size_strides_follow_torchvision_on_every_level(padded):
    # 300x410 resized to 800x1093 pads to 800x1120: P5 25x35, P6 13x18, whose steps are 61 and 62.
    sizes, ratios = ((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5
    gen = AnchorGenerator(sizes, ratios, (4, 8, 16, 32, 64), convention="torchvision", stride_rule="padded_size")
    feature_sizes = [(padded[0] // s, padded[1] // s) for s in (4, 8, 16, 32)]
    feature_sizes.append(tuple((n + 1) // 2 for n in feature_sizes[-1]))  # P6 = max_pool(P5, 1, stride 2)
    out = gen(feature_sizes, dtype=torch.float64, image_size=padded)
    for level, anchors in enumerate(out):
        expected = _torchvision_grid_reference(gen.cell_anchors[level], feature_sizes[level], padded)
        assert torch.equal(anchors, expected), level
    if padded == (800, 1120):
        assert gen.level_strides(feature_sizes, padded)[-1] == (61, 62)


def test_padded_size_strides_need_the_image_size():
    gen = AnchorGenerator(((32,),), ((1.0,),), (4,), stride_rule="padded_size")
    with pytest.raises(ValueError, match="padded image size"):
        gen([(2, 2)])
    with pytest.raises(ValueError, match="stride_rule"):
        AnchorGenerator(((32,),), ((1.0,),), (4,), stride_rule="auto")
