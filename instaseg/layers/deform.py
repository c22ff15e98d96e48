"""Self-contained deformable convolution layer for backbones (DCNv2, Zhu et al. 2019; DCNv1 too).

YOLACT++ puts this layer in place of the 3x3 convolution of some ResNet bottlenecks (the last
three stages, every third block for R-101). Unlike ``instaseg.ops.DeformConv2d``, whose offsets are
inputs, this layer predicts its own offsets (and mask) from its input with a plain convolution.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import init

from instaseg.ops.deform_conv import deform_conv2d

__all__ = ["ModulatedDeformConv2d"]

IntPair = int | tuple[int, int]


def _pair(value: IntPair) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


class ModulatedDeformConv2d(nn.Module):
    """Deformable convolution that predicts its own offsets (and DCNv2 mask) from its input.

    ``forward(x (B, in_channels, H, W)) -> (B, out_channels, out_h, out_w)`` with the output size of
    an ordinary convolution of the same kernel, stride, padding and dilation.

    ``conv_offset`` (an ``nn.Conv2d`` with that same kernel, stride, padding and dilation) maps
    ``x`` to ``deform_groups * 3 * kh * kw`` channels when ``modulated`` (else ``2 * ...``):

    * channels ``[0, 2 * deform_groups * kh * kw)`` are offsets in pixels, laid out as in
      ``instaseg.ops.deform_conv2d`` (per group and tap ``k``: dy at ``2k``, dx at ``2k + 1``);
    * channels ``[2 * deform_groups * kh * kw, 3 * deform_groups * kh * kw)`` are mask logits, and
      the mask is ``sigmoid(logits)``.

    This split is the reference DCNv2 one (``o1, o2, mask = chunk(out, 3); offset = cat(o1, o2)``
    in CharlesShang/DCNv2, used by YOLACT++, and mmcv), so those weights load without reordering.

    ``conv_offset`` starts at zero, as in the reference implementations: offsets are 0, so the
    layer starts as a plain convolution, and for ``modulated=True`` the mask is
    ``sigmoid(0) = 0.5`` everywhere, i.e. at init ``y = 0.5 * conv(x, weight) + bias``
    (``modulated=False``: exactly ``conv(x, weight) + bias``). ``weight``/``bias`` are initialised
    like ``nn.Conv2d`` (kaiming_uniform with a = sqrt(5)).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair = 3,
        stride: IntPair = 1,
        padding: IntPair = 1,
        dilation: IntPair = 1,
        groups: int = 1,
        deform_groups: int = 1,
        bias: bool = False,
        modulated: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        if in_channels % deform_groups != 0:
            raise ValueError("in_channels must be divisible by deform_groups")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deform_groups = deform_groups
        self.modulated = modulated
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(
            in_channels,
            deform_groups * (3 if modulated else 2) * taps,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Conv-like init for ``weight``/``bias``; zero for ``conv_offset`` (start as a plain conv)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        init.zeros_(self.conv_offset.weight)
        init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, in_channels, H, W) -> (B, out_channels, out_h, out_w)``."""
        return self.forward_with_weights(x, self.weight, self.bias)

    def forward_with_weights(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer with ``weight``/``bias`` in place of its own (offsets still from ``conv_offset``).

        Lets a following frozen norm be folded into the deformable convolution at inference
        (``instaseg.layers.fusion.conv_norm``).
        """
        out = self.conv_offset(x)
        num_offsets = 2 * self.deform_groups * self.kernel_size[0] * self.kernel_size[1]
        offset = out[:, :num_offsets]
        mask = out[:, num_offsets:].sigmoid() if self.modulated else None
        return deform_conv2d(x, offset, weight, bias, self.stride, self.padding, self.dilation, mask)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deform_groups={self.deform_groups}, "
            f"bias={self.bias is not None}, modulated={self.modulated}"
        )
