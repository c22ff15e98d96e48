"""Per-class NMS of a detector's box branch, with an eager path (NMS only over the candidates
that can decide the result) and a traced one (one ``NonMaxSuppression`` node), tested to agree."""

from __future__ import annotations

import torch
from torch import Tensor

from instaseg.ops.graph_ops import batched_nms_indices, sort_by_score
from instaseg.ops.nms import top_batched_nms

__all__ = ["multiclass_nms"]


def multiclass_nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_keep: int
) -> tuple[Tensor, Tensor]:
    """Per-class greedy NMS over class-specific ``boxes (R, C, 4)`` with ``scores (R, C)``: the
    candidates score ``> score_threshold``; the ``max_keep`` best survivors over all classes.

    Returns ``rows (K,)`` and ``labels (K,)`` int64, by decreasing score, ties by the row-major
    position ``row * C + label``: what :func:`top_batched_nms` returns on the flattened candidates.
    While ``torch.export`` traces, one graph node (``NonMaxSuppression``) per class set instead.
    """
    num_classes = scores.shape[1]
    if torch.compiler.is_exporting():
        picked = batched_nms_indices(boxes.transpose(0, 1), scores.T, iou_threshold, score_threshold, max_keep)
        labels, rows = picked[:, 0], picked[:, 1]
        order = sort_by_score(scores[rows, labels], rows * num_classes + labels, max_keep)
        return rows[order], labels[order]
    flat_scores = scores.reshape(-1)
    candidates = torch.nonzero(flat_scores > score_threshold).flatten()
    labels = torch.arange(num_classes, device=scores.device).repeat(scores.shape[0])
    keep = top_batched_nms(boxes.reshape(-1, 4)[candidates], flat_scores[candidates], labels[candidates],
                           iou_threshold, max_keep)
    flat = candidates[keep]
    return torch.div(flat, num_classes, rounding_mode="floor"), flat % num_classes
