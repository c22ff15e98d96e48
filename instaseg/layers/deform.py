"""Self-contained deformable convolution layer for backbones (DCNv2, Zhu et al. 2019; DCNv1 too).

YOLACT++ puts this layer in place of the 3x3 convolution of some ResNet bottlenecks (the last
three stages, every third block for R-101). Unlike ``instaseg.ops.DeformConv2d``, whose offsets are
inputs, this layer predicts its own offsets (and mask) from its input with a plain convolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

from instaseg.ops.deform_conv import _base_positions, deform_conv2d

__all__ = ["ModulatedDeformConv2d", "deform_conv2d_channels_last"]

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
        if self._can_gather(x, weight) and offset.numel() > 0:
            return deform_conv2d_channels_last(x, offset, weight, bias, self.stride, self.padding, self.dilation, mask)
        return deform_conv2d(x, offset, weight, bias, self.stride, self.padding, self.dilation, mask)

    def _can_gather(self, x: Tensor, weight: Tensor) -> bool:
        # Inference on channels-last maps (the fast path's layout), one offset group, no groups.
        return (
            not torch.is_grad_enabled()
            and self.groups == 1
            and self.deform_groups == 1
            and x.dim() == 4
            and x.numel() > 0
            and x.is_contiguous(memory_format=torch.channels_last)
            and x.dtype in (torch.float32, torch.float64)
            and weight.dtype == x.dtype
            and not (torch.jit.is_tracing() or torch.compiler.is_compiling())
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deform_groups={self.deform_groups}, "
            f"bias={self.bias is not None}, modulated={self.modulated}"
        )


def deform_conv2d_channels_last(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    mask: Tensor | None = None,
) -> Tensor:
    """``instaseg.ops.deform_conv2d`` for one offset group and ``groups=1``, on channels-last maps.

    The same numbers (and layouts of ``offset`` / ``mask``), computed differently: every bilinear
    corner of every tap is a row of the channels-last map, so ``F.embedding_bag`` gathers whole
    channel vectors and sums them with the bilinear weight x validity x modulation (as instaseg's
    RoIAlign does), giving the im2col matrix ``(B * oh * ow, taps * C)`` directly, and one matrix
    product with the weight gives the output, channels-last. The sampling rule is the op's: a
    sample outside ``(-1, H) x (-1, W)`` is 0 and corners outside the map contribute 0.

    ``x (B, C, H, W)``, ``offset (B, 2 * kh * kw, oh, ow)`` (dy, dx per tap), ``weight (Cout, C,
    kh, kw)``, ``mask (B, kh * kw, oh, ow)`` or None -> ``(B, Cout, oh, ow)``.
    """
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    taps = kernel_h * kernel_w
    index, tap_weight = _bilinear_corners(offset, mask, (kernel_h, kernel_w), stride, padding, dilation,
                                          (height, width))
    table = x.permute(0, 2, 3, 1).reshape(batch * height * width, channels)  # a view when channels-last
    columns = F.embedding_bag(index, table, mode="sum", per_sample_weights=tap_weight.to(x.dtype))
    columns = columns.view(batch * out_h * out_w, taps * channels)  # row: (tap, channel), tap-major
    weight_rows = weight.permute(0, 2, 3, 1).reshape(out_channels, taps * channels)
    if bias is None:
        out = columns @ weight_rows.t()
    else:
        out = torch.addmm(bias, columns, weight_rows.t())
    return out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)


def _bilinear_corners(
    offset: Tensor,
    mask: Tensor | None,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    size: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Table rows ``(B * oh * ow * taps, 4)`` and weights of the 4 bilinear corners of every sample.

    Rows are ``b * H * W + y * W + x``; a corner outside the map (or any corner of a sample
    outside ``(-1, H) x (-1, W)``) gets weight 0 and a clamped, harmless row.
    """
    batch, _, out_h, out_w = offset.shape
    height, width = size
    taps = kernel[0] * kernel[1]
    dtype = torch.promote_types(offset.dtype, torch.float32)
    device = offset.device

    base_y = _base_positions(out_h, kernel[0], stride[0], padding[0], dilation[0], device, dtype)
    base_x = _base_positions(out_w, kernel[1], stride[1], padding[1], dilation[1], device, dtype)
    base_y, base_x = base_y.repeat_interleave(kernel[1], dim=0), base_x.repeat(kernel[0], 1)  # per tap
    pairs = offset.view(batch, taps, 2, out_h, out_w).to(dtype)
    y = (pairs[:, :, 0] + base_y[None, :, :, None]).permute(0, 2, 3, 1)  # (B, oh, ow, taps)
    x = (pairs[:, :, 1] + base_x[None, :, None, :]).permute(0, 2, 3, 1)
    scale = ((y > -1) & (y < height) & (x > -1) & (x < width)).to(dtype)
    if mask is not None:
        scale = scale * mask.view(batch, taps, out_h, out_w).permute(0, 2, 3, 1).to(dtype)
    y_low, x_low = y.floor(), x.floor()
    frac_y, frac_x = y - y_low, x - x_low
    y_low, x_low = y_low.to(torch.int64), x_low.to(torch.int64)
    image_row = (torch.arange(batch, device=device) * (height * width)).view(batch, 1, 1, 1)
    rows, weights = [], []
    for dy, weight_y in ((0, 1.0 - frac_y), (1, frac_y)):
        for dx, weight_x in ((0, 1.0 - frac_x), (1, frac_x)):
            cy, cx = y_low + dy, x_low + dx
            valid = (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width)
            rows.append(image_row + cy.clamp(0, height - 1) * width + cx.clamp(0, width - 1))
            weights.append(weight_y * weight_x * scale * valid)
    return torch.stack(rows, dim=-1).view(-1, 4), torch.stack(weights, dim=-1).view(-1, 4)
