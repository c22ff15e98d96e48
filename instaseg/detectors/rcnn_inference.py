"""From raw head outputs to boxes: RPN proposal selection and the box branch's detections."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from instaseg.ops.nms import batched_nms
from instaseg.ops.soft_nms import batched_soft_nms
from instaseg.structures.boxes import BoxCoder, clip_boxes_to_image

__all__ = ["Detections", "select_proposals", "detect_boxes", "top_batched_nms"]

# First try of top_batched_nms: NMS over this many candidates per box wanted.
_PREFIX_FACTOR = 4


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
    boxes_per_level, scores_per_level, level_ids = [], [], []
    for level, (level_anchors, logits, deltas) in enumerate(zip(anchors, objectness_logits, anchor_deltas)):
        k = min(pre_nms_topk, logits.shape[1])
        scores, index = logits.topk(k, dim=1)  # (B, k), sorted
        picked_deltas = deltas.gather(1, index[..., None].expand(-1, -1, 4))
        picked_anchors = level_anchors[index]  # (B, k, 4)
        decoded = box_coder.decode(picked_deltas.reshape(-1, 4), picked_anchors.reshape(-1, 4))
        boxes_per_level.append(decoded.view(batch, k, 4))
        scores_per_level.append(scores)
        level_ids.append(torch.full((k,), level, dtype=torch.int64, device=scores.device))
    all_boxes = torch.cat(boxes_per_level, dim=1)
    all_scores = torch.cat(scores_per_level, dim=1)
    all_levels = torch.cat(level_ids)
    proposals = []
    for b, size in enumerate(image_sizes):
        boxes = clip_boxes_to_image(all_boxes[b], size)
        scores, levels = all_scores[b], all_levels
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = (wh > min_box_size).all(dim=1) & torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, nms_thresh)[:post_nms_topk]
        proposals.append(boxes[keep])
    return proposals


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

    Softmax scores; class-specific boxes decoded and clipped; candidates above ``score_thresh``;
    per-class NMS (or SoftNMS, Bodla et al. 2017); the ``detections_per_image`` best.
    """
    num_classes = class_logits.shape[1] - 1
    probs = torch.softmax(class_logits, dim=1)[:, :num_classes]
    counts = [p.shape[0] for p in proposals]
    boxes_all = box_coder.decode(box_deltas, torch.cat(proposals)).view(-1, num_classes, 4)
    results = []
    for boxes, scores, size in zip(boxes_all.split(counts), probs.split(counts), image_sizes):
        boxes = clip_boxes_to_image(boxes, size)
        labels = torch.arange(num_classes, device=scores.device).expand_as(scores)
        boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
        keep = (scores > score_thresh) & ((boxes[:, 2:] - boxes[:, :2]) >= min_box_size).all(dim=1)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if nms == "soft_nms":
            keep, scores_kept = batched_soft_nms(
                boxes, scores, labels, iou_threshold=nms_thresh, sigma=soft_nms_sigma,
                method=soft_nms_method, score_threshold=score_thresh,
            )
            # batched_soft_nms already returns the kept boxes by decreasing decayed score
            keep, scores_out = keep[:detections_per_image], scores_kept[:detections_per_image]
        elif nms == "nms":
            keep = top_batched_nms(boxes, scores, labels, nms_thresh, detections_per_image)
            scores_out = scores[keep]
        else:
            raise ValueError(f"unknown nms {nms!r}: use 'nms' or 'soft_nms'")
        results.append(Detections(boxes[keep], scores_out, labels[keep]))
    return results


def top_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, max_keep: int) -> Tensor:
    """``batched_nms(boxes, scores, idxs, iou_threshold)[:max_keep]``, without running NMS on all boxes.

    In greedy per-category NMS a box's fate depends only on the boxes of its category ranked above
    it (higher score; equal scores by lower index). So NMS over the candidates scoring at least
    some ``s`` (kept in their original order, hence ranked alike) keeps exactly the boxes of the
    full run that score at least ``s``; once it keeps ``max_keep`` boxes, those are the full run's
    first ``max_keep``. The candidate set grows 4x until that holds (or it is everything).
    With ``score_thresh = 0`` Mask R-CNN's 1000 RoIs x 80 classes give 80000 candidates, of which
    a few hundred decide the 100 detections.

    ``boxes (N, 4)``, ``scores (N,)``, ``idxs (N,)`` -> ``(K,)`` int64 indices, K <= max_keep.
    """
    n = scores.numel()
    prefix = _PREFIX_FACTOR * max(max_keep, 1)
    while prefix < n:
        cut = scores.topk(prefix, sorted=False).values.min()
        chosen = torch.nonzero(scores >= cut).squeeze(1)  # ties at the cut included, order kept
        if chosen.numel() >= n:
            break
        keep = batched_nms(boxes[chosen], scores[chosen], idxs[chosen], iou_threshold)
        if keep.numel() >= max_keep:
            return chosen[keep[:max_keep]]
        prefix *= _PREFIX_FACTOR
    return batched_nms(boxes, scores, idxs, iou_threshold)[:max_keep]
