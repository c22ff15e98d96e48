"""Soft-NMS (Bodla et al. 2017): ``soft_nms`` and ``batched_soft_nms``, in pure PyTorch.

Boxes are ``(N, 4)`` absolute-pixel ``xyxy`` in continuous coordinates with IoU as in
:func:`instaseg.structures.boxes.box_iou`; thresholds compare as real numbers (see
:func:`instaseg.ops.nms.floor_to_dtype`), as in :mod:`instaseg.ops.nms`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from instaseg.ops.nms import _chunk_elements, floor_to_dtype
from instaseg.structures.boxes import box_iou

__all__ = ["soft_nms", "batched_soft_nms"]

# Soft-NMS looks at this many of the best remaining boxes per round (see _soft_nms_torch).
_SOFT_NMS_ROUND = 64


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    method: str = "linear",
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017, "Improving Object Detection With One Line of Code").

    Repeatedly selects the box with the highest remaining (decayed) score, then decays the
    others by their IoU with it: ``linear``: ``s *= 1 - iou`` if ``iou > iou_threshold`` (the
    paper's N_t), else unchanged; ``gaussian``: ``s *= exp(-iou**2 / sigma)`` for all boxes.
    A box whose (decayed) score is below ``score_threshold`` is dropped and never selected.

    Args:
        boxes: ``(N, 4)`` float xyxy, absolute pixels.
        scores: ``(N,)`` non-negative scores (e.g. probabilities).

    Returns:
        ``keep (K,)`` int64 indices in selection order (decreasing decayed score; equal scores
        by index) and ``scores (K,)``, their decayed scores at selection.
    """
    return _soft_nms_torch(boxes, scores, None, iou_threshold, sigma, method, score_threshold)


def batched_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    method: str = "linear",
    score_threshold: float = 0.001,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS per category: a box only decays boxes with the same ``idxs (N,)``.

    Same arguments and returns as :func:`soft_nms`; the kept boxes of all categories come
    together by decreasing decayed score.
    """
    return _soft_nms_torch(boxes, scores, idxs, iou_threshold, sigma, method, score_threshold)


def _soft_nms_torch(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor | None,
    iou_threshold: float,
    sigma: float,
    method: str,
    score_threshold: float,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS selecting several boxes per round.

    The next box is the best remaining one. When the best remaining boxes (sorted by score,
    ties by index) leave each other's scores exactly unchanged, selecting one after another
    cannot reorder them, so a whole prefix of them is selected at once and their decays applied
    together. Rounds cost a few vector ops, and there are far fewer rounds than boxes.
    """
    boxes, scores = boxes.detach(), scores.detach()  # selection only: no gradient through Soft-NMS
    if method not in ("linear", "gaussian"):
        raise ValueError(f"method must be 'linear' or 'gaussian', got {method!r}")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"expected boxes (N, 4) and scores (N,), got {tuple(boxes.shape)}, "
                         f"{tuple(scores.shape)}")
    threshold = floor_to_dtype(float(iou_threshold), boxes.dtype)
    score_ceil = -floor_to_dtype(-float(score_threshold), scores.dtype)  # x >= it <=> x >= thr

    def factors(rows: Tensor, cols: Tensor) -> Tensor:
        return _decay_factors(boxes, idxs, rows, cols, method, threshold, sigma).to(scores.dtype)

    remaining = torch.arange(boxes.shape[0], device=boxes.device)  # ascending: ties by index
    upper = remaining[:_SOFT_NMS_ROUND, None] < remaining[None, :_SOFT_NMS_ROUND]
    current = scores.clone()
    picks, values = [remaining[:0]], [current[:0]]
    while remaining.numel() > 0:
        sorted_scores, order = current.sort(descending=True, stable=True)
        head = order[:_SOFT_NMS_ROUND]
        head_boxes = remaining.index_select(0, head)
        # A head box may join the round if no earlier head box changes its score.
        changed = factors(head_boxes, head_boxes) != 1
        touched = (changed & upper[: head.numel(), : head.numel()]).any(dim=0)
        touched |= sorted_scores[: head.numel()] < score_ceil  # below the threshold: stop there
        count = int(torch.cat((touched, touched.new_ones(1))).int().argmax())
        if count == 0:
            break
        chosen = head[:count]
        picks.append(remaining.index_select(0, chosen))
        values.append(current.index_select(0, chosen))
        rest = torch.ones_like(remaining, dtype=torch.bool).index_fill_(0, chosen, False)
        rest = torch.nonzero(rest).flatten()  # keeps `remaining` ascending
        remaining, current = remaining.index_select(0, rest), current.index_select(0, rest)
        # Column chunks keep each (count, M) decay block small (see _chunk_elements).
        step = max(1, _chunk_elements(boxes.device) // (2 * count))
        decay = [factors(picks[-1], part).prod(dim=0) for part in remaining.split(step)]
        current = current * torch.cat(decay) if decay else current
    return torch.cat(picks), torch.cat(values)


def _decay_factors(
    boxes: Tensor,
    idxs: Tensor | None,
    rows: Tensor,
    cols: Tensor,
    method: str,
    threshold: float,
    sigma: float,
) -> Tensor:
    """Soft-NMS factors ``(R, M)`` by which selected boxes ``rows`` decay the scores of ``cols``."""
    iou = box_iou(boxes.index_select(0, rows), boxes.index_select(0, cols))
    if method == "linear":
        factor = torch.where(iou > threshold, 1.0 - iou, 1.0)
    else:
        # exp(-iou^2 / sigma) written with exp2: the same values (to rounding), and exp2 stays
        # on one thread for small inputs, where exp splits even a few values across threads.
        factor = torch.exp2(iou * iou * (-1.0 / (sigma * math.log(2.0))))
    if idxs is not None:
        same = idxs.index_select(0, rows)[:, None] == idxs.index_select(0, cols)[None, :]
        factor = torch.where(same, factor, 1.0)
    return factor
