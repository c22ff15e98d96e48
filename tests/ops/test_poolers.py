"""FPN level assignment and multi-level RoI pooling."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from instaseg.ops.poolers import (
    MultiScaleRoIAlign,
    assign_fpn_levels,
    infer_scales,
    multiscale_roi_align,
)
from instaseg.ops.roi_align import roi_align
from instaseg.ops.roi_pool import roi_pool

# The modules themselves (the package re-exports functions under the same names).
poolers_module = importlib.import_module("instaseg.ops.poolers")
roi_align_module = importlib.import_module("instaseg.ops.roi_align")
roi_pool_module = importlib.import_module("instaseg.ops.roi_pool")

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]  # P2..P5


@pytest.fixture(autouse=True)
def _no_fast_kernels(monkeypatch):
    monkeypatch.setattr(roi_align_module, "torchvision_ops", lambda: None)
    monkeypatch.setattr(roi_pool_module, "torchvision_ops", lambda: None)


def _square(side: float, x0: float = 10.0, y0: float = 20.0) -> list[float]:
    return [x0, y0, x0 + side, y0 + side]


def test_assign_levels_by_hand():
    # FPN Eq. 1 with k0 = 4, canonical 224: 224 px -> P4, 112 -> P3, 448 -> P5, 56 -> P2.
    boxes = torch.tensor(
        [
            _square(224),
            _square(112),
            _square(448),
            _square(56),
            _square(223.0),  # just under 224 -> P3
            _square(2000),  # huge -> clamp to P5
            _square(1),  # tiny -> clamp to P2
            [5.0, 5.0, 5.0, 9.0],  # degenerate (area 0) -> P2
            [0.0, 0.0, 448.0, 112.0],  # sqrt(area) = 224 -> P4
        ]
    )
    want_levels = [4, 3, 5, 2, 3, 5, 2, 2, 4]
    got = assign_fpn_levels(boxes, 2, 5)
    assert got.dtype == torch.int64
    assert got.tolist() == [lvl - 2 for lvl in want_levels]
    # A list of per-image tensors is concatenated in order.
    assert assign_fpn_levels([boxes[:4], boxes[4:]], 2, 5).tolist() == got.tolist()
    # Other ranges / canonical settings move the thresholds as the formula says.
    assert assign_fpn_levels(boxes[:3], 3, 7).tolist() == [1, 0, 2]
    shifted = assign_fpn_levels(boxes[:3], 2, 6, canonical_scale=112, canonical_level=4)
    assert shifted.tolist() == [3, 2, 4]


def _ref_level(box: torch.Tensor, min_level: int, max_level: int) -> int:
    w, h = float(box[2] - box[0]), float(box[3] - box[1])
    if w * h <= 0:
        return 0
    level = math.floor(4 + math.log2(math.sqrt(w * h) / 224) + 1e-6)
    return min(max(level, min_level), max_level) - min_level


def _pyramid(batch: int, channels: int, image_size: int, dtype=torch.float64) -> list[torch.Tensor]:
    return [
        torch.randn(batch, channels, int(image_size * s), int(image_size * s), dtype=dtype)
        for s in SCALES
    ]


def _rois(batch: int, image_size: float, num: int = 24) -> torch.Tensor:
    sides = torch.exp(torch.empty(num, 2).uniform_(math.log(8), math.log(image_size)))
    xy = torch.rand(num, 2) * (image_size - sides)
    boxes = torch.cat([xy, xy + sides], dim=1).double()
    return torch.cat([torch.randint(0, batch, (num, 1)).double(), boxes], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
def test_multiscale_equals_per_level_roi_align(aligned):
    features = _pyramid(2, 2, 512)
    rois = _rois(2, 512.0)
    got = multiscale_roi_align(features, rois, SCALES, (3, 2), 2, aligned)
    assert got.shape == (rois.shape[0], 2, 3, 2)
    levels = [_ref_level(rois[k, 1:], 2, 5) for k in range(rois.shape[0])]
    assert len(set(levels)) >= 3, "the random boxes should cover several levels"
    for k, level in enumerate(levels):
        want = roi_align(features[level], rois[k : k + 1], (3, 2), SCALES[level], 2, aligned)
        torch.testing.assert_close(got[k : k + 1], want, rtol=0, atol=1e-12)


def test_multiscale_pool_method_equals_per_level_roi_pool():
    features = _pyramid(2, 2, 512)
    rois = _rois(2, 512.0)
    got = multiscale_roi_align(features, rois, SCALES, 2, -1, False, method="pool")
    for k in range(rois.shape[0]):
        level = _ref_level(rois[k, 1:], 2, 5)
        want = roi_pool(features[level], rois[k : k + 1], 2, SCALES[level])
        torch.testing.assert_close(got[k : k + 1], want, rtol=0, atol=0)


def test_multiscale_gradient_reaches_every_used_level():
    features = [f.requires_grad_() for f in _pyramid(1, 2, 512)]
    sides = [(40, 10), (120, 10), (230, 10), (470, 1)]  # one box per level, P2..P5
    rois = torch.tensor([[0.0] + _square(s, x0, x0) for s, x0 in sides], dtype=torch.float64)
    multiscale_roi_align(features, rois, SCALES, 2, 2, True).sum().backward()
    for feature in features:
        assert feature.grad is not None and feature.grad.abs().sum() > 0


def test_multiscale_edge_cases():
    features = _pyramid(1, 3, 256)
    no_rois = torch.zeros((0, 5), dtype=torch.float64)
    empty = multiscale_roi_align(features, no_rois, SCALES, 2, 2, True)
    assert empty.shape == (0, 3, 2, 2)
    rois = torch.tensor([[0.0, 4.0, 4.0, 60.0, 50.0]], dtype=torch.float64)
    single = multiscale_roi_align(features[:1], rois, SCALES[:1], 2, 2, True)
    torch.testing.assert_close(single, roi_align(features[0], rois, 2, SCALES[0], 2, True))
    with pytest.raises(ValueError):
        multiscale_roi_align(features, rois, SCALES, 2, 2, True, method="max")
    with pytest.raises(ValueError):
        multiscale_roi_align(features, rois, SCALES[:2], 2, 2, True)


def test_module_infers_scales_and_matches_function():
    image_shapes = [(300, 512), (512, 480)]  # scales come from the largest height, 512
    names = ["p2", "p3", "p4", "p5"]
    x = dict(zip(names, _pyramid(2, 2, 512)))
    x["extra"] = torch.randn(2, 2, 3, 3, dtype=torch.float64)  # not listed: ignored
    rois = _rois(2, 480.0)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    pooler = MultiScaleRoIAlign(names, 3, 2)
    out = pooler(x, boxes, image_shapes)
    assert pooler.scales == SCALES
    batch_index = [torch.full((len(b), 1), float(i), dtype=b.dtype) for i, b in enumerate(boxes)]
    ordered_rois = torch.cat([torch.cat(pair, dim=1) for pair in zip(batch_index, boxes)])
    maps = [x[n] for n in names]
    # torchvision's pooler uses aligned=False.
    want = multiscale_roi_align(maps, ordered_rois, SCALES, 3, 2, False)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    aligned = MultiScaleRoIAlign(names, (3, 3), 2, aligned=True)(x, boxes, image_shapes)
    want_aligned = multiscale_roi_align(maps, ordered_rois, SCALES, 3, 2, True)
    torch.testing.assert_close(aligned, want_aligned, rtol=0, atol=0)
    pooled = MultiScaleRoIAlign(names, 3, 2, method="pool")(x, boxes, image_shapes)
    want_pooled = multiscale_roi_align(maps, ordered_rois, SCALES, 3, 2, False, method="pool")
    torch.testing.assert_close(pooled, want_pooled, rtol=0, atol=0)
    assert "method='pool'" in repr(MultiScaleRoIAlign(names, 3, 2, method="pool"))


def test_infer_scales_rounds_to_powers_of_two():
    # 800x1216 image padded to strides: feature sizes are ceil(800 / stride); scales stay exact.
    strides = (4, 8, 16, 32, 64)
    features = [torch.zeros(1, 1, math.ceil(800 / s), math.ceil(1216 / s)) for s in strides]
    assert infer_scales(features, [(800, 1216), (799, 1000)]) == [1 / s for s in strides]
    assert poolers_module.infer_scales([torch.zeros(1, 1, 13, 13)], [(100, 100)]) == [1 / 8]
