"""RoIAlign (Mask R-CNN, He et al. 2017) in pure PyTorch, with torchvision's exact semantics.

Frames: ``input (N, C, H, W)`` is a feature map whose pixel ``(i, j)`` covers the continuous square
``[j, j+1] x [i, i+1]`` of the map; boxes are in input-image pixels and are multiplied by
``spatial_scale`` to reach the map. Each output bin averages a ``grid_h x grid_w`` lattice of
bilinear samples placed at the centres of equal sub-cells of the bin.

Speed: a bin's value is a fixed linear combination of map pixels (4 bilinear neighbours per sample,
each weighted by its bilinear weight / number of samples). We build those (pixel row, weight) taps
for all bins with a few vectorised tensor ops, then one ``F.embedding_bag(mode="sum")`` call over
the channels-last map gathers contiguous C-vectors and sums them: a fused gather + weighted sum
whose backward is a scatter-add. RoIs are grouped by sampling lattice only when the sampling ratio
is adaptive. Clamping and zeroing follow torchvision's CPU kernel line by line. The largest fixed
cost is making the map channels-last (one copy of it); a map already in ``torch.channels_last``
memory format skips that copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.ops._dispatch import torchvision_ops
from instaseg.ops._utils import (
    check_roi_boxes_shape,
    convert_boxes_to_roi_format,
    group_rois,
    pair,
    reassemble_bins,
)

__all__ = ["roi_align", "roi_align_op", "RoIAlign"]

# Upper bound on bilinear taps (index + weight pairs) built per call: bounds their memory (2**22
# taps: at most 32 MiB of indices + 16 MiB of weights) while keeping calls large enough.
_MAX_TAPS = 2**22
# Below this many gathered values (taps x channels), a plain gather + sum beats embedding_bag.
_SMALL_PROBLEM = 2**18


def roi_align(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign with torchvision.ops.roi_align's signature, defaults and numbers.

    Args:
        input: ``(N, C, H, W)`` feature map, any float dtype.
        boxes: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` or a list of ``(K_i, 4)`` xyxy
            tensors, one per image; image-pixel coordinates.
        output_size: ``int`` or ``(height, width)`` of the pooled output.
        spatial_scale: map pixels per image pixel (e.g. 1/16 for stride 16).
        sampling_ratio: samples per bin along each axis; ``<= 0`` means adaptive,
            ``ceil(roi_h / out_h)`` by ``ceil(roi_w / out_w)`` per RoI.
        aligned: ``True`` shifts box corners by -0.5 map pixel so sample centres line up with pixel
            centres (Detectron2's fix); ``False`` is the legacy op, whose RoIs are at least 1x1.

    Returns:
        ``(K, C, out_h, out_w)`` pooled features, in the order of the boxes.
    """
    check_roi_boxes_shape(boxes)
    rois = boxes if isinstance(boxes, Tensor) else convert_boxes_to_roi_format(boxes)
    rois = rois.to(device=input.device)
    if torch.compiler.is_exporting():  # one graph node (ONNX RoiAlign) rather than the traced kernel
        out_h, out_w = pair(output_size)
        return roi_align_op(input, rois, spatial_scale, out_h, out_w, sampling_ratio, aligned)
    return roi_align_kernel(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


def roi_align_kernel(
    input: Tensor, rois: Tensor, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """:func:`roi_align`'s eager computation on ``rois (K, 5)`` (the kernel of its graph op)."""
    tv_ops = torchvision_ops()
    if tv_ops is not None:  # optional compiled kernel, chosen at call time (see _dispatch.py)
        # Compiled kernels require the rois in the input's dtype.
        return tv_ops.roi_align(
            input, rois.to(input.dtype), pair(output_size), spatial_scale, sampling_ratio, aligned
        )
    return _roi_align_torch(input, rois, output_size, spatial_scale, sampling_ratio, aligned)


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (torchvision's ``RoIAlign`` signature)."""

    def __init__(
        self,
        output_size: int | tuple[int, int],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = False,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        """``input (N, C, H, W)``, ``rois (K, 5)`` or list of ``(K_i, 4)`` -> ``(K, C, oh, ow)``."""
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned})"
        )


def _roi_align_torch(
    input: Tensor,
    rois: Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Pure-PyTorch RoIAlign: ``input (N, C, H, W)``, ``rois (K, 5)`` -> ``(K, C, oh, ow)``.

    Differentiable with respect to ``input``; like torchvision's kernel it gives no gradient to the
    boxes.
    """
    out_h, out_w = pair(output_size)
    num_rois = rois.shape[0]
    batch, channels, height, width = input.shape
    if num_rois == 0:
        # A zero-size slice of the input keeps the result attached to the autograd graph.
        return input[:0, :, :1, :1].expand(0, channels, out_h, out_w).contiguous()
    # Box arithmetic in at least float32, as the kernel does it in the input's type T.
    coord_dtype = torch.promote_types(input.dtype, torch.float32)
    rois = rois.detach().to(coord_dtype)
    starts, sizes = _roi_frames(rois, spatial_scale, aligned)
    if sampling_ratio > 0:
        everything = torch.arange(num_rois, device=rois.device)
        groups = [((sampling_ratio, sampling_ratio), everything)]
    else:
        # Adaptive lattice, as torchvision: ceil(roi_size / output_size) samples per bin and axis.
        grid_hw = torch.ceil(sizes / sizes.new_tensor([out_h, out_w])).to(torch.int64)
        groups = group_rois(grid_hw.clamp(min=0))
    # Channels-last rows: one contiguous C-vector per map pixel, for all images of the batch.
    table = input.permute(0, 2, 3, 1).contiguous().view(batch * height * width, channels)
    # int32 rows make embedding_bag's backward (a sort of the rows) noticeably faster.
    index_dtype = torch.int32 if table.shape[0] < 2**31 else torch.int64
    row_offset = rois[:, 0].to(torch.int64) * (height * width)

    pieces, piece_index = [], []
    for (grid_h, grid_w), group in groups:
        taps_per_roi = out_h * out_w * 4 * max(grid_h * grid_w, 0)
        for chunk in group.split(max(1, _MAX_TAPS // max(taps_per_roi, 1))):
            index, weight = _bilinear_taps(
                starts[chunk], sizes[chunk], row_offset[chunk], (out_h, out_w),
                (max(grid_h, 0), max(grid_w, 0)), (height, width),
            )
            pieces.append(_weighted_bags(table, index.to(index_dtype), weight.to(table.dtype)))
            piece_index.append(chunk)
    return reassemble_bins(pieces, piece_index, (num_rois, out_h, out_w, channels))


def _weighted_bags(table: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """Row ``i`` of the result is ``sum_j weight[i, j] * table[index[i, j]]``: ``(B, L) -> (B, C)``.

    One bag per output bin. ``F.embedding_bag`` fuses the gather and the weighted sum (its backward
    scatters the gradient back to the rows); small problems use a plain gather + sum instead,
    because embedding_bag always enters a parallel region, which costs milliseconds per call when
    the cores are busy.
    """
    bags, bag_size = index.shape
    if bag_size == 0 or bags * bag_size * table.shape[1] <= _SMALL_PROBLEM:
        # Also covers empty lattices (adaptive sampling of an empty aligned box), where the kernel
        # outputs 0: the sum over no samples is 0 and stays attached to the autograd graph.
        values = table.index_select(0, index.reshape(-1)).view(bags, bag_size, table.shape[1])
        return (values * weight.unsqueeze(-1)).sum(dim=1)
    return F.embedding_bag(index, table, mode="sum", per_sample_weights=weight)


def _roi_frames(rois: Tensor, spatial_scale: float, aligned: bool) -> tuple[Tensor, Tensor]:
    """``(K, 5)`` rois -> ``starts (K, 2)`` (y1, x1) and ``sizes (K, 2)`` (h, w) in map pixels."""
    offset = 0.5 if aligned else 0.0
    corners = rois[:, 1:5] * spatial_scale - offset  # x1, y1, x2, y2
    starts = corners[:, [1, 0]]
    sizes = corners[:, [3, 2]] - starts
    if not aligned:
        sizes = sizes.clamp(min=1.0)  # legacy: force malformed RoIs to be at least 1x1
    return starts, sizes


def _bilinear_taps(
    starts: Tensor,
    sizes: Tensor,
    row_offset: Tensor,
    output_size: tuple[int, int],
    grid_size: tuple[int, int],
    map_size: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Table rows and weights of every bilinear neighbour of every sample of ``k`` RoIs.

    Returns ``index`` (int64) and ``weight``, both ``(k * oh * ow, grid_h * grid_w * 4)``: one row
    per output bin, already divided by the number of samples so that a plain sum is the average.
    """
    (out_h, out_w), (grid_h, grid_w), (height, width) = output_size, grid_size, map_size
    y_lo, y_hi, wy_lo, wy_hi = _axis_taps(starts[:, 0], sizes[:, 0], out_h, grid_h, height)
    x_lo, x_hi, wx_lo, wx_hi = _axis_taps(starts[:, 1], sizes[:, 1], out_w, grid_w, width)
    k = starts.shape[0]
    # Axis layout: (k, out_h, out_w, grid_h, grid_w, 2 y-neighbours, 2 x-neighbours).
    y_rows = torch.stack([y_lo, y_hi], dim=-1).view(k, out_h, 1, grid_h, 1, 2, 1) * width
    x_cols = torch.stack([x_lo, x_hi], dim=-1).view(k, 1, out_w, 1, grid_w, 1, 2)
    wy = torch.stack([wy_lo, wy_hi], dim=-1).view(k, out_h, 1, grid_h, 1, 2, 1) / (grid_h * grid_w)
    wx = torch.stack([wx_lo, wx_hi], dim=-1).view(k, 1, out_w, 1, grid_w, 1, 2)
    index = (y_rows + row_offset.view(k, 1, 1, 1, 1, 1, 1)) + x_cols
    weight = wy * wx
    bag = grid_h * grid_w * 4
    return index.reshape(k * out_h * out_w, bag), weight.reshape(k * out_h * out_w, bag)


def _axis_taps(
    start: Tensor, size: Tensor, bins: int, grid: int, length: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear neighbours along one axis for ``k`` RoIs -> four ``(k, bins * grid)`` tensors.

    Sample ``i`` of bin ``p`` sits at ``start + p * bin + (i + 0.5) * bin / grid`` (torchvision's
    placement). As in its kernel, a sample outside ``[-1, length]`` contributes 0, the others are
    clamped to ``[0, length - 1]``, and at the last pixel both neighbours are that pixel.
    Returns ``(low, high)`` int64 pixel indices and their ``(weight_low, weight_high)``.
    """
    bin_size = (size / bins)[:, None]
    bin_index = torch.arange(bins, device=start.device, dtype=start.dtype).repeat_interleave(grid)
    sub_index = torch.arange(grid, device=start.device, dtype=start.dtype).repeat(bins)
    pos = start[:, None] + bin_index * bin_size + (sub_index + 0.5) * bin_size / grid
    inside = (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(0.0, length - 1.0)
    low = pos.floor()
    frac = pos - low
    low = low.to(torch.int64)
    high = (low + 1).clamp(max=length - 1)
    zero = frac.new_zeros(())
    return low, high, torch.where(inside, 1.0 - frac, zero), torch.where(inside, frac, zero)


@torch.library.custom_op("instaseg::roi_align", mutates_args=())
def roi_align_op(
    features: Tensor,
    rois: Tensor,
    spatial_scale: float,
    output_height: int,
    output_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """:func:`instaseg.ops.roi_align` as one node: ``features (N, C, H, W)``, ``rois (K, 5)``
    ``[batch_index, x1, y1, x2, y2]`` in image pixels -> ``(K, C, output_height, output_width)``."""
    pooled = roi_align_kernel(features, rois, (output_height, output_width), spatial_scale, sampling_ratio, aligned)
    # With no RoIs the eager op returns an empty view of `features`; a custom op may not alias.
    return pooled.clone() if pooled.numel() == 0 else pooled


@roi_align_op.register_fake
def _(
    features: Tensor,
    rois: Tensor,
    spatial_scale: float,
    output_height: int,
    output_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    return features.new_empty((rois.shape[0], features.shape[1], output_height, output_width))
