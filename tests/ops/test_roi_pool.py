"""RoIPool against an independent, slow float64 reference written from torchvision's kernel."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from instaseg.ops import _dispatch
from instaseg.ops._utils import convert_boxes_to_roi_format
from instaseg.ops.roi_pool import RoIPool, _roi_pool_torch, roi_pool

# The module itself (``instaseg.ops.roi_pool`` the attribute is the function, re-exported).
roi_pool_module = importlib.import_module("instaseg.ops.roi_pool")


# --------------------------------------------------------------------------------------------
# Reference: explicit loops over RoIs, bins and pixels (torchvision's CPU kernel, Fast R-CNN).
# --------------------------------------------------------------------------------------------
def _c_round(value: float) -> int:
    """C's round(): halves away from zero."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def ref_roi_pool(features, rois, output_size, spatial_scale):
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    features, rois = features.double(), rois.double()
    _, channels, height, width = features.shape
    out = torch.zeros(rois.shape[0], channels, out_h, out_w, dtype=torch.float64)
    for k in range(rois.shape[0]):
        feature = features[int(rois[k, 0])]
        x1, y1, x2, y2 = (_c_round(float(v) * spatial_scale) for v in rois[k, 1:])
        roi_h, roi_w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        for ph in range(out_h):
            h_lo = min(max(math.floor(ph * bin_h) + y1, 0), height)
            h_hi = min(max(math.ceil((ph + 1) * bin_h) + y1, 0), height)
            for pw in range(out_w):
                w_lo = min(max(math.floor(pw * bin_w) + x1, 0), width)
                w_hi = min(max(math.ceil((pw + 1) * bin_w) + x1, 0), width)
                if h_hi <= h_lo or w_hi <= w_lo:
                    continue  # empty bin -> 0
                for c in range(channels):
                    best = -math.inf
                    for h in range(h_lo, h_hi):
                        for w in range(w_lo, w_hi):
                            best = max(best, float(feature[c, h, w]))
                    out[k, c, ph, pw] = best
    return out


def _mixed_rois(batch: int, image_h: float, image_w: float) -> torch.Tensor:
    num = 12
    xy = torch.rand(num, 2, dtype=torch.float64) * torch.tensor([image_w, image_h]) * 1.2 - 2
    wh = torch.rand(num, 2, dtype=torch.float64) * torch.tensor([image_w, image_h]) * 0.8
    special = torch.tensor(
        [
            [-5.0, -6.0, image_w * 0.5, image_h * 0.5],  # partly outside
            [image_w * 0.6, image_h * 0.7, image_w + 4, image_h + 3],  # partly outside
            [image_w + 3, image_h + 3, image_w + 9, image_h + 8],  # wholly outside: empty bins
            [-9.0, -9.0, -3.0, -2.0],  # wholly outside, negative side
            [2.3, 1.7, 2.6, 1.9],  # tiny
            [3.0, 2.0, 3.0, 2.0],  # degenerate
            [4.0, 3.0, 2.5, 1.0],  # inverted
            [0.0, 0.0, image_w, image_h],  # the whole image
        ],
        dtype=torch.float64,
    )
    boxes = torch.cat([torch.cat([xy, xy + wh], dim=1), special], dim=0)
    return torch.cat([torch.randint(0, batch, (boxes.shape[0], 1)).double(), boxes], dim=1)


@pytest.fixture(autouse=True)
def _no_fast_kernels(monkeypatch):
    monkeypatch.setattr(roi_pool_module, "torchvision_ops", lambda: None)


@pytest.mark.parametrize(
    "output_size,spatial_scale,map_size",
    [((2, 3), 1.0, (7, 9)), (3, 0.5, (6, 5)), ((4, 2), 0.25, (5, 8)), (1, 1.0, (4, 4))],
)
@pytest.mark.parametrize("requires_grad", [False, True])  # plain max vs first-argmax gather
def test_matches_reference_float64(output_size, spatial_scale, map_size, requires_grad):
    features = torch.randn(2, 3, *map_size, dtype=torch.float64, requires_grad=requires_grad)
    rois = _mixed_rois(2, map_size[0] / spatial_scale, map_size[1] / spatial_scale)
    got = _roi_pool_torch(features, rois, output_size, spatial_scale)
    want = ref_roi_pool(features.detach(), rois, output_size, spatial_scale)
    torch.testing.assert_close(got.detach(), want, rtol=0, atol=0)


def test_rounds_halves_away_from_zero():
    # round(2.5) = 3 and round(-0.5) = -1 in C; torch.round would give 2 and -0.
    features = torch.arange(2 * 6 * 6, dtype=torch.float64).view(1, 2, 6, 6)
    rois = torch.tensor([[0, 2.5, 0.5, 4.5, 3.5], [0, -0.5, -1.5, 1.5, 2.5]], dtype=torch.float64)
    got = roi_pool(features, rois, 2, 1.0)
    torch.testing.assert_close(got, ref_roi_pool(features, rois, 2, 1.0), rtol=0, atol=0)


def test_public_float32_and_chunks(monkeypatch):
    monkeypatch.setattr(roi_pool_module, "_MAX_WINDOW_VALUES", 16)  # many tiny chunks
    features = torch.randn(2, 4, 8, 10)
    rois = _mixed_rois(2, 16.0, 20.0).float()
    got = roi_pool(features, rois, (3, 2), 0.5)
    assert got.dtype == torch.float32 and got.is_contiguous()
    want = ref_roi_pool(features, rois, (3, 2), 0.5)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=0)


def test_list_of_boxes_zero_boxes_and_module():
    features = torch.randn(2, 3, 6, 8, requires_grad=True)
    boxes = [
        torch.tensor([[0.5, 1.0, 5.0, 4.5]]),
        torch.tensor([[1.0, 1.0, 3.0, 6.0], [0.0, 0.0, 7.0, 5.0]]),
    ]
    from_list = roi_pool(features, boxes, 2)
    torch.testing.assert_close(from_list, roi_pool(features, convert_boxes_to_roi_format(boxes), 2))
    module = RoIPool((2, 2), spatial_scale=1.0)
    torch.testing.assert_close(module(features, boxes), from_list)
    assert "spatial_scale=1.0" in repr(module)
    empty = roi_pool(features, torch.zeros((0, 5)), (3, 4))
    assert empty.shape == (0, 3, 3, 4)
    empty.sum().backward()
    assert torch.all(features.grad == 0)


def test_gradcheck_without_ties():
    # Distinct values 1/n apart, so finite differences never change which element is the max.
    features = (torch.randperm(2 * 2 * 6 * 7).double() / 84.0).view(2, 2, 6, 7).requires_grad_()
    rois = torch.tensor(
        [
            [0, 0.0, 0.0, 4.0, 3.0],
            [1, 1.2, 2.4, 6.0, 5.0],
            [1, -2.0, -1.0, 2.0, 2.0],  # partly outside
            [0, 9.0, 9.0, 12.0, 12.0],  # wholly outside: empty bins, zero gradient
        ],
        dtype=torch.float64,
    )
    def fn(x: torch.Tensor) -> torch.Tensor:
        return roi_pool(x, rois, (2, 3), 1.0)

    assert torch.autograd.gradcheck(fn, (features,), eps=1e-6, atol=1e-8)


def test_gradient_goes_to_first_argmax():
    # A tie: torchvision's kernel scans rows then columns with a strict ">", so the first
    # maximum in that order, (1, 2), wins and gets the whole gradient.
    features = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    features[0, 0, 1, 2] = 5.0
    features[0, 0, 2, 0] = 5.0
    features.requires_grad_()
    out = roi_pool(features, torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]], dtype=torch.float64), 1)
    out.sum().backward()
    want = torch.zeros_like(features)
    want[0, 0, 1, 2] = 1.0
    torch.testing.assert_close(features.grad, want)


def test_dispatch_paths(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return _roi_pool_torch(*args, **kwargs)

    monkeypatch.setattr(roi_pool_module, "_roi_pool_torch", spy)
    roi_pool(torch.randn(1, 2, 5, 5), [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], 2)
    assert len(calls) == 1

    sentinel = torch.ones(1, 2, 2, 2)

    class FakeOps:
        @staticmethod
        def roi_pool(input, boxes, output_size, spatial_scale):
            assert boxes.shape == (1, 5) and output_size == (2, 2) and spatial_scale == 0.5
            return sentinel

    monkeypatch.setattr(roi_pool_module, "torchvision_ops", lambda: FakeOps)
    boxes = [torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
    assert roi_pool(torch.randn(1, 2, 5, 5), boxes, 2, 0.5) is sentinel
    assert len(calls) == 1


def test_agrees_with_torchvision_when_available():
    tv_ops = _dispatch._load_torchvision_ops()
    if tv_ops is None:
        pytest.skip("torchvision ops are not usable here")
    features = torch.randn(2, 3, 7, 9)
    rois = _mixed_rois(2, 14.0, 18.0).float()
    torch.testing.assert_close(
        _roi_pool_torch(features, rois, (3, 2), 0.5), tv_ops.roi_pool(features, rois, (3, 2), 0.5)
    )
