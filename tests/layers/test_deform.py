"""ModulatedDeformConv2d: init equals a (half-)convolution, documented offset/mask split, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from instaseg.layers.deform import ModulatedDeformConv2d


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1)])
@pytest.mark.parametrize("modulated", [True, False])
def test_init_equals_scaled_conv(stride, padding, dilation, groups, modulated):
    layer = ModulatedDeformConv2d(4, 6, 3, stride, padding, dilation, groups, deform_groups=2, bias=True,
                                  modulated=modulated).double()
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    conv = F.conv2d(x, layer.weight, None, stride, padding, dilation, groups)
    # Zero-initialised conv_offset: offsets 0 and, when modulated, mask = sigmoid(0) = 0.5.
    scale = 0.5 if modulated else 1.0
    want = scale * conv + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-10)


def test_conv_offset_shape_and_zero_init():
    layer = ModulatedDeformConv2d(8, 4, kernel_size=(3, 2), padding=(1, 0), deform_groups=2)
    assert layer.conv_offset.out_channels == 2 * 3 * 3 * 2
    assert layer.conv_offset.kernel_size == (3, 2) and layer.conv_offset.padding == (1, 0)
    assert torch.count_nonzero(layer.conv_offset.weight) == 0
    assert torch.count_nonzero(layer.conv_offset.bias) == 0
    assert layer.bias is None  # bias=False by default: backbones follow it with a norm layer
    assert ModulatedDeformConv2d(8, 4, modulated=False).conv_offset.out_channels == 2 * 9
    with pytest.raises(ValueError):
        ModulatedDeformConv2d(6, 4, deform_groups=4)


@pytest.mark.parametrize("modulated", [True, False])
def test_offset_then_mask_channel_split(modulated):
    # Drive conv_offset through its bias only: dx = +1 for every tap (odd offset channels), dy = 0,
    # mask logits = 30 (sigmoid ~ 1). Every sample moves one column right, so the layer equals a
    # conv whose horizontal zero padding is 0 left / 2 right. Swapping dy/dx, or offsets and mask,
    # would give a different result.
    layer = ModulatedDeformConv2d(2, 3, 3, padding=1, modulated=modulated).double()
    num_offsets = 2 * 9
    with torch.no_grad():
        layer.conv_offset.bias[1:num_offsets:2] = 1.0
        layer.conv_offset.bias[num_offsets:] = 30.0
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    want = F.conv2d(F.pad(x, (0, 2, 1, 1)), layer.weight)
    if modulated:
        want = want * torch.sigmoid(torch.tensor(30.0, dtype=torch.float64))
    torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-10)


def test_gradients_reach_conv_offset():
    layer = ModulatedDeformConv2d(3, 4, 3, padding=1, bias=True)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    layer(x).square().sum().backward()
    for tensor in (layer.conv_offset.weight, layer.conv_offset.bias, layer.weight, layer.bias, x):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0
    num_offsets = 2 * 9
    # Both the offset part and the mask part of conv_offset receive gradient.
    assert layer.conv_offset.bias.grad[:num_offsets].abs().sum() > 0
    assert layer.conv_offset.bias.grad[num_offsets:].abs().sum() > 0


def test_gradcheck_through_offset_branch():
    layer = ModulatedDeformConv2d(2, 2, 3, stride=2, padding=1, deform_groups=2).double()
    with torch.no_grad():
        # Small random offset predictor; offsets stay well away from integer (kink) positions
        # thanks to a 0.5-pixel bias on every offset channel.
        layer.conv_offset.weight.normal_(0, 0.01)
        layer.conv_offset.bias[: 2 * 2 * 9] = 0.5
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), eps=1e-6, atol=1e-6)


def test_output_shape_with_stride():
    layer = ModulatedDeformConv2d(4, 8, 3, stride=2, padding=1)
    assert layer(torch.randn(1, 4, 9, 8)).shape == (1, 8, 5, 4)
    assert "deform_groups=1" in repr(layer)
