"""ONNX translations of instaseg's graph ops (:mod:`instaseg.ops.graph_ops`): greedy NMS as
``NonMaxSuppression``, RoIAlign as ``RoiAlign`` (opset 16+), and the stable sort, used by
``torch.onnx.export(..., dynamo=True)`` through :data:`ONNX_TRANSLATIONS`.

Importing this module registers the ``torch.ops.instaseg.*`` ops (a saved ``torch.export``
program needs that before loading; an ONNX file needs nothing of instaseg).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from instaseg.ops.graph_ops import batched_nms_indices
from instaseg.ops.roi_align import roi_align_op

__all__ = ["batched_nms_indices", "roi_align_op", "ONNX_TRANSLATIONS"]


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
