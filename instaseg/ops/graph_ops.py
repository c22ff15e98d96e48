"""Ops for traced graphs (``torch.export``, ONNX): greedy NMS and RoIAlign as single nodes, and the
stable ranking the detectors' suppression returns.

instaseg's own ``nms`` and ``roi_align`` are data-dependent Python (sweeps, groups, ``tolist``):
right for eager speed, untraceable. Each is wrapped here in a ``torch.library`` custom op, which
``torch.export`` keeps as one opaque node, with an eager kernel that calls instaseg's op (so an
exported program computes what the model computes). :func:`instaseg.ops.roi_align` hands its call
to :func:`roi_align_op` while ``torch.export`` traces; the ONNX translations to the standard
operators (``NonMaxSuppression``, ``RoiAlign``) live in :mod:`instaseg.export.ops`.

The ops live in the ``instaseg`` namespace: a saved ``torch.export`` program needs
``import instaseg.export`` (which imports this module) before loading.
"""

from __future__ import annotations

import torch
from torch import Tensor

from instaseg.ops.nms import nms as instaseg_nms

__all__ = ["batched_nms_indices", "roi_align_op", "sort_by_score"]


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
    from instaseg.ops.roi_align import roi_align_kernel  # roi_align hands traced calls to this op

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


def sort_by_score(scores: Tensor, tie_keys: Tensor, limit: int) -> Tensor:
    """Indices of the ``limit`` best ``scores (K,)``, by decreasing score, ties by increasing
    ``tie_keys (K,)`` (the order instaseg's NMS returns); fewer when ``K < limit``."""
    by_key = torch.argsort(tie_keys, stable=True)
    order = torch.argsort(scores.index_select(0, by_key), descending=True, stable=True)
    return by_key.index_select(0, order)[:limit]
