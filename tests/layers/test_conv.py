"""Conv factories, ConvNormAct, Caffe2-style inits and ShapeSpec."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instaseg.layers.conv import ConvNormAct, c2_msra_fill, c2_xavier_fill, conv1x1, conv3x3
from instaseg.layers.norm import FrozenBatchNorm2d
from instaseg.layers.shape_spec import ShapeSpec


def _reference_conv2d(x, weight, bias, stride, padding, dilation):
    """Direct loop convolution in float64 (groups = 1)."""
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    out_h = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = torch.zeros(n, c_out, out_h, out_w, dtype=torch.float64)
    for b in range(n):
        for o in range(c_out):
            for i in range(out_h):
                for j in range(out_w):
                    total = 0.0 if bias is None else float(bias[o])
                    for c in range(c_in):
                        for u in range(kh):
                            for v in range(kw):
                                row, col = i * stride + u * dilation, j * stride + v * dilation
                                pixel = xp[b, c, row, col]
                                total += float(weight[o, c, u, v]) * float(pixel)
                    out[b, o, i, j] = total
    return out


@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("size", [(5, 7), (6, 4)])
def test_conv3x3_same_padding(stride, dilation, size):
    conv = conv3x3(2, 3, stride=stride, dilation=dilation).double()
    x = torch.randn(1, 2, *size, dtype=torch.float64)
    with torch.no_grad():
        out = conv(x)
        expected = _reference_conv2d(x, conv.weight, conv.bias, stride, dilation, dilation)
    assert out.shape[-2:] == tuple(math.ceil(s / stride) for s in size)
    torch.testing.assert_close(out, expected)


def test_conv1x1_and_bias_flags():
    conv = conv1x1(4, 2, stride=2, bias=False)
    assert conv.bias is None and conv.kernel_size == (1, 1)
    assert conv(torch.randn(1, 4, 5, 5)).shape == (1, 2, 3, 3)
    assert conv3x3(2, 2, bias=False).bias is None
    assert conv3x3(2, 2, groups=2).groups == 2


def test_conv_norm_act_bias_rule_and_padding():
    assert ConvNormAct(3, 8, 3, norm="BN").bias is None
    assert ConvNormAct(3, 8, 3, norm="").bias is not None
    assert ConvNormAct(3, 32, 3, norm="GN", bias=True).bias is not None
    assert ConvNormAct(3, 8, 3, bias=False).bias is None
    assert ConvNormAct(3, 8, 5, dilation=2).padding == (4, 4)
    assert ConvNormAct(3, 8, 3, padding=0).padding == (0, 0)
    plain = ConvNormAct(3, 8, 3, norm="", activation=None)
    assert plain.norm is None and plain.activation is None
    assert set(plain.state_dict()) == {"weight", "bias"}  # loads like a plain conv


def test_conv_norm_act_matches_conv_then_norm_then_relu():
    layer = ConvNormAct(2, 3, 3, stride=2, norm="FrozenBN").double()
    with torch.no_grad():
        layer.norm.weight.copy_(torch.randn(3))
        layer.norm.bias.copy_(torch.randn(3))
        layer.norm.running_mean.copy_(torch.randn(3))
        layer.norm.running_var.copy_(torch.rand(3) + 0.5)
    assert isinstance(layer.norm, FrozenBatchNorm2d) and isinstance(layer.activation, nn.ReLU)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        conv_out = _reference_conv2d(x, layer.weight, None, 2, 1, 1)
        out = layer(x)
    n = layer.norm
    scale = n.weight / torch.sqrt(n.running_var + n.eps)
    normed = (conv_out - n.running_mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1)
    expected = (normed + n.bias.view(1, -1, 1, 1)).clamp(min=0)
    torch.testing.assert_close(out, expected)


def test_conv_norm_act_activation_instance_and_gradcheck():
    layer = ConvNormAct(2, 2, 3, activation=nn.Tanh()).double()
    assert isinstance(layer.activation, nn.Tanh)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_c2_msra_fill_statistics():
    conv = nn.Conv2d(64, 128, 3)
    c2_msra_fill(conv)
    fan_out = 128 * 3 * 3
    expected_std = math.sqrt(2.0 / fan_out)  # He et al. 2015, ReLU gain sqrt(2), fan_out mode
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.05
    assert abs(conv.weight.mean().item()) < 0.1 * expected_std
    assert torch.all(conv.bias == 0)


def test_c2_xavier_fill_bounds():
    conv = nn.Conv2d(32, 64, 3)
    c2_xavier_fill(conv)
    bound = math.sqrt(3.0 / (32 * 3 * 3))  # kaiming uniform, a=1: gain 1, fan_in
    weight = conv.weight.detach()
    assert weight.abs().max().item() <= bound
    assert weight.abs().max().item() > 0.95 * bound  # uniform fills its range
    assert abs(weight.std().item() - bound / math.sqrt(3)) / (bound / math.sqrt(3)) < 0.05
    assert torch.all(conv.bias == 0)


def test_inits_accept_conv_without_bias():
    conv = nn.Conv2d(4, 4, 1, bias=False)
    c2_msra_fill(conv)
    c2_xavier_fill(conv)
    assert conv.bias is None


def test_shape_spec_is_frozen_value():
    spec = ShapeSpec(channels=256, stride=4)
    assert spec == ShapeSpec(256, 4)
    assert hash(spec) == hash(ShapeSpec(256, 4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.channels = 3
