"""Fast NMS of YOLACT (Bolya et al. 2019, Sec. 3.3), batched over classes, in pure PyTorch.

Boxes are ``(N, 4)`` absolute-pixel ``xyxy`` in continuous coordinates with IoU as in
:func:`instaseg.structures.boxes.box_iou`. The suppression pairs are listed by the sweep of
:mod:`instaseg.ops.nms` (no dense IoU matrix unless the pairs are too many to list).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from instaseg.structures.boxes import box_iou
from instaseg.ops.nms import (_chunk_elements, floor_to_dtype, _select, _suppression_edges,
                              _suppression_matrix)

__all__ = ["fast_nms", "dense_fast_nms"]


def fast_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.5,
    top_k: int = 200,
    score_threshold: float = 0.05,
    max_detections: int = 100,
    keep_below_threshold: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fast NMS of YOLACT (Bolya et al. 2019, Sec. 3.3), batched over classes.

    Per class, the ``top_k`` scores above ``score_threshold`` (ties by box index) are sorted
    descending; a detection is dropped if any higher-scored detection *of the same class*
    overlaps it with IoU ``> iou_threshold``, whether or not that one was itself dropped (the
    upper triangle of the IoU matrix, column max; that is what makes it faster than greedy
    NMS, which it approximates). The ``max_detections`` best survivors over all classes remain.
    The best entry of a class is always kept (even for a negative threshold).

    ``keep_below_threshold``: dbolya/yolact's ``Detect.fast_nms`` as its evaluation runs it
    (``second_threshold=False``). ``score_threshold`` then only picks the candidate boxes, those
    whose best class score is above it; per class the ``top_k`` best candidates enter whatever
    their score in that class, and every survivor counts, so entries at or below the threshold
    fill the result up to ``max_detections`` when fewer above it survive.

    Args:
        boxes: ``(N, 4)`` xyxy shared by all classes, or ``(C, N, 4)`` class-specific.
        scores: ``(C, N)`` per-class scores.

    Returns:
        ``box_index (K,)`` int64 into the N boxes, ``labels (K,)`` int64 in ``0..C-1`` and
        ``scores (K,)``, by decreasing score (ties by class, then by rank within the class).
    """
    if torch.compiler.is_exporting():  # a traced graph: fixed-size lists, no data-dependent sweep
        return dense_fast_nms(boxes, scores, iou_threshold, top_k, score_threshold, max_detections,
                              keep_below_threshold)
    if scores.dim() != 2 or boxes.shape[-1] != 4 or boxes.shape[-2] != scores.shape[1]:
        raise ValueError(f"expected scores (C, N) and boxes (N, 4) or (C, N, 4), got "
                         f"{tuple(scores.shape)} and {tuple(boxes.shape)}")
    score_floor = floor_to_dtype(float(score_threshold), scores.dtype)
    box_index, labels, entry_scores = _ranked_entries(scores, top_k, score_floor, keep_below_threshold)
    if boxes.dim() == 2:
        entry_boxes = boxes.index_select(0, box_index)
    else:
        entry_boxes = boxes[labels, box_index]
    keep = ~_fast_suppressed(entry_boxes, labels, float(iou_threshold))
    kept_scores, order = _select(entry_scores, keep).sort(descending=True, stable=True)
    order = order[:max_detections]
    return (_select(box_index, keep).index_select(0, order),
            _select(labels, keep).index_select(0, order), kept_scores[:max_detections])


def _ranked_entries(
    scores: Tensor, top_k: int, score_floor: float, keep_below_threshold: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Per class of ``scores (C, N)``, its ``top_k`` scores ``> score_floor``, best first; with
    ``keep_below_threshold`` its ``top_k`` scores among the boxes with any score ``> score_floor``.

    Returns ``(E,)`` box indices, labels and scores, class-major (ties by box index).
    """
    # Boxes whose best class score is below the threshold can never be kept (as YOLACT does).
    candidates = torch.nonzero((scores > score_floor).any(dim=0)).flatten()
    k = min(top_k, candidates.numel())
    if scores.shape[0] == 0 or k == 0:
        empty = torch.zeros(0, dtype=torch.long, device=scores.device)
        return empty, empty.clone(), scores.new_zeros(0)
    if candidates.numel() < scores.shape[1]:
        scores = scores.index_select(1, candidates)
    top_scores, top = _top_k_stable(scores, k)
    if keep_below_threshold:
        labels = torch.arange(scores.shape[0], device=scores.device).repeat_interleave(k)
        return candidates[top].flatten(), labels, top_scores.flatten()
    # The valid entries of each class are a prefix of its ranking.
    entry = torch.nonzero((top_scores > score_floor).flatten()).flatten()
    box_index = candidates[top].flatten().index_select(0, entry)
    labels = torch.div(entry, k, rounding_mode="floor")
    return box_index, labels, top_scores.flatten().index_select(0, entry)


def _fast_suppressed(boxes: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Fast NMS rule on ``boxes (M, 4)`` ranked within each of ``labels (M,)`` (class-major).

    Entry ``j`` is suppressed if an earlier entry of its class has IoU > threshold with it: the
    edges of the greedy NMS graph, without resolving them. Returns ``(M,)`` bool.
    """
    m, device = boxes.shape[0], boxes.device
    suppressed = torch.zeros(m, dtype=torch.uint8, device=device)
    threshold = floor_to_dtype(iou_threshold, boxes.dtype)
    if m <= 1 or not threshold < 1.0:
        return suppressed.bool()
    edges = _suppression_edges(boxes, labels, threshold) if threshold >= 0.0 else None
    if edges is not None:
        return suppressed.index_fill_(0, edges[1], 1).bool()
    # Too many pairs to list (or a negative threshold): dense, in chunks of columns.
    positions = torch.arange(m, device=device)
    for part in positions.split(max(1, _chunk_elements(device) // (2 * m))):
        hit = _suppression_matrix(boxes, boxes.index_select(0, part), labels,
                                  labels.index_select(0, part), threshold)
        hit &= positions[:, None] < part[None, :]
        suppressed.index_copy_(0, part, hit.any(dim=0).to(torch.uint8))
    return suppressed.bool()


def _top_k_stable(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest of each row of ``scores (C, M)``, descending, ties by lower column.

    Returns values and column indices ``(C, k)``. ``topk`` alone leaves tie order and, at the
    k-th value, tie membership unspecified; a full stable sort is exact but slow for large M.
    """
    if 4 * k >= scores.shape[1]:
        values, index = scores.sort(dim=1, descending=True, stable=True)
        return values[:, :k], index[:, :k]
    values, index = scores.topk(k, dim=1)
    kth = values[:, -1:]
    tied = scores == kth
    if torch.equal(tied.sum(dim=1), (values == kth).sum(dim=1)):
        # No row leaves out a value equal to its k-th: the members are exact, only the order of
        # equal values needs fixing (by column: sort by column, then stably by value).
        index = index.sort(dim=1).values
        values, order = scores.gather(1, index).sort(dim=1, descending=True, stable=True)
        return values, index.gather(1, order)
    above = scores > kth
    # Strictly larger entries all belong; the first tied columns fill the remaining places.
    room = k - above.sum(dim=1, keepdim=True)
    chosen = above | (tied & (tied.cumsum(dim=1) <= room))
    index = chosen.nonzero()[:, 1].view(-1, k)  # ascending column index within each row
    values, order = scores.gather(1, index).sort(dim=1, descending=True, stable=True)
    return values, index.gather(1, order)


def dense_fast_nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, top_k: int, score_threshold: float, max_detections: int,
    keep_below_threshold: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`fast_nms` on fixed-size lists, traceable (what it runs while ``torch.export`` traces),
    for ``boxes (N, 4)`` shared by all classes and ``scores (C, N)``: ``(box_index, labels, scores)``,
    best first, the same as :func:`fast_nms` returns.

    Per class the ``min(top_k, N)`` best boxes form the list; entries at or below the score
    threshold are invalid. They rank last in their list, so they never sit above a valid entry in
    the IoU matrix's upper triangle and cannot suppress one; they are dropped at the end.
    With ``keep_below_threshold`` (dbolya/yolact's rule) the valid entries are the candidate boxes,
    those with any class score above the threshold: the others rank last in every list (their
    scores set to -inf), and every surviving candidate counts whatever its score in the class.
    """
    k = torch.sym_min(top_k, boxes.shape[0])
    score_floor = floor_to_dtype(float(score_threshold), scores.dtype)
    if keep_below_threshold:
        candidate = (scores > score_floor).any(dim=0)  # (N,)
        ranked_scores = torch.where(candidate[None], scores, -math.inf)
        _, index = ranked_scores.topk(k, dim=1)  # (C, k), best first, candidates first
        class_scores, valid = scores.gather(1, index), candidate[index]
    else:
        class_scores, index = scores.topk(k, dim=1)  # (C, k), best first
        valid = class_scores > score_floor
    iou = box_iou(boxes[index], boxes[index])  # (C, k, k)
    upper = torch.ones(k, k, dtype=torch.bool, device=boxes.device).triu(diagonal=1)
    # Entry j is suppressed if an earlier entry i < j of its class overlaps it (column-wise any).
    suppressed = ((iou > floor_to_dtype(float(iou_threshold), boxes.dtype)) & upper).any(dim=1)
    keep = valid & ~suppressed
    flat_scores = torch.where(keep, class_scores, -math.inf).flatten()
    # Best first; ties by class, then by rank within the class (the flat class-major position).
    order = torch.argsort(flat_scores, descending=True, stable=True)[:max_detections]
    order = order[torch.nonzero(keep.flatten()[order]).flatten()]
    labels = torch.div(order, k, rounding_mode="floor")
    return index.flatten()[order], labels, class_scores.flatten()[order]
