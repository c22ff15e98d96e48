"""The channels-last (embedding_bag) deformable convolution against the op's reference semantics."""

import math

import pytest
import torch

from instaseg.layers import ModulatedDeformConv2d
from instaseg.layers.deform import deform_conv2d_channels_last
from instaseg.ops.deform_conv import _deform_conv2d_torch


def _bilinear_zero_outside(image, y, x):
    """One channel map ``image`` (nested lists, H x W) sampled at (y, x); corners outside count 0."""
    h, w = len(image), len(image[0])
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    total = 0.0
    for cy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for cx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= cy < h and 0 <= cx < w:
                total += wy * wx * image[cy][cx]
    return total


def _reference(x, offset, weight, bias, stride, padding, dilation, mask):
    """Deformable convolution with explicit loops, float64."""
    b_, c_in, _, _ = x.shape
    c_out, _, kh, kw = weight.shape
    oh, ow = offset.shape[-2:]
    out = torch.zeros(b_, c_out, oh, ow, dtype=torch.float64)
    pixels, offsets = x.tolist(), offset.tolist()
    masks = None if mask is None else mask.tolist()
    for b in range(b_):
        for oy in range(oh):
            for ox in range(ow):
                column = torch.zeros(c_in, kh, kw, dtype=torch.float64)
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        y = oy * stride - padding + i * dilation + offsets[b][2 * k][oy][ox]
                        xx = ox * stride - padding + j * dilation + offsets[b][2 * k + 1][oy][ox]
                        m = 1.0 if masks is None else masks[b][k][oy][ox]
                        for c in range(c_in):
                            column[c, i, j] = m * _bilinear_zero_outside(pixels[b][c], y, xx)
                out[b, :, oy, ox] = (weight * column).flatten(1).sum(1) + (0 if bias is None else bias)
    return out


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)])
@pytest.mark.parametrize("modulated", [False, True])
def test_matches_the_reference_loops_and_the_op(stride, padding, dilation, modulated):
    g = torch.Generator().manual_seed(stride * 10 + padding + 3 * dilation + modulated)
    x = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    oh = (6 + 2 * padding - dilation * 2 - 1) // stride + 1
    ow = (7 + 2 * padding - dilation * 2 - 1) // stride + 1
    offset = torch.randn(2, 18, oh, ow, generator=g, dtype=torch.float64) * 2.5  # some samples leave the map
    mask = torch.rand(2, 9, oh, ow, generator=g, dtype=torch.float64) if modulated else None
    weight = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64) if modulated else None
    args = ((stride, stride), (padding, padding), (dilation, dilation))
    got = deform_conv2d_channels_last(x.contiguous(memory_format=torch.channels_last), offset, weight, bias, *args,
                                      mask)
    expected = _reference(x, offset, weight, bias, stride, padding, dilation, mask)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got, _deform_conv2d_torch(x, offset, weight, bias, *args, mask), rtol=1e-10,
                               atol=1e-10)


def test_layer_uses_it_for_channels_last_inference_only():
    layer = ModulatedDeformConv2d(4, 5, 3, padding=1, bias=True).double()
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.3)
        layer.conv_offset.bias.normal_(0, 1.0)
    x = torch.randn(1, 4, 9, 8, dtype=torch.float64)
    x_last = x.contiguous(memory_format=torch.channels_last)
    assert layer._can_gather(x_last, layer.weight) is False  # autograd on: the op
    with torch.no_grad():
        assert layer._can_gather(x_last, layer.weight) and not layer._can_gather(x, layer.weight)
        torch.testing.assert_close(layer(x_last), layer(x), rtol=1e-10, atol=1e-10)
