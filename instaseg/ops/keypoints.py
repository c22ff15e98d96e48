"""Keypoint heatmaps back to image keypoints: ``(R, K, m, m)`` logits + RoIs -> ``(R, K, 3)`` (x, y, score).

Detectron2's ``heatmaps_to_keypoints`` (``structures/keypoints.py``), which torchvision's
``roi_heads.heatmaps_to_keypoints`` repeats for the locations: each RoI's maps are resized with
bicubic interpolation (``align_corners=False``) to the RoI's ``ceil(h) x ceil(w)`` pixels (width
and height at least 1), the arg-max cell ``(i, j)`` of each map (the first one on ties) is taken,
and its centre goes back to the image as ``x = x1 + (j + 0.5) * w / ceil(w)`` (``y`` likewise) —
Heckbert's ``c = d + 0.5``, the inverse of the target discretisation in
``instaseg.targets.keypoints``. The bicubic resize is the peers' only sub-pixel refinement: the
peak is found on a grid of about one image pixel rather than of ``w / m`` pixels.

Scores (``score``):

* ``"logit"``: the resized map's logit at the peak — torchvision's ``keypoints_scores`` and the
  ``logit`` column Detectron2 computes;
* ``"detectron2"``: what Detectron2 returns in ``pred_keypoints``: ``exp(peak - peak) /
  sum(exp(map - peak))`` with the sum over the *unresized* ``m x m`` map, i.e.
  ``1 / sum(exp(map - peak))``: a softmax probability whose normaliser does not grow with the RoI's
  size (positive; can exceed 1 where the bicubic peak overshoots the map's maximum).

The locations are the same in both modes.

Two paths, chosen at call time: eager inference resizes each RoI's maps with ``F.interpolate`` (a
loop over RoIs: the sizes differ); while ``torch.export`` traces, :func:`heatmaps_to_keypoints_ragged`
evaluates the same bicubic rule at every RoI pixel at once, the pixels of all RoIs packed in one
ragged index (its total size data-dependent). Both give the locations of the float64 reference in
``tests/ops/test_keypoints.py``; in float32 they differ only by rounding (PyTorch's CPU kernel
fuses multiply-adds, so no sequence of tensor operations reproduces it bit for bit): scores by a
few units in the last place and a location only where two pixels' values tie within that.
The ragged path is not the eager one because it is slower and larger: on 100 RoIs of 50-300 px,
K = 17, m = 56 (2.9 M pixels per map) it took about 3 x the loop's time on 2 CPU threads, and it
holds a few ``K x sum(RoI areas)`` float tensors at once, where the loop holds one RoI's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KEYPOINT_SCORES", "heatmaps_to_keypoints", "heatmaps_to_keypoints_ragged"]

KEYPOINT_SCORES = ("logit", "detectron2")


def heatmaps_to_keypoints(heatmaps: Tensor, rois: Tensor, score: str = "logit") -> Tensor:
    """Keypoints of ``heatmaps (R, K, m, m)`` logits predicted over ``rois (R, 4)`` xyxy image pixels.

    Returns ``(R, K, 3)`` ``(x, y, score)`` in the RoIs' frame (continuous coordinates), in float32
    or the heatmaps' dtype if wider (half-precision heatmaps are decoded in float32: pixel
    coordinates do not fit a 16-bit float); ``score`` is ``"logit"`` or ``"detectron2"`` (module
    docstring). No gradient flows (inference only).
    """
    if torch.compiler.is_exporting():  # a traced graph: no loop over a data-dependent number of RoIs
        return heatmaps_to_keypoints_ragged(heatmaps, rois, score)
    _check_arguments(heatmaps, rois, score)
    dtype = torch.promote_types(heatmaps.dtype, torch.float32)
    heatmaps = heatmaps.detach().to(dtype)
    rois = rois.detach().to(dtype)
    num_rois, num_keypoints = heatmaps.shape[:2]
    out = heatmaps.new_zeros(num_rois, num_keypoints, 3)
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    keypoint = torch.arange(num_keypoints, device=heatmaps.device)
    for i, (width, height) in enumerate(zip(widths.tolist(), heights.tolist())):
        out_w, out_h = math.ceil(width), math.ceil(height)
        resized = F.interpolate(heatmaps[i : i + 1], size=(out_h, out_w), mode="bicubic", align_corners=False)[0]
        peak = resized.reshape(num_keypoints, -1).argmax(dim=1)  # the first maximum, as the peers
        col, row = peak % out_w, peak // out_w
        out[i, :, 0] = rois[i, 0] + (col.to(out.dtype) + 0.5) * (widths[i] / out_w)
        out[i, :, 1] = rois[i, 1] + (row.to(out.dtype) + 0.5) * (heights[i] / out_h)
        peak_value = resized[keypoint, row, col]
        if score == "logit":
            out[i, :, 2] = peak_value
        else:
            out[i, :, 2] = 1.0 / (heatmaps[i] - peak_value[:, None, None]).exp().sum(dim=(1, 2))
    return out


def heatmaps_to_keypoints_ragged(heatmaps: Tensor, rois: Tensor, score: str = "logit") -> Tensor:
    """:func:`heatmaps_to_keypoints` without a loop over RoIs (what ``torch.export`` traces).

    ``heatmaps (R, K, m, m)``, ``rois (R, 4)`` -> ``(R, K, 3)``, the same rule: every RoI's
    ``ceil(h) x ceil(w)`` pixels are packed in one flat index of ``P = sum ceil(h) * ceil(w)``
    entries; the separable bicubic resize is evaluated there (columns, then rows), and each map's
    first maximum in row-major order is found by two segment reductions (``amax``, then the
    smallest pixel index reaching it). Memory: a few ``(P, K)`` tensors.
    """
    _check_arguments(heatmaps, rois, score)
    dtype = torch.promote_types(heatmaps.dtype, torch.float32)
    heatmaps = heatmaps.detach().to(dtype)
    rois = rois.detach().to(dtype)
    num_rois, num_keypoints, map_h, map_w = heatmaps.shape
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    out_w, out_h = widths.ceil().long(), heights.ceil().long()  # (R,) each at least 1
    # Columns: (sum out_w, K * m) maps resized along x only, each row one RoI column.
    col_roi, col = _ragged_index(out_w)
    col_index, col_weight = _bicubic_taps(col, out_w[col_roi], map_w, dtype)
    per_column = heatmaps.permute(0, 3, 1, 2).reshape(num_rois * map_w, num_keypoints * map_h)
    columns = _weighted_rows(per_column, col_roi[:, None] * map_w + col_index, col_weight)
    # Rows of every RoI pixel: (P, K), pixel p of RoI r at (y, x) row-major within the RoI.
    row_roi, row = _ragged_index(out_h)
    row_index, row_weight = _bicubic_taps(row, out_h[row_roi], map_h, dtype)
    pixel_roi, pixel = _ragged_index(out_w * out_h)
    y = torch.div(pixel, out_w[pixel_roi], rounding_mode="floor")
    x = pixel - y * out_w[pixel_roi]
    global_row = (out_h.cumsum(0) - out_h)[pixel_roi] + y
    global_col = (out_w.cumsum(0) - out_w)[pixel_roi] + x
    per_row = columns.view(-1, num_keypoints, map_h).transpose(1, 2).reshape(-1, num_keypoints)
    values = _weighted_rows(per_row, global_col[:, None] * map_h + row_index[global_row], row_weight[global_row])
    # Each map's maximum, then the first pixel (row-major, as argmax) that reaches it.
    segment = pixel_roi[:, None].expand_as(values)
    peak_value = values.new_full((num_rois, num_keypoints), -math.inf).scatter_reduce(0, segment, values, "amax")
    candidate = torch.where(values == peak_value[pixel_roi], pixel[:, None], pixel.numel())
    no_peak = torch.full((num_rois, num_keypoints), pixel.numel(), dtype=torch.long, device=values.device)
    peak = no_peak.scatter_reduce(0, segment, candidate, "amin")
    peak_col = peak % out_w[:, None]
    peak_row = torch.div(peak, out_w[:, None], rounding_mode="floor")
    keypoint_x = rois[:, 0:1] + (peak_col.to(dtype) + 0.5) * (widths / out_w.to(dtype))[:, None]
    keypoint_y = rois[:, 1:2] + (peak_row.to(dtype) + 0.5) * (heights / out_h.to(dtype))[:, None]
    if score == "logit":
        keypoint_score = peak_value
    else:
        keypoint_score = 1.0 / (heatmaps - peak_value[:, :, None, None]).exp().sum(dim=(2, 3))
    return torch.stack((keypoint_x, keypoint_y, keypoint_score), dim=2)


def _check_arguments(heatmaps: Tensor, rois: Tensor, score: str) -> None:
    if score not in KEYPOINT_SCORES:
        raise ValueError(f"unknown keypoint score {score!r}, expected one of {KEYPOINT_SCORES}")
    shapes = f"need heatmaps (R, K, m, m) and rois (R, 4), got {tuple(heatmaps.shape)}, {tuple(rois.shape)}"
    if heatmaps.dim() != 4 or rois.dim() != 2 or rois.shape[1] != 4:
        raise ValueError(shapes)
    if torch.compiler.is_exporting():
        # Symbolic counts (R of the RoI pooler's pieces, R of the detections): tell the tracer they agree.
        torch._check(heatmaps.shape[0] == rois.shape[0])
    elif heatmaps.shape[0] != rois.shape[0]:
        raise ValueError(shapes)


def _ragged_index(lengths: Tensor) -> tuple[Tensor, Tensor]:
    """``lengths (R,)`` int64, each at least 1 -> ``(segment (T,), position (T,))`` over the
    ``T = sum(lengths)`` entries of the segments laid end to end.

    Built from a scatter and a cumulative sum (a ``repeat_interleave`` becomes an ``R x T`` matrix
    in ONNX); ``T`` is data-dependent, a symbolic size in a traced graph.
    """
    total = lengths.sum().item()
    starts = lengths.cumsum(0) - lengths
    marks = torch.zeros(total, dtype=torch.long, device=lengths.device)
    segment = marks.scatter_add(0, starts, torch.ones_like(starts)).cumsum(0) - 1
    position = torch.arange(total, device=lengths.device) - starts[segment]
    return segment, position


def _bicubic_taps(position: Tensor, out_size: Tensor, in_size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Source indices and weights ``(T, 4)`` of output ``position (T,)`` along an axis resized from
    ``in_size`` to ``out_size (T,)``: PyTorch's bicubic rule (``upsample_bicubic2d``,
    ``align_corners=False``): source ``(i + 0.5) * in / out - 0.5``, Keys' cubic convolution with
    A = -0.75 on the four nearest source indices, clamped to ``[0, in_size - 1]`` (border repeated)."""
    source = in_size / out_size.to(dtype) * (position.to(dtype) + 0.5) - 0.5
    base = source.floor()
    t = source - base
    weight = torch.stack((_cubic_far(t + 1), _cubic_near(t), _cubic_near(1 - t), _cubic_far(2 - t)), dim=1)
    offsets = torch.arange(-1, 3, device=position.device)
    return (base.long()[:, None] + offsets).clamp(0, in_size - 1), weight


_CUBIC_A = -0.75  # PyTorch's (and OpenCV's) bicubic constant


def _cubic_near(t: Tensor) -> Tensor:
    """Keys' cubic convolution for ``|t| <= 1``."""
    return ((_CUBIC_A + 2) * t - (_CUBIC_A + 3)) * t * t + 1


def _cubic_far(t: Tensor) -> Tensor:
    """Keys' cubic convolution for ``1 < |t| < 2``."""
    return ((_CUBIC_A * t - 5 * _CUBIC_A) * t + 8 * _CUBIC_A) * t - 4 * _CUBIC_A


def _weighted_rows(table: Tensor, index: Tensor, weight: Tensor) -> Tensor:
    """``sum_j weight[:, j] * table[index[:, j]]``: ``table (S, C)``, ``index``/``weight (T, 4)`` -> ``(T, C)``."""
    out = table.index_select(0, index[:, 0]) * weight[:, 0:1]
    for j in range(1, index.shape[1]):
        out = out + table.index_select(0, index[:, j]) * weight[:, j : j + 1]
    return out
