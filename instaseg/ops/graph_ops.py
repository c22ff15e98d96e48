"""Ops for traced graphs (``torch.export``, ONNX): greedy NMS and RoIAlign as single nodes, and the
stable ranking the detectors' suppression returns.

instaseg's own ``nms`` and ``roi_align`` are data-dependent Python (sweeps, groups, ``tolist``):
right for eager speed, untraceable. Each is wrapped in a ``torch.library`` custom op, which
``torch.export`` keeps as one opaque node, with an eager kernel that calls instaseg's op (so an
exported program computes what the model computes): NMS here, RoIAlign next to its kernel
(:func:`instaseg.ops.roi_align.roi_align_op`, to which :func:`instaseg.ops.roi_align` hands its call
while ``torch.export`` traces). The ONNX translations to the standard operators
(``NonMaxSuppression``, ``RoiAlign``) live in :mod:`instaseg.export.ops`.

The ops live in the ``instaseg`` namespace: a saved ``torch.export`` program needs
``import instaseg.export`` (which imports this module) before loading.
"""

from __future__ import annotations

import torch
from torch import Tensor

from instaseg.ops.nms import nms as instaseg_nms

__all__ = ["batched_nms_indices", "sort_by_score"]


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


def sort_by_score(scores: Tensor, tie_keys: Tensor, limit: int) -> Tensor:
    """Indices of the ``limit`` best ``scores (K,)``, by decreasing score, ties by increasing
    ``tie_keys (K,)`` (the order instaseg's NMS returns); fewer when ``K < limit``."""
    by_key = torch.argsort(tie_keys, stable=True)
    order = torch.argsort(scores.index_select(0, by_key), descending=True, stable=True)
    return by_key.index_select(0, order)[:limit]
