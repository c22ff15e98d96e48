"""RoIAlign against an independent, slow float64 reference written from torchvision's kernel."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from instaseg.ops import _dispatch
from instaseg.ops._utils import check_roi_boxes_shape, convert_boxes_to_roi_format
from instaseg.ops.roi_align import RoIAlign, _roi_align_torch, roi_align

from tests.ops._reference import bilinear_sample

# The module itself (``instaseg.ops.roi_align`` the attribute is the function, re-exported).
roi_align_module = importlib.import_module("instaseg.ops.roi_align")


# --------------------------------------------------------------------------------------------
# Reference: explicit loops over RoIs, bins and samples, in float64 (torchvision's CPU kernel).
# --------------------------------------------------------------------------------------------
def ref_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    features, rois = features.double(), rois.double()
    out = torch.zeros(rois.shape[0], features.shape[1], out_h, out_w, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for k in range(rois.shape[0]):
        feature = features[int(rois[k, 0])]
        x1, y1, x2, y2 = (float(v) * spatial_scale - offset for v in rois[k, 1:])
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        for ph in range(out_h):
            for pw in range(out_w):
                total = torch.zeros(features.shape[1], dtype=torch.float64)
                for iy in range(grid_h):
                    y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                        total += bilinear_sample(feature, y, x)
                out[k, :, ph, pw] = total / count
    return out


# --------------------------------------------------------------------------------------------
# Test inputs
# --------------------------------------------------------------------------------------------
def _mixed_rois(batch: int, image_h: float, image_w: float) -> torch.Tensor:
    """Random boxes plus hand-picked hard cases, in image pixels, batch indices unsorted."""
    num = 14
    xy = torch.rand(num, 2, dtype=torch.float64) * torch.tensor([image_w, image_h]) * 1.2 - 2
    wh = torch.rand(num, 2, dtype=torch.float64) * torch.tensor([image_w, image_h]) * 0.8
    random_boxes = torch.cat([xy, xy + wh], dim=1)
    special = torch.tensor(
        [
            [-5.0, -6.0, image_w * 0.5, image_h * 0.5],  # partly outside (top-left)
            [image_w * 0.6, image_h * 0.7, image_w + 4, image_h + 3],  # partly outside (b-r)
            [image_w + 3, image_h + 3, image_w + 9, image_h + 8],  # wholly outside
            [-9.0, -9.0, -3.0, -2.0],  # wholly outside, negative side
            [2.3, 1.7, 2.6, 1.9],  # tiny (well under one pixel)
            [3.0, 2.0, 3.0, 2.0],  # degenerate (zero size)
            [4.0, 3.0, 2.5, 1.0],  # inverted (x2 < x1, y2 < y1)
            [0.0, 0.0, image_w, image_h],  # the whole image
        ],
        dtype=torch.float64,
    )
    boxes = torch.cat([random_boxes, special], dim=0)
    batch_index = torch.randint(0, batch, (boxes.shape[0], 1)).double()
    return torch.cat([batch_index, boxes], dim=1)


CASES = [  # (output_size, spatial_scale, map (H, W))
    ((2, 3), 1.0, (7, 9)),
    (3, 0.5, (6, 5)),
    ((4, 2), 0.25, (5, 8)),
]


@pytest.fixture(autouse=True)
def _no_fast_kernels(monkeypatch):
    # The public function must be exercised on the pure-PyTorch path here whatever is installed.
    monkeypatch.setattr(roi_align_module, "torchvision_ops", lambda: None)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("output_size,spatial_scale,map_size", CASES)
def test_matches_reference_float64(aligned, sampling_ratio, output_size, spatial_scale, map_size):
    features = torch.randn(2, 3, *map_size, dtype=torch.float64)
    rois = _mixed_rois(2, map_size[0] / spatial_scale, map_size[1] / spatial_scale)
    got = _roi_align_torch(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    want = ref_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_public_float32_matches_reference(aligned, sampling_ratio):
    features = torch.randn(2, 4, 8, 10)
    rois = _mixed_rois(2, 16.0, 20.0).float()
    got = roi_align(features, rois, (3, 4), 0.5, sampling_ratio, aligned)
    want = ref_roi_align(features, rois, (3, 4), 0.5, sampling_ratio, aligned)
    assert got.dtype == torch.float32 and got.is_contiguous()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_embedding_bag_path_matches_reference(monkeypatch, aligned, sampling_ratio):
    # Test-sized problems take the small gather + sum path; force the embedding_bag one.
    monkeypatch.setattr(roi_align_module, "_SMALL_PROBLEM", 0)
    features = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    rois = _mixed_rois(2, 14.0, 18.0)
    got = _roi_align_torch(features, rois, (3, 2), 0.5, sampling_ratio, aligned)
    want = ref_roi_align(features, rois, (3, 2), 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("small_problem", [0, 2**18])
def test_many_chunks_and_groups_match_reference(monkeypatch, small_problem):
    # Tiny chunks force many calls and a reordering of the pieces, on both gather paths.
    monkeypatch.setattr(roi_align_module, "_MAX_TAPS", 50)
    monkeypatch.setattr(roi_align_module, "_SMALL_PROBLEM", small_problem)
    features = torch.randn(2, 2, 6, 7, dtype=torch.float64)
    rois = _mixed_rois(2, 12.0, 14.0)
    for sampling_ratio in (0, 2):
        got = _roi_align_torch(features, rois, 2, 0.5, sampling_ratio, True)
        want = ref_roi_align(features, rois, 2, 0.5, sampling_ratio, True)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_list_of_boxes_equals_roi_tensor():
    features = torch.randn(2, 3, 6, 8)
    boxes = [
        torch.tensor([[0.5, 1.0, 5.0, 4.5], [2.0, 0.0, 7.5, 5.5]]),
        torch.tensor([[1.0, 1.0, 3.0, 6.0]]),
    ]
    rois = convert_boxes_to_roi_format(boxes)
    torch.testing.assert_close(rois[:, 0], torch.tensor([0.0, 0.0, 1.0]))
    from_list = roi_align(features, boxes, (2, 2), 1.0, 2, True)
    from_rois = roi_align(features, rois, (2, 2), 1.0, 2, True)
    torch.testing.assert_close(from_list, from_rois, rtol=0, atol=0)
    want = ref_roi_align(features, rois, (2, 2), 1.0, 2, True)
    torch.testing.assert_close(from_list.double(), want, rtol=1e-5, atol=1e-6)


def test_zero_boxes_gives_empty_output_with_gradient():
    features = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = roi_align(features, torch.zeros((0, 5)), (7, 6), 1.0, 2, True)
    assert out.shape == (0, 3, 7, 6)
    out.sum().backward()
    assert features.grad is not None and torch.all(features.grad == 0)
    from_list = roi_align(features, [torch.zeros((0, 4)), torch.zeros((0, 4))], 3)
    assert from_list.shape == (0, 3, 3, 3)


@pytest.mark.parametrize("small_problem", [0, 2**18])
def test_empty_lattice_rois_alone_stay_differentiable(monkeypatch, small_problem):
    # Adaptive sampling of empty aligned boxes samples nothing: output 0, graph still intact.
    monkeypatch.setattr(roi_align_module, "_SMALL_PROBLEM", small_problem)
    features = torch.randn(1, 2, 4, 4, requires_grad=True)
    rois = torch.tensor([[0, 1.0, 1.0, 1.0, 3.0], [0, 2.0, 2.0, 1.0, 1.0]])
    out = roi_align(features, rois, 2, 1.0, 0, True)
    assert torch.all(out == 0)
    out.sum().backward()
    assert torch.all(features.grad == 0)


def test_module_matches_function_and_repr():
    features = torch.randn(1, 2, 6, 6)
    rois = torch.tensor([[0, 0.5, 0.5, 10.0, 9.0]])
    module = RoIAlign((2, 3), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    want = roi_align(features, rois, (2, 3), 0.5, 2, True)
    torch.testing.assert_close(module(features, rois), want)
    assert "sampling_ratio=2" in repr(module) and "aligned=True" in repr(module)


def test_torchvision_defaults():
    # torchvision's defaults: spatial_scale=1.0, sampling_ratio=-1 (adaptive), aligned=False.
    features = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    rois = torch.tensor([[0, 0.3, 0.7, 4.9, 5.2]], dtype=torch.float64)
    want = ref_roi_align(features, rois, 2, 1.0, -1, False)
    torch.testing.assert_close(roi_align(features, rois, 2), want, rtol=0, atol=1e-12)
    assert RoIAlign(2, 1.0, -1).aligned is False


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_dtypes(dtype):
    features = torch.randn(1, 3, 6, 7)
    rois = torch.tensor([[0, 0.5, 0.5, 6.0, 5.0], [0, 2.0, 1.0, 4.0, 6.0]])
    got = roi_align(features.to(dtype), rois, 2, 1.0, 2, True)
    assert got.dtype == dtype
    want = ref_roi_align(features, rois, 2, 1.0, 2, True)
    torch.testing.assert_close(got.double(), want, rtol=0.02, atol=0.03)


def test_non_contiguous_input():
    features = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    features = features.contiguous(memory_format=torch.channels_last)
    rois = _mixed_rois(2, 6.0, 7.0)
    got = roi_align(features, rois, 2, 1.0, 2, True)
    want = ref_roi_align(features, rois, 2, 1.0, 2, True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("small_problem", [0, 2**18])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradcheck(monkeypatch, aligned, sampling_ratio, small_problem):
    monkeypatch.setattr(roi_align_module, "_SMALL_PROBLEM", small_problem)
    features = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [
            [0, 0.4, 0.6, 4.3, 3.7],
            [1, -1.5, 1.2, 3.1, 6.4],  # partly outside
            [1, 3.3, 2.2, 3.6, 2.4],  # tiny
            [0, 1.0, 0.5, 11.0, 9.0],  # larger than the map
        ],
        dtype=torch.float64,
    )

    def fn(x: torch.Tensor) -> torch.Tensor:
        return roi_align(x, rois, (2, 3), 1.0, sampling_ratio, aligned)

    assert torch.autograd.gradcheck(fn, (features,), eps=1e-6, atol=1e-8)


def test_no_gradient_to_boxes():
    features = torch.randn(1, 2, 5, 5)
    rois = torch.tensor([[0, 0.5, 0.5, 3.5, 4.0]], requires_grad=True)
    out = roi_align(features, rois, 2, 1.0, 2, True)
    assert not out.requires_grad


def test_check_roi_boxes_shape_errors():
    check_roi_boxes_shape(torch.zeros(3, 5))
    check_roi_boxes_shape([torch.zeros(3, 4), torch.zeros(0, 4)])
    with pytest.raises(ValueError, match=r"\(K, 5\)"):
        check_roi_boxes_shape(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        check_roi_boxes_shape([torch.zeros(3, 4), torch.zeros(2, 5)])
    with pytest.raises(ValueError):
        check_roi_boxes_shape("not boxes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(2, 4), 2)


# --------------------------------------------------------------------------------------------
# Dispatch to an optional compiled kernel
# --------------------------------------------------------------------------------------------
def test_dispatch_none_uses_pure_pytorch(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        return _roi_align_torch(*args, **kwargs)

    monkeypatch.setattr(roi_align_module, "_roi_align_torch", spy)
    features = torch.randn(1, 2, 5, 5)
    roi_align(features, [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], 2, 1.0, 2, True)
    assert len(calls) == 1


def test_dispatch_fake_module_is_called(monkeypatch):
    sentinel = torch.full((1, 2, 3, 4), 7.0)
    received = {}

    class FakeOps:
        @staticmethod
        def roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned):
            received.update(boxes=boxes, output_size=output_size)
            received["args"] = (spatial_scale, sampling_ratio, aligned)
            return sentinel

    monkeypatch.setattr(roi_align_module, "torchvision_ops", lambda: FakeOps)
    monkeypatch.setattr(
        roi_align_module, "_roi_align_torch", lambda *a, **k: pytest.fail("pure path used")
    )
    features = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    out = roi_align(features, [torch.tensor([[0.0, 0.0, 4.0, 4.0]])], (3, 4), 0.5, 2, True)
    assert out is sentinel
    assert received["output_size"] == (3, 4) and received["args"] == (0.5, 2, True)
    # The kernel gets a (K, 5) roi tensor in the input's dtype (compiled kernels require it).
    assert received["boxes"].shape == (1, 5) and received["boxes"].dtype == torch.float64


def test_agrees_with_torchvision_when_available():
    tv_ops = _dispatch._load_torchvision_ops()
    if tv_ops is None:
        pytest.skip("torchvision ops are not usable here")
    features = torch.randn(2, 3, 7, 9)
    rois = _mixed_rois(2, 14.0, 18.0).float()
    for aligned in (True, False):
        for sampling_ratio in (-1, 2):
            want = tv_ops.roi_align(features, rois, (3, 2), 0.5, sampling_ratio, aligned)
            got = _roi_align_torch(features, rois, (3, 2), 0.5, sampling_ratio, aligned)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    features = torch.randn(2, 3, 7, 9)
    rois = _mixed_rois(2, 14.0, 18.0).float()
    cpu = _roi_align_torch(features, rois, (3, 2), 0.5, 0, True)
    gpu = _roi_align_torch(features.cuda(), rois.cuda(), (3, 2), 0.5, 0, True)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
