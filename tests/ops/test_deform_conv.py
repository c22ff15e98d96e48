"""deform_conv2d / DeformConv2d against a slow float64 loop reference written here."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from instaseg.ops import deform_conv as deform_conv_module
from instaseg.ops.deform_conv import DeformConv2d, _deform_conv2d_torch, deform_conv2d


# ----------------------------------------------------------------------------------------------
# Independent reference: explicit loops, float64 numpy, its own bilinear with the zero-outside rule.
# ----------------------------------------------------------------------------------------------
def _bilinear_ref(image: np.ndarray, y: float, x: float) -> float:
    """Bilinear sample of ``image (H, W)`` at pixel-index coordinates; outside corners count 0."""
    height, width = image.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    value = 0.0
    for yy, wy in ((y0, 1.0 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1.0 - lx), (x0 + 1, lx)):
            if 0 <= yy < height and 0 <= xx < width:
                value += wy * wx * image[yy, xx]
    return value


def _deform_conv2d_ref(input, offset, weight, bias, stride, padding, dilation, mask):
    x = input.detach().double().numpy()
    off = offset.detach().double().numpy()
    w = weight.detach().double().numpy()
    m = None if mask is None else mask.detach().double().numpy()
    batch, in_channels, _, _ = x.shape
    out_channels, in_per_group, kernel_h, kernel_w = w.shape
    groups = in_channels // in_per_group
    out_per_group = out_channels // groups
    offset_groups = off.shape[1] // (2 * kernel_h * kernel_w)
    channels_per_offset_group = in_channels // offset_groups
    out_h, out_w = off.shape[2:]
    out = np.zeros((batch, out_channels, out_h, out_w))
    for b in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                for c in range(in_channels):
                    g = c // channels_per_offset_group
                    group = c // in_per_group
                    outs = slice(group * out_per_group, (group + 1) * out_per_group)
                    for i in range(kernel_h):
                        for j in range(kernel_w):
                            k = i * kernel_w + j
                            dy = off[b, 2 * (g * kernel_h * kernel_w + k), oy, ox]
                            dx = off[b, 2 * (g * kernel_h * kernel_w + k) + 1, oy, ox]
                            y = oy * stride[0] - padding[0] + i * dilation[0] + dy
                            xx = ox * stride[1] - padding[1] + j * dilation[1] + dx
                            value = _bilinear_ref(x[b, c], y, xx)
                            if m is not None:
                                value *= m[b, g * kernel_h * kernel_w + k, oy, ox]
                            out[b, outs, oy, ox] += value * w[outs, c - group * in_per_group, i, j]
    if bias is not None:
        out += bias.detach().double().numpy()[None, :, None, None]
    return torch.from_numpy(out)


def _out_size(size, kernel, stride, pad, dil):
    return (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1


def _make_case(batch=1, in_ch=2, out_ch=3, hw=(5, 6), kernel=(3, 3), stride=(1, 1), padding=(1, 1),
               dilation=(1, 1), groups=1, offset_groups=1, bias=False, mask=False, dtype=torch.float64,
               offset_scale=1.5):
    """Random tensors for one configuration. Offsets include exact integers and far-outside pushes."""
    out_h = _out_size(hw[0], kernel[0], stride[0], padding[0], dilation[0])
    out_w = _out_size(hw[1], kernel[1], stride[1], padding[1], dilation[1])
    taps = kernel[0] * kernel[1]
    x = torch.randn(batch, in_ch, *hw, dtype=dtype)
    w = torch.randn(out_ch, in_ch // groups, *kernel, dtype=dtype)
    b = torch.randn(out_ch, dtype=dtype) if bias else None
    off = torch.randn(batch, 2 * offset_groups * taps, out_h, out_w, dtype=dtype) * offset_scale
    flat = off.view(-1)
    n = flat.numel()
    flat[torch.randperm(n)[: n // 5]] = torch.randint(-2, 3, (n // 5,), dtype=dtype)  # integer positions
    flat[torch.randperm(n)[: n // 10]] = torch.tensor([-9.0, 9.0], dtype=dtype)[torch.randint(0, 2, (n // 10,))]
    m = torch.rand(batch, offset_groups * taps, out_h, out_w, dtype=dtype) if mask else None
    return x, off, w, b, m


CASES = {
    "plain": dict(),
    "mask": dict(mask=True),
    "bias_mask_batch2": dict(batch=2, bias=True, mask=True),
    "stride2": dict(stride=(2, 2), hw=(7, 6)),
    "pad0": dict(padding=(0, 0)),
    "pad2_dil2": dict(padding=(2, 2), dilation=(2, 2), mask=True),
    "nonsquare_kernel": dict(kernel=(2, 3), padding=(0, 1), stride=(1, 2), mask=True),
    "groups2": dict(in_ch=4, out_ch=4, groups=2, mask=True, bias=True),
    "offset_groups2": dict(in_ch=4, offset_groups=2, mask=True),
    "groups2_offset_groups2_batch2": dict(batch=2, in_ch=4, out_ch=2, groups=2, offset_groups=2, mask=True),
    "size1_axes": dict(hw=(1, 4), kernel=(1, 3), padding=(0, 1), mask=True),
    "size1_both": dict(hw=(1, 1), kernel=(3, 3), padding=(1, 1)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_loop_reference(name):
    spec = CASES[name]
    x, off, w, b, m = _make_case(**spec)
    kwargs = dict(stride=spec.get("stride", (1, 1)), padding=spec.get("padding", (1, 1)),
                  dilation=spec.get("dilation", (1, 1)))
    got = _deform_conv2d_torch(x, off, w, b, mask=m, **kwargs)
    want = _deform_conv2d_ref(x, off, w, b, mask=m, **kwargs)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_float32_matches_reference():
    x, off, w, b, m = _make_case(batch=2, in_ch=4, bias=True, mask=True, dtype=torch.float32)
    got = _deform_conv2d_torch(x, off, w, b, padding=1, mask=m)
    want = _deform_conv2d_ref(x, off, w, b, (1, 1), (1, 1), (1, 1), m)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_runs_and_is_close(dtype):
    x, off, w, b, m = _make_case(in_ch=4, bias=True, mask=True, dtype=torch.float32)
    got = _deform_conv2d_torch(x.to(dtype), off.to(dtype), w.to(dtype), b.to(dtype), padding=1, mask=m.to(dtype))
    want = _deform_conv2d_ref(x.to(dtype), off.to(dtype), w.to(dtype), b.to(dtype), (1, 1), (1, 1), (1, 1),
                              m.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=0.05, atol=0.1)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 0, 1, 1), (1, 2, 2, 2)])
def test_zero_offsets_equal_conv2d(stride, padding, dilation, groups):
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, 3, 3, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    want = F.conv2d(x, w, b, stride, padding, dilation, groups)
    off = torch.zeros(2, 2 * 9, *want.shape[2:], dtype=torch.float64)
    got = _deform_conv2d_torch(x, off, w, b, stride, padding, dilation)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_integer_offset_is_a_shift():
    # dy = 0, dx = +1 on every tap moves the whole window one column right: a padding-1 conv whose
    # horizontal zero padding is 0 on the left and 2 on the right (outside pixels are 0).
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    off = torch.zeros(1, 18, 5, 6, dtype=torch.float64)
    off[:, 1::2] = 1.0
    want = F.conv2d(F.pad(x, (0, 2, 1, 1)), w)
    torch.testing.assert_close(_deform_conv2d_torch(x, off, w, padding=1), want)


def test_int_and_tuple_arguments_agree():
    x, off, w, b, m = _make_case(hw=(7, 7), stride=(2, 2), padding=(1, 1), dilation=(1, 1), mask=True)
    a = _deform_conv2d_torch(x, off, w, b, stride=2, padding=1, dilation=1, mask=m)
    c = _deform_conv2d_torch(x, off, w, b, stride=(2, 2), padding=(1, 1), dilation=(1, 1), mask=m)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_batch_chunking_gives_same_result(monkeypatch):
    x, off, w, b, m = _make_case(batch=3, in_ch=2, mask=True, bias=True)
    whole = _deform_conv2d_torch(x, off, w, b, padding=1, mask=m)
    monkeypatch.setattr(deform_conv_module, "_MAX_COLUMN_ELEMENTS", 1)  # one image per chunk
    chunked = _deform_conv2d_torch(x, off, w, b, padding=1, mask=m)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_empty_batch_and_empty_image():
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    x = torch.randn(0, 2, 5, 5)
    out = _deform_conv2d_torch(x, torch.zeros(0, 18, 5, 5), w, b, padding=1, mask=torch.zeros(0, 9, 5, 5))
    assert out.shape == (0, 3, 5, 5)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))
    # An empty image with enough padding still has outputs: every sample is outside, so only bias.
    x = torch.randn(1, 2, 0, 0)
    out = _deform_conv2d_torch(x, torch.randn(1, 18, 2, 2), w, b, padding=2)
    assert out.shape == (1, 3, 2, 2)
    torch.testing.assert_close(out, b.detach().view(1, 3, 1, 1).expand(1, 3, 2, 2))


def test_bad_shapes_raise():
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(3, 4, 3, 3)
    with pytest.raises(ValueError):
        _deform_conv2d_torch(x, torch.zeros(1, 17, 5, 5), w, padding=1)  # not a multiple of 2*9
    with pytest.raises(ValueError):
        _deform_conv2d_torch(x, torch.zeros(1, 18, 4, 5), w, padding=1)  # wrong output size
    with pytest.raises(ValueError):
        _deform_conv2d_torch(x, torch.zeros(1, 18, 5, 5), w, padding=1, mask=torch.zeros(1, 8, 5, 5))
    with pytest.raises(ValueError):
        _deform_conv2d_torch(x, torch.zeros(1, 54, 5, 5), w, padding=1)  # 3 offset groups, 4 channels


def _fractional_offsets(shape, dtype=torch.float64):
    # Integer sample positions (including the -1 / H borders) are kinks of bilinear interpolation;
    # keep every fractional part in [0.3, 0.7] so finite differences see a smooth function.
    return torch.randint(-2, 2, shape).to(dtype) + 0.3 + 0.4 * torch.rand(shape, dtype=dtype)


@pytest.mark.parametrize("config", [
    dict(stride=1, padding=1, dilation=1, groups=1, offset_groups=1, in_ch=2, out_ch=2, kernel=(3, 3)),
    dict(stride=2, padding=1, dilation=1, groups=2, offset_groups=2, in_ch=4, out_ch=2, kernel=(2, 3)),
    dict(stride=1, padding=2, dilation=2, groups=1, offset_groups=2, in_ch=2, out_ch=1, kernel=(2, 2)),
])
def test_gradcheck(config):
    kernel = config["kernel"]
    out_h = _out_size(4, kernel[0], config["stride"], config["padding"], config["dilation"])
    out_w = _out_size(5, kernel[1], config["stride"], config["padding"], config["dilation"])
    taps = kernel[0] * kernel[1]
    g = config["offset_groups"]
    x = torch.randn(1, config["in_ch"], 4, 5, dtype=torch.float64, requires_grad=True)
    off = _fractional_offsets((1, 2 * g * taps, out_h, out_w)).requires_grad_()
    m = torch.rand(1, g * taps, out_h, out_w, dtype=torch.float64, requires_grad=True)
    w = torch.randn(config["out_ch"], config["in_ch"] // config["groups"], *kernel, dtype=torch.float64,
                    requires_grad=True)
    b = torch.randn(config["out_ch"], dtype=torch.float64, requires_grad=True)

    def fn(x, off, m, w, b):
        return _deform_conv2d_torch(x, off, w, b, config["stride"], config["padding"], config["dilation"], m)

    assert torch.autograd.gradcheck(fn, (x, off, m, w, b), eps=1e-6, atol=1e-6)


def test_gradcheck_without_mask():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    off = _fractional_offsets((1, 18, 4, 4)).requires_grad_()
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, off, w: _deform_conv2d_torch(x, off, w, padding=1), (x, off, w))


def test_gradcheck_with_constant_mask():
    # A mask that needs no gradient takes the in-place multiply path; autograd must still be right.
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    off = _fractional_offsets((1, 18, 4, 4)).requires_grad_()
    m = torch.rand(1, 9, 4, 4, dtype=torch.float64)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)

    def fn(x, off, w):
        return _deform_conv2d_torch(x, off, w, padding=1, mask=m)

    assert torch.autograd.gradcheck(fn, (x, off, w))
    want = _deform_conv2d_ref(x, off, w, None, (1, 1), (1, 1), (1, 1), m)
    torch.testing.assert_close(fn(x, off, w).detach(), want, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, off, w, b, m = _make_case(batch=2, in_ch=4, groups=2, out_ch=4, bias=True, mask=True)
    want = _deform_conv2d_torch(x, off, w, b, padding=1, mask=m)
    got = _deform_conv2d_torch(x.cuda(), off.cuda(), w.cuda(), b.cuda(), padding=1, mask=m.cuda())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


def test_dispatches_to_torchvision_when_available(monkeypatch):
    calls = []

    def fake_deform_conv2d(*args):
        calls.append(args)
        return torch.full((1,), 7.0)

    fake = types.SimpleNamespace(deform_conv2d=fake_deform_conv2d)
    x, off, w, b, m = _make_case(mask=True, bias=True)
    monkeypatch.setattr(deform_conv_module, "torchvision_ops", lambda: fake)
    out = deform_conv2d(x, off, w, b, stride=1, padding=1, dilation=1, mask=m)
    assert torch.equal(out, torch.full((1,), 7.0))
    assert len(calls) == 1 and calls[0][4:7] == ((1, 1), (1, 1), (1, 1)) and calls[0][7] is m

    monkeypatch.setattr(deform_conv_module, "torchvision_ops", lambda: None)
    torch.testing.assert_close(deform_conv2d(x, off, w, b, padding=1, mask=m),
                               _deform_conv2d_torch(x, off, w, b, padding=1, mask=m), rtol=0, atol=0)


def test_module_matches_function_and_init():
    layer = DeformConv2d(4, 6, (3, 2), stride=2, padding=(1, 0), dilation=1, groups=2)
    assert layer.weight.shape == (6, 2, 3, 2) and layer.bias.shape == (6,)
    fan_in = 2 * 3 * 2
    # kaiming_uniform(a=sqrt(5)) bound = sqrt(6 / ((1 + 5) * fan_in)) = 1 / sqrt(fan_in).
    assert layer.weight.abs().max() <= 1 / math.sqrt(fan_in)
    assert layer.bias.abs().max() <= 1 / math.sqrt(fan_in)
    x = torch.randn(2, 4, 7, 6)
    off = torch.randn(2, 2 * 6, 4, 3)
    m = torch.rand(2, 6, 4, 3)
    want = _deform_conv2d_torch(x, off, layer.weight, layer.bias, (2, 2), (1, 0), (1, 1), m)
    torch.testing.assert_close(layer(x, off, m), want)
    assert DeformConv2d(4, 6, 3, bias=False).bias is None
    with pytest.raises(ValueError):
        DeformConv2d(4, 6, 3, groups=3)
    assert "groups=2" in repr(layer)
