"""Deformable convolution v1 (Dai et al. 2017) and v2 (Zhu et al. 2019, modulated), pure PyTorch.

``deform_conv2d`` and ``DeformConv2d`` keep torchvision's signatures, defaults and semantics, so
either can replace ``torchvision.ops.deform_conv2d`` / ``torchvision.ops.DeformConv2d``.

Semantics. For output pixel ``(oy, ox)``, kernel tap ``(i, j)`` (``k = i * kw + j``) and offset
group ``g``, the input is sampled at

    y = oy * stride_h - pad_h + i * dil_h + offset[:, 2 * (g * kh * kw + k)]      (dy first)
    x = ox * stride_w - pad_w + j * dil_w + offset[:, 2 * (g * kh * kw + k) + 1]  (then dx)

in pixel-index coordinates (pixel ``(r, c)`` sits at ``y = r, x = c``), by bilinear interpolation
in which corners outside the image contribute 0 (so a sample with ``y <= -1``, ``y >= H``,
``x <= -1`` or ``x >= W`` is 0). DCNv2 multiplies each sample by ``mask[:, g * kh * kw + k]``.
Input channels are split evenly over the offset groups; ``groups`` is the ordinary grouped
convolution over the weight.

Implementation. All taps of all offset groups are sampled in one ``grid_sample`` call
(``align_corners=True`` maps the normalised grid onto pixel indices and ``padding_mode="zeros"``
reproduces the zero-corner rule above), which yields im2col columns ``(B, Cin * kh * kw, L)``
directly in the weight's ``(c, i, j)`` order; one (grouped) matmul with the weight then finishes
the convolution. Memory is that of im2col: chunked over the batch to bound it in inference, while
under autograd every chunk's columns stay saved for backward (twice im2col when the mask needs a
gradient: the sampled and the masked columns).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

from instaseg.ops._dispatch import torchvision_ops

__all__ = ["deform_conv2d", "DeformConv2d"]

IntPair = int | tuple[int, int]

# Upper bound on im2col elements built at once (~256 MiB in float32); larger batches are chunked.
_MAX_COLUMN_ELEMENTS = 1 << 26


def _pair(value: IntPair) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = (1, 1),
    padding: IntPair = (0, 0),
    dilation: IntPair = (1, 1),
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable 2-D convolution (DCNv1; DCNv2 when ``mask`` is given), like torchvision's.

    Args:
        input: ``(B, Cin, H, W)``.
        offset: ``(B, 2 * offset_groups * kh * kw, out_h, out_w)``; channel ``2 * (g * kh * kw + k)``
            is the y offset (pixels) of tap ``k = i * kw + j`` in offset group ``g``, the next
            channel the x offset. ``offset_groups`` is inferred from the channel count.
        weight: ``(Cout, Cin / groups, kh, kw)``; ``groups = Cin // weight.shape[1]``.
        bias: ``(Cout,)`` or None.
        stride, padding, dilation: int or ``(h, w)``.
        mask: ``(B, offset_groups * kh * kw, out_h, out_w)`` modulation scalars, or None (all 1).

    Returns:
        ``(B, Cout, out_h, out_w)`` with ``out_h = (H + 2 * pad_h - dil_h * (kh - 1) - 1) // stride_h + 1``.

    Dispatches to ``torchvision.ops.deform_conv2d`` when that works here (see ``_dispatch``).
    """
    tv_ops = torchvision_ops()
    if tv_ops is not None:
        return tv_ops.deform_conv2d(
            input, offset, weight, bias, _pair(stride), _pair(padding), _pair(dilation), mask
        )
    return _deform_conv2d_torch(input, offset, weight, bias, stride, padding, dilation, mask)


def _check_shapes(
    input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None, out_hw: tuple[int, int]
) -> tuple[int, int]:
    """Validate shapes like torchvision does; return ``(groups, offset_groups)``."""
    if input.dim() != 4 or offset.dim() != 4 or weight.dim() != 4:
        raise ValueError("input, offset and weight must be 4-D tensors")
    batch, in_channels = input.shape[:2]
    taps = weight.shape[2] * weight.shape[3]
    if weight.shape[1] == 0 or in_channels % weight.shape[1] != 0:
        raise ValueError(f"input channels {in_channels} not divisible by weight.shape[1] {weight.shape[1]}")
    groups = in_channels // weight.shape[1]
    if weight.shape[0] % groups != 0:
        raise ValueError(f"output channels {weight.shape[0]} not divisible by groups {groups}")
    if taps == 0 or offset.shape[1] == 0 or offset.shape[1] % (2 * taps) != 0:
        raise ValueError(f"offset channels {offset.shape[1]} must be a positive multiple of 2*kh*kw = {2 * taps}")
    offset_groups = offset.shape[1] // (2 * taps)
    if in_channels % offset_groups != 0:
        raise ValueError(f"input channels {in_channels} not divisible by offset groups {offset_groups}")
    if offset.shape[0] != batch or tuple(offset.shape[2:]) != out_hw:
        raise ValueError(f"offset shape {tuple(offset.shape)} does not match batch {batch} and output {out_hw}")
    if mask is not None:
        expected = (batch, offset_groups * taps, *out_hw)
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask shape {tuple(mask.shape)} != expected {expected}")
    if out_hw[0] < 0 or out_hw[1] < 0:
        raise ValueError(f"output size {out_hw} is negative: kernel larger than padded input")
    return groups, offset_groups


def _deform_conv2d_torch(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: IntPair = (1, 1),
    padding: IntPair = (0, 0),
    dilation: IntPair = (1, 1),
    mask: Tensor | None = None,
) -> Tensor:
    """Pure-PyTorch ``deform_conv2d`` (same arguments and result); differentiable in all tensors."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    batch, _, height, width = input.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h = (height + 2 * padding[0] - dilation[0] * (kernel_h - 1) - 1) // stride[0] + 1
    out_w = (width + 2 * padding[1] - dilation[1] * (kernel_w - 1) - 1) // stride[1] + 1
    groups, offset_groups = _check_shapes(input, offset, weight, mask, (out_h, out_w))

    if batch == 0 or out_h * out_w == 0 or height * width == 0:
        return _empty_image_result(input, offset, weight, bias, mask, (out_h, out_w))

    columns_per_image = input.shape[1] * kernel_h * kernel_w * out_h * out_w
    chunk = max(1, _MAX_COLUMN_ELEMENTS // columns_per_image)
    outputs = []
    for start in range(0, batch, chunk):
        stop = start + chunk
        columns = _sample_columns(
            input[start:stop],
            offset[start:stop],
            None if mask is None else mask[start:stop],
            (kernel_h, kernel_w),
            stride,
            padding,
            dilation,
            offset_groups,
        )
        outputs.append(_grouped_matmul(weight, columns, groups))
    out = (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)).view(batch, out_channels, out_h, out_w)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def _base_positions(
    size_out: int, kernel: int, stride: int, pad: int, dil: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Undeformed sampling coordinate along one axis: ``(kernel, size_out)``, ``o*stride - pad + i*dil``."""
    out_index = torch.arange(size_out, device=device, dtype=dtype)
    tap_index = torch.arange(kernel, device=device, dtype=dtype)
    return tap_index[:, None] * dil + (out_index[None, :] * stride - pad)


def _sampling_grid(
    offset: Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    offset_groups: int,
    size_hw: tuple[int, int],
    dtype: torch.dtype,
) -> Tensor:
    """Deformed positions as a ``grid_sample`` grid: ``(B * G, taps * out_h, out_w, 2)``, (x, y) last.

    grid_sample(align_corners=True) reads -1 as pixel index 0 and +1 as index ``size - 1``.
    """
    batch, _, out_h, out_w = offset.shape
    taps = kernel[0] * kernel[1]
    base_y = _base_positions(out_h, kernel[0], stride[0], padding[0], dilation[0], offset.device, dtype)
    base_x = _base_positions(out_w, kernel[1], stride[1], padding[1], dilation[1], offset.device, dtype)
    shape = (kernel[0], kernel[1], out_h, out_w)
    base = torch.stack(
        (base_y[:, None, :, None].expand(shape), base_x[None, :, None, :].expand(shape)), dim=2
    ).reshape(taps, 2, out_h, out_w)  # tap k = i * kw + j; (y, x) like the offset pairs
    scale = torch.tensor([2.0 / (size_hw[0] - 1), 2.0 / (size_hw[1] - 1)], dtype=dtype).to(offset.device)
    scale = scale.view(2, 1, 1)
    # (base + offset) * scale - 1 with the offset-free part folded into one small constant.
    offset = offset.reshape(batch, offset_groups, taps, 2, out_h, out_w).to(dtype)
    grid = torch.addcmul(base * scale - 1.0, offset, scale)
    return grid.flip(3).permute(0, 1, 2, 4, 5, 3).reshape(batch * offset_groups, taps * out_h, out_w, 2)


def _sample_columns(
    input: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    offset_groups: int,
) -> Tensor:
    """Bilinear im2col at the deformed positions: ``(B, Cin * kh * kw, out_h * out_w)``.

    Row ``c * kh * kw + k`` holds channel ``c`` sampled at tap ``k``, matching ``weight.flatten(1)``.
    """
    batch, in_channels, height, width = input.shape
    out_h, out_w = offset.shape[2:]
    taps = kernel[0] * kernel[1]
    if height == 1 or width == 1:
        # align_corners=True cannot normalise a size-1 axis (division by size - 1 = 0); a ring of
        # zero pixels changes no sample (outside corners are 0 anyway) and shifts indices by +1.
        pad_y, pad_x = int(height == 1), int(width == 1)
        input = F.pad(input, (pad_x, pad_x, pad_y, pad_y))
        padding = (padding[0] - pad_y, padding[1] - pad_x)
        height, width = input.shape[2:]

    # Positions and sampling in at least float32: in half precision the normalised grid alone
    # would misplace samples by up to ~0.001 * size / 2 pixels (0.1 px on a 200-pixel axis).
    dtype = torch.promote_types(torch.promote_types(input.dtype, offset.dtype), torch.float32)
    grid = _sampling_grid(offset, kernel, stride, padding, dilation, offset_groups, (height, width), dtype)

    channels_per_group = in_channels // offset_groups
    sampled = F.grid_sample(
        input.reshape(batch * offset_groups, channels_per_group, height, width).to(dtype),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    ).to(input.dtype)  # (B * G, Cg, taps * out_h, out_w)
    sampled = sampled.view(batch, offset_groups, channels_per_group, taps, out_h * out_w)
    if mask is not None:
        mask = mask.reshape(batch, offset_groups, 1, taps, out_h * out_w).to(sampled.dtype)
        if mask.requires_grad and torch.is_grad_enabled():
            sampled = sampled * mask
        else:
            # In place saves a fresh columns-sized buffer (grid_sample's backward does not reuse
            # its output, so autograd allows it); fresh large buffers cost page faults on CPU.
            sampled.mul_(mask)
    return sampled.reshape(batch, in_channels * taps, out_h * out_w)


def _grouped_matmul(weight: Tensor, columns: Tensor, groups: int) -> Tensor:
    """``weight (Cout, Cin/groups, kh, kw)`` x ``columns (B, Cin*kh*kw, L)`` -> ``(B, Cout, L)``."""
    out_channels = weight.shape[0]
    batch, rows, length = columns.shape
    if groups == 1:
        return torch.matmul(weight.reshape(out_channels, rows), columns)
    weight_g = weight.reshape(groups, out_channels // groups, rows // groups)
    out = torch.matmul(weight_g, columns.view(batch, groups, rows // groups, length))
    return out.reshape(batch, out_channels, length)


def _empty_image_result(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    out_hw: tuple[int, int],
) -> Tensor:
    """Result when nothing is sampled (empty batch, output or image): bias only, every sample 0.

    Adding the (zero) sums of empty slices keeps the result attached to every input's graph, so
    ``backward`` yields zero gradients instead of failing with "does not require grad", and stays
    finite even if some input holds inf or NaN.
    """
    out = input.new_zeros((input.shape[0], weight.shape[0], *out_hw))
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    for tensor in (input, offset, weight, mask):
        if tensor is not None:
            out = out + tensor.flatten()[:0].sum().to(out.dtype)
    return out


class DeformConv2d(nn.Module):
    """Deformable convolution layer with torchvision's signature; offsets (and mask) are inputs.

    ``forward(input (B, Cin, H, W), offset, mask=None) -> (B, Cout, out_h, out_w)``; see
    ``deform_conv2d`` for the offset/mask layout.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's (and torchvision's) default init: kaiming_uniform(a=sqrt(5)), bias U(+-1/sqrt(fan_in))."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        """``input (B, Cin, H, W)``, ``offset (B, 2*G*kh*kw, oh, ow)``, ``mask (B, G*kh*kw, oh, ow)``."""
        return deform_conv2d(
            input, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask
        )

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}"
        )
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text
