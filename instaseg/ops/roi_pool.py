"""RoIPool (Fast R-CNN, Girshick 2015) in pure PyTorch, with torchvision's exact semantics.

Kept for the RoIPool-vs-RoIAlign ablation of the Mask R-CNN paper. Unlike RoIAlign it quantises:
box corners are rounded to map pixels (``round(x * spatial_scale)``, half away from zero as C's
``round``), the RoI spans ``end - start + 1`` pixels (the legacy inclusive "+1" convention of the
op, not of our boxes), and bin ``p`` covers rows ``[floor(p * bin), ceil((p + 1) * bin))`` of it,
clipped to the map. Each bin is the max over its window; an empty window gives 0.

Vectorised by window shape: RoIs whose bins are at most ``bh x bw`` pixels share one gather of a
padded ``(oh, ow, bh, bw)`` window per RoI from the channels-last map (padding repeats the window's
last row/column, which leaves the max unchanged), then a max over each window; when a gradient is
needed the max is gathered at the window's first maximum, so the gradient goes there as in
torchvision's kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from instaseg.ops._dispatch import torchvision_ops
from instaseg.ops._utils import (
    check_roi_boxes_shape,
    convert_boxes_to_roi_format,
    group_rois,
    pair,
    reassemble_bins,
)

__all__ = ["roi_pool", "RoIPool"]

# Upper bound on gathered window values per chunk (2**24 float32 = 64 MiB of temporary memory).
_MAX_WINDOW_VALUES = 2**24


def roi_pool(
    input: Tensor,
    boxes: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoIPool with torchvision.ops.roi_pool's signature, defaults and numbers.

    Args:
        input: ``(N, C, H, W)`` feature map, any float dtype.
        boxes: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` or a list of ``(K_i, 4)`` xyxy
            tensors, one per image; image-pixel coordinates.
        output_size: ``int`` or ``(height, width)`` of the pooled output.
        spatial_scale: map pixels per image pixel (e.g. 1/16 for stride 16).

    Returns:
        ``(K, C, out_h, out_w)`` max-pooled features, in the order of the boxes.
    """
    check_roi_boxes_shape(boxes)
    rois = boxes if isinstance(boxes, Tensor) else convert_boxes_to_roi_format(boxes)
    rois = rois.to(device=input.device)
    tv_ops = torchvision_ops()
    if tv_ops is not None:  # optional compiled kernel, chosen at call time (see _dispatch.py)
        # Compiled kernels require the rois in the input's dtype.
        return tv_ops.roi_pool(input, rois.to(input.dtype), pair(output_size), spatial_scale)
    return _roi_pool_torch(input, rois, output_size, spatial_scale)


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool` (torchvision's ``RoIPool`` signature)."""

    def __init__(self, output_size: int | tuple[int, int], spatial_scale: float) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        """``input (N, C, H, W)``, ``rois (K, 5)`` or list of ``(K_i, 4)`` -> ``(K, C, oh, ow)``."""
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale})"
        )


def _roi_pool_torch(
    input: Tensor, rois: Tensor, output_size: int | Sequence[int], spatial_scale: float = 1.0
) -> Tensor:
    """Pure-PyTorch RoIPool: ``input (N, C, H, W)``, ``rois (K, 5)`` -> ``(K, C, oh, ow)``.

    Differentiable with respect to ``input`` (the gradient of a bin goes to its arg-max); no
    gradient to the boxes.
    """
    out_h, out_w = pair(output_size)
    num_rois = rois.shape[0]
    batch, channels, height, width = input.shape
    if num_rois == 0:
        # A zero-size slice of the input keeps the result attached to the autograd graph.
        return input[:0, :, :1, :1].expand(0, channels, out_h, out_w).contiguous()
    coord_dtype = torch.promote_types(input.dtype, torch.float32)
    rois = rois.detach().to(coord_dtype)
    corners = _round_half_away(rois[:, 1:5] * spatial_scale).to(torch.int64)  # x1, y1, x2, y2
    row_start, row_end = _bin_bounds(corners[:, 1], corners[:, 3], out_h, height, coord_dtype)
    col_start, col_end = _bin_bounds(corners[:, 0], corners[:, 2], out_w, width, coord_dtype)
    empty = (row_end <= row_start)[:, :, None] | (col_end <= col_start)[:, None, :]  # (K, oh, ow)
    # Window extent per RoI (at least 1, so that empty bins still gather something harmless).
    extent = torch.stack(
        [(row_end - row_start).amax(dim=1), (col_end - col_start).amax(dim=1)], dim=1
    ).clamp(min=1)
    table = input.permute(0, 2, 3, 1).contiguous().view(batch * height * width, channels)
    pixel_offset = rois[:, 0].to(torch.int64) * (height * width)
    needs_grad = torch.is_grad_enabled() and table.requires_grad

    pieces, piece_index = [], []
    for (win_h, win_w), group in group_rois(extent):
        per_roi = out_h * win_h * out_w * win_w * channels
        for chunk in group.split(max(1, _MAX_WINDOW_VALUES // per_roi)):
            rows = _window(row_start[chunk], row_end[chunk], win_h, height)  # (k, oh, win_h)
            cols = _window(col_start[chunk], col_end[chunk], win_w, width)  # (k, ow, win_w)
            k = chunk.numel()
            # Window pixels in torchvision's scan order: bin (ph, pw), then row, then column.
            flat = (
                pixel_offset[chunk].view(k, 1, 1, 1, 1)
                + rows.view(k, out_h, 1, win_h, 1) * width
                + cols.view(k, 1, out_w, 1, win_w)
            ).reshape(k * out_h * out_w, win_h * win_w)
            values = table.index_select(0, flat.view(-1)).view(-1, win_h * win_w, channels)
            pooled = _window_max(values, track_argmax=needs_grad)
            is_empty = empty[chunk].reshape(-1, 1)
            pieces.append(torch.where(is_empty, pooled.new_zeros(()), pooled))
            piece_index.append(chunk)
    return reassemble_bins(pieces, piece_index, (num_rois, out_h, out_w, channels))


def _window_max(values: Tensor, track_argmax: bool) -> Tensor:
    """Max over dim 1 of ``values (bins, L, C)`` -> ``(bins, C)``.

    With ``track_argmax`` the result is gathered at the *first* maximum of each window, so that
    the whole gradient goes there as in torchvision's kernel (a strict ">" scan); ``amax`` alone
    would split it between ties, which ReLU zeros make common. ``argmax``/``max(dim)`` over a
    middle dimension are several times slower on CPU than this ``amax`` + ``amin`` pair.
    """
    max_values = values.amax(dim=1, keepdim=True)
    if not track_argmax:
        return max_values.squeeze(1)
    window = values.shape[1]
    small = torch.int16 if window < 2**15 else torch.int32  # narrow ints halve the memory traffic
    position = torch.arange(window, device=values.device, dtype=small).view(1, window, 1)
    first = torch.where(values == max_values, position, window).amin(dim=1, keepdim=True)
    return values.gather(1, first.long()).squeeze(1)


def _round_half_away(x: Tensor) -> Tensor:
    """C ``round``: halves go away from zero (``torch.round`` rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _bin_bounds(
    start: Tensor, end: Tensor, bins: int, length: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Quantised bin windows on one axis: ``(K,)`` int corners -> ``(K, bins)`` [lo, hi) pixels."""
    roi_len = (end - start + 1).clamp(min=1)  # the op's inclusive pixel count, at least 1
    bin_size = roi_len.to(dtype)[:, None] / bins
    p = torch.arange(bins, device=start.device, dtype=dtype)
    lo = torch.floor(p * bin_size).to(torch.int64) + start[:, None]
    hi = torch.ceil((p + 1) * bin_size).to(torch.int64) + start[:, None]
    return lo.clamp(0, length), hi.clamp(0, length)


def _window(lo: Tensor, hi: Tensor, size: int, length: int) -> Tensor:
    """Pixel indices ``lo + j`` for ``j < size``, repeating ``hi - 1`` past the window's end."""
    steps = torch.arange(size, device=lo.device)
    index = torch.minimum(lo[..., None] + steps, (hi - 1)[..., None])
    return index.clamp(0, length - 1)
