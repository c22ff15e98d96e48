"""From raw head outputs to boxes: RPN proposal selection and the box branch's detections.

Both run one image at a time with instaseg's ops, which take their traceable paths (graph NMS
nodes, symbolic sizes) while ``torch.export`` traces: the exported graph runs these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from instaseg.ops.graph_ops import batched_nms_indices, sort_by_score
from instaseg.ops.multiclass_nms import multiclass_nms
from instaseg.ops.soft_nms import batched_soft_nms
from instaseg.structures.boxes import BoxCoder, clip_boxes_to_image
from instaseg.structures.image_list import size_tensor

__all__ = ["Detections", "select_proposals", "detect_boxes"]


def select_proposals(
    anchors: list[Tensor],
    objectness_logits: list[Tensor],
    anchor_deltas: list[Tensor],
    image_sizes: list[tuple[int, int]],
    box_coder: BoxCoder,
    pre_nms_topk: int,
    post_nms_topk: int,
    nms_thresh: float,
    min_box_size: float = 0.0,
) -> list[Tensor]:
    """RPN proposals per image: ``(R_i, 4)`` xyxy sorted by objectness.

    Per FPN level the ``pre_nms_topk`` best anchors are decoded (only those: decoding every anchor
    is wasted work), clipped and filtered; NMS at ``nms_thresh`` runs per level, and the
    ``post_nms_topk`` best survivors are kept per image (not per batch).

    ``anchors``: per level ``(A_l, 4)``; ``objectness_logits``: per level ``(B, A_l)``;
    ``anchor_deltas``: per level ``(B, A_l, 4)``.
    """
    batch = objectness_logits[0].shape[0]
    boxes_per_level, scores_per_level = [], []
    for level_anchors, logits, deltas in zip(anchors, objectness_logits, anchor_deltas):
        k = torch.sym_min(pre_nms_topk, logits.shape[1])
        scores, index = logits.topk(k, dim=1)  # (B, k), sorted
        picked_deltas = deltas.gather(1, index[..., None].expand(-1, -1, 4))
        picked_anchors = level_anchors[index]  # (B, k, 4)
        decoded = box_coder.decode(picked_deltas.reshape(-1, 4), picked_anchors.reshape(-1, 4))
        boxes_per_level.append(decoded.view(batch, k, 4))
        scores_per_level.append(scores)
    return [
        _image_proposals([b[i] for b in boxes_per_level], [s[i] for s in scores_per_level], size, post_nms_topk,
                         nms_thresh, min_box_size)
        for i, size in enumerate(image_sizes)
    ]


def _image_proposals(
    boxes_per_level: list[Tensor], scores_per_level: list[Tensor], size: tuple[int, int], post_nms_topk: int,
    nms_thresh: float, min_box_size: float,
) -> Tensor:
    """One image's proposals from its per-level candidates ``(k_l, 4)``, ``(k_l,)``: clipped,
    filtered, NMS per level, then the ``post_nms_topk`` best of all levels (ties by level, then
    by rank within the level)."""
    kept_boxes, kept_scores = [], []
    limit = size_tensor(size, boxes_per_level[0].device)
    for boxes, scores in zip(boxes_per_level, scores_per_level):
        boxes = clip_boxes_to_image(boxes, limit)
        wh = boxes[:, 2:] - boxes[:, :2]
        valid = (wh > min_box_size).all(dim=1) & torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1)
        scores = torch.where(valid, scores, -math.inf)  # NMS (score > -inf) never selects them
        keep = batched_nms_indices(boxes[None], scores[None], nms_thresh, -math.inf, post_nms_topk)[:, 1]
        kept_boxes.append(boxes[keep])
        kept_scores.append(scores[keep])
    boxes, scores = torch.cat(kept_boxes), torch.cat(kept_scores)
    order = sort_by_score(scores, torch.arange(scores.shape[0], device=scores.device), post_nms_topk)
    return boxes[order]


@dataclass
class Detections:
    """Box-branch detections of one image, in the frame of the image the model saw."""

    boxes: Tensor  # (N, 4) xyxy
    scores: Tensor  # (N,) class probability (decayed by SoftNMS when it is used)
    labels: Tensor  # (N,) int64 in [0, num_classes)


def detect_boxes(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    box_coder: BoxCoder,
    score_thresh: float,
    nms_thresh: float,
    detections_per_image: int,
    nms: str = "nms",
    soft_nms_method: str = "linear",
    soft_nms_sigma: float = 0.5,
    min_box_size: float = 0.0,
) -> list[Detections]:
    """Per-class detections from the box head's ``class_logits (R, C + 1)`` (background last)
    and ``box_deltas (R, 4C)`` for the concatenated ``proposals`` of all images.

    Softmax scores; class-specific boxes decoded and clipped; candidates above ``score_thresh``
    whose sides are at least ``min_box_size``; per-class NMS (or SoftNMS, Bodla et al. 2017); the
    ``detections_per_image`` best.
    """
    if nms not in ("nms", "soft_nms"):
        raise ValueError(f"unknown nms {nms!r}: use 'nms' or 'soft_nms'")
    num_classes = class_logits.shape[1] - 1
    probs = torch.softmax(class_logits, dim=1)[:, :num_classes]
    boxes_all = box_coder.decode(box_deltas, torch.cat(proposals)).view(-1, num_classes, 4)
    results, start = [], 0
    for image_proposals, size in zip(proposals, image_sizes):
        stop = start + image_proposals.shape[0]
        boxes = clip_boxes_to_image(boxes_all[start:stop], size_tensor(size, boxes_all.device))  # (R, C, 4)
        scores = probs[start:stop]  # (R, C)
        start = stop
        big_enough = ((boxes[..., 2:] - boxes[..., :2]) >= min_box_size).all(dim=-1)
        if nms == "nms":
            rows, labels = multiclass_nms(boxes, torch.where(big_enough, scores, -math.inf), nms_thresh, score_thresh,
                                          detections_per_image)
            results.append(Detections(boxes[rows, labels], scores[rows, labels], labels))
            continue
        labels = torch.arange(num_classes, device=scores.device).expand_as(scores)
        boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
        keep = (scores > score_thresh) & big_enough.reshape(-1)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep, scores_kept = batched_soft_nms(
            boxes, scores, labels, iou_threshold=nms_thresh, sigma=soft_nms_sigma,
            method=soft_nms_method, score_threshold=score_thresh,
        )
        # batched_soft_nms already returns the kept boxes by decreasing decayed score
        keep = keep[:detections_per_image]
        results.append(Detections(boxes[keep], scores_kept[:detections_per_image], labels[keep]))
    return results
