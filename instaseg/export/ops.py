"""Export-only custom ops: greedy NMS and RoIAlign as single graph nodes.

instaseg's own ``nms`` and ``roi_align`` are data-dependent Python (sweeps, groups, ``tolist``):
right for eager speed, untraceable. Here each is wrapped in a ``torch.library`` custom op, which
``torch.export`` keeps as one opaque node, with

* an eager kernel that calls instaseg's op (so the exported program computes what the model
  computes, and TorchScript / ``torch.export`` programs run it as it is), and
* an ONNX translation to the standard operator with the same meaning (``NonMaxSuppression``,
  ``RoiAlign`` of opset 16+), used by ``torch.onnx.export(..., dynamo=True)`` through
  :data:`ONNX_TRANSLATIONS`.

The ops live in the ``instaseg`` namespace: a saved TorchScript or ``torch.export`` program needs
``import instaseg.export`` before loading (an ONNX file needs nothing of instaseg).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from instaseg.ops.nms import nms as instaseg_nms
from instaseg.ops.roi_align import roi_align as instaseg_roi_align

__all__ = ["batched_nms_indices", "roi_align_op", "ONNX_TRANSLATIONS"]


@torch.library.custom_op("instaseg::batched_nms_indices", mutates_args=())
def batched_nms_indices(
    boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_per_batch: int
) -> Tensor:
    """Greedy NMS run independently on each of ``B`` box sets: ONNX ``NonMaxSuppression``.

    Args:
        boxes: ``(B, N, 4)`` xyxy (row ``b`` is one independent set, e.g. one class's boxes).
        scores: ``(B, N)``; only entries ``> score_threshold`` take part.
        iou_threshold: suppress IoU ``> iou_threshold`` (as :func:`instaseg.ops.nms`).
        max_per_batch: keep at most this many per set (the best ones).

    Returns:
        ``(K, 2)`` int64 rows ``[b, n]``: set-major, by decreasing score within a set (ties by
        lower ``n``), which is the order of ONNX ``NonMaxSuppression``'s selected indices.
    """
    rows = []
    for b in range(boxes.shape[0]):
        candidates = torch.nonzero(scores[b] > score_threshold).flatten()
        keep = instaseg_nms(boxes[b, candidates], scores[b, candidates], iou_threshold)[:max_per_batch]
        picked = candidates[keep]
        rows.append(torch.stack((torch.full_like(picked, b), picked), dim=1))
    if not rows:
        return torch.zeros(0, 2, dtype=torch.int64, device=boxes.device)
    return torch.cat(rows)


@batched_nms_indices.register_fake
def _(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_per_batch: int) -> Tensor:
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count, 2), dtype=torch.int64)


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
    pooled = instaseg_roi_align(features, rois, (output_height, output_width), spatial_scale, sampling_ratio, aligned)
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


# ---------------------------------------------------------------------------------------- ONNX
def _onnx_batched_nms_indices(boxes, scores, iou_threshold: float, score_threshold: float, max_per_batch: int):
    """``NonMaxSuppression`` with one class per batch entry: ``(K, 3)`` -> columns [batch, box]."""
    from onnxscript import opset18 as op

    # NonMaxSuppression compares IoU > iou_threshold and score > score_threshold, like the eager op.
    selected = op.NonMaxSuppression(
        boxes,
        op.Unsqueeze(scores, [1]),  # (B, 1, N): a single class per batch entry
        op.Constant(value_ints=[max_per_batch]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
    )
    return op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)


def _onnx_roi_align(
    features, rois, spatial_scale: float, output_height: int, output_width: int, sampling_ratio: int, aligned: bool
):
    """ONNX ``RoiAlign`` (opset 16 semantics): ``half_pixel`` is ``aligned=True``."""
    from onnxscript import INT64
    from onnxscript import opset18 as op

    batch_index = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=INT64.dtype)
    return op.RoiAlign(
        features,
        op.Slice(rois, [1], [5], [1]),
        batch_index,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
        mode="avg",
        output_height=output_height,
        output_width=output_width,
        # ONNX and torchvision both read 0 as adaptive (ceil(roi_size / output_size)); instaseg
        # reads any value <= 0 that way.
        sampling_ratio=max(sampling_ratio, 0),
        spatial_scale=spatial_scale,
    )


def _onnx_sort_stable(self, stable: bool | None = None, dim: int = -1, descending: bool = False):
    """``aten.sort.stable`` (no translation ships for this overload) as ``TopK`` over the whole axis:
    ONNX ``TopK`` puts equal values in index order, which is what a stable sort does."""
    from onnxscript import opset18 as op

    size = op.Reshape(op.Gather(op.Shape(self), op.Constant(value_int=dim), axis=0), op.Constant(value_ints=[1]))
    return op.TopK(self, size, axis=dim, largest=descending, sorted=True)


ONNX_TRANSLATIONS: dict[Callable, Callable] = {
    torch.ops.instaseg.batched_nms_indices.default: _onnx_batched_nms_indices,
    torch.ops.instaseg.roi_align.default: _onnx_roi_align,
    torch.ops.aten.sort.stable: _onnx_sort_stable,
}
