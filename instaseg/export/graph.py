"""Traceable building blocks shared by the export wrappers.

Each function computes what an eager instaseg function computes (named in its docstring), but
with tensor arithmetic only: sizes that depend on the input image stay symbolic, counts that
depend on the data (detections) come from ``nonzero``/custom ops, and nothing branches on a
tensor's value. They work for one image at a time, the unit of deployment.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from instaseg.export.ops import roi_align_op
from instaseg.ops.poolers import assign_fpn_levels

__all__ = [
    "floor_to_float32",
    "image_size_tensor",
    "resize_shortest_side",
    "resize_to",
    "pad_to_multiple",
    "clip_boxes",
    "grid_anchors",
    "multiscale_roi_align",
    "paste_mask_probs",
    "paste_masks",
    "crop_masks",
    "sort_by_score",
    "dense_fast_nms",
]


def floor_to_float32(value: float) -> float:
    """The largest float32 number ``<= value``: ``x > result`` holds for a float32 ``x`` exactly
    when ``x > value`` holds for the real numbers (instaseg's NMS compares IoUs that way)."""
    if not math.isfinite(value):
        return value
    rounded = torch.tensor(value, dtype=torch.float32)
    if rounded.item() > value:
        rounded = torch.nextafter(rounded, torch.tensor(-math.inf))
    return rounded.item()


def image_size_tensor(image: Tensor) -> Tensor:
    """``(2,)`` float64 ``[H, W]`` of ``image (C, H, W)``, traced from its (symbolic) shape."""
    return torch.stack([torch.scalar_tensor(s, dtype=torch.float64, device=image.device) for s in image.shape[-2:]])


def resize_shortest_side(image: Tensor, min_size: int, max_size: int) -> tuple[Tensor, Tensor]:
    """:func:`instaseg.structures.image_list.resized_shape` (``"floor"``) + ``resize_image`` in the graph.

    ``image (3, H, W)`` -> ``(resized (3, h, w), size (2,) float64 [h, w])``. The scale and the
    sizes are float64 arithmetic, as the eager rule (torchvision's) does, so both paths pick the
    same size for every input size.
    """
    size = image_size_tensor(image)
    short, long = size.min(), size.max()
    scale = torch.minimum(torch.full_like(short, min_size) / short, torch.full_like(long, max_size) / long)
    new_size = torch.floor(size * scale).clamp(min=1)
    height, width = (v.item() for v in new_size.long().unbind())  # data-dependent sizes
    torch._check(height >= 1)
    torch._check(width >= 1)
    return resize_to(image, (height, width)), new_size


def resize_to(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``image (C, H, W)`` to ``size`` (half-pixel centres), always resampling:
    at equal size it is the identity, so no branch on the (symbolic) input size is needed."""
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def pad_to_multiple(batch: Tensor, divisor: int) -> Tensor:
    """Zero-pad ``batch (B, C, H, W)`` at the bottom/right to multiples of ``divisor`` (``batch_images``).

    The padded sides are ``divisor * blocks`` with ``blocks`` a fresh symbol: every feature map's
    size is then a plain multiple of it, which keeps ``torch.export``'s shape algebra (and so the
    export time) small for inputs whose size is itself data-dependent.
    """
    if divisor <= 1:
        return batch
    height, width = batch.shape[-2:]
    sides = torch.stack([torch.scalar_tensor(s, dtype=torch.int64, device=batch.device) for s in (height, width)])
    blocks_h, blocks_w = (v.item() for v in ((sides + divisor - 1) // divisor).unbind())
    for blocks, side in ((blocks_h, height), (blocks_w, width)):
        torch._check(blocks >= 1)
        torch._check(blocks * divisor >= side)
    return F.pad(batch, (0, blocks_w * divisor - width, 0, blocks_h * divisor - height))


def clip_boxes(boxes: Tensor, size: Tensor) -> Tensor:
    """:func:`instaseg.structures.boxes.clip_boxes_to_image` with ``size (2,) [H, W]`` a tensor."""
    limit = torch.stack((size[1], size[0], size[1], size[0])).to(boxes.dtype)
    return torch.minimum(boxes.clamp(min=0), limit)


def grid_anchors(cell_anchors: Tensor, feature: Tensor, stride: int, offset: float) -> Tensor:
    """``AnchorGenerator``'s anchors of one level for ``feature (B, C, H_l, W_l)``: ``(H_l*W_l*A, 4)``.

    Same arithmetic (float32 grid plus float64 cell anchors cast to float32), location-major.
    """
    height, width = feature.shape[-2:]
    cell = cell_anchors.to(device=feature.device, dtype=torch.float32)
    shifts_x = torch.arange(width, device=feature.device, dtype=torch.float32) * stride + offset * stride
    shifts_y = torch.arange(height, device=feature.device, dtype=torch.float32) * stride + offset * stride
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)


def multiscale_roi_align(
    features: list[Tensor], boxes: Tensor, scales: list[float], resolution: int, sampling_ratio: int, aligned: bool
) -> Tensor:
    """:func:`instaseg.ops.poolers.multiscale_roi_align` for the boxes ``(K, 4)`` of image 0.

    Every level pools its own RoIs (found with ``nonzero``); the pieces are put back in box order.
    """
    rois = torch.cat((torch.zeros_like(boxes[:, :1]), boxes), dim=1)
    if len(features) == 1:
        return roi_align_op(features[0], rois, scales[0], resolution, resolution, sampling_ratio, aligned)
    min_level, max_level = round(-math.log2(scales[0])), round(-math.log2(scales[-1]))
    levels = assign_fpn_levels(boxes, min_level, max_level)
    pieces, order = [], []
    for level, (feature, scale) in enumerate(zip(features, scales)):
        index = torch.nonzero(levels == level).flatten()
        pieces.append(roi_align_op(feature, rois[index], scale, resolution, resolution, sampling_ratio, aligned))
        order.append(index)
    inverse = torch.argsort(torch.cat(order))  # position of box k among the concatenated pieces
    return torch.cat(pieces).index_select(0, inverse)


def _bilinear_weights(lo: Tensor, hi: Tensor, length: int, cells: int) -> Tensor:
    """``(N, length, cells)`` hat weights of mask cells at image pixels along one axis
    (``paste_masks_in_image``'s rule: ``u = (p + 0.5 - lo) / (hi - lo) * cells - 0.5``)."""
    pixels = torch.arange(length, device=lo.device, dtype=lo.dtype)
    coord = (pixels[None, :] + 0.5 - lo[:, None]) / (hi - lo)[:, None] * cells - 0.5
    cell_index = torch.arange(cells, device=lo.device, dtype=lo.dtype)
    return (1.0 - (coord[:, :, None] - cell_index).abs()).clamp(min=0.0)


def paste_mask_probs(mask_probs: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """:func:`instaseg.ops.paste_masks.paste_masks_in_image` (probabilities) on the whole image.

    ``mask_probs (N, M, M)``, ``boxes (N, 4)`` in output pixels -> ``(N, height, width)``: bilinear
    sampling at pixel centres with zeros outside the grid, separable (two batched matmuls). Boxes
    with a non-positive side paste nothing.
    """
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    valid = ((x2 > x1) & (y2 > y1))[:, None, None]
    weights_x = _bilinear_weights(x1, x2, width, mask_probs.shape[2])  # (N, W, Mw)
    weights_y = _bilinear_weights(y1, y2, height, mask_probs.shape[1])  # (N, H, Mh)
    # A degenerate box divides by zero: its weights are NaN or inf, so zero them out.
    weights_x = torch.where(valid, weights_x, 0.0)
    weights_y = torch.where(valid, weights_y, 0.0)
    return torch.bmm(weights_y, torch.bmm(mask_probs, weights_x.transpose(1, 2)))


def paste_masks(mask_probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float) -> Tensor:
    """:func:`paste_mask_probs` thresholded: ``(N, height, width)`` bool, ``probs >= threshold``."""
    return paste_mask_probs(mask_probs, boxes, height, width) >= threshold


def crop_masks(masks: Tensor, boxes: Tensor, padding: float, rule: str = "pixel_centre") -> Tensor:
    """:func:`instaseg.targets.yolact.crop_masks`: zero ``masks (N, h, w)`` outside ``boxes (N, 4)``
    grown by ``padding``: pixel centres ``x + 0.5`` in ``[x1 - p, x2 + p)`` (``"pixel_centre"``), or
    pixel indices ``x`` there with each pair of coordinates put in order (``"pixel_index"``)."""
    h, w = masks.shape[-2:]
    offset = 0.5 if rule == "pixel_centre" else 0.0
    cols = torch.arange(w, device=masks.device, dtype=boxes.dtype) + offset
    rows = torch.arange(h, device=masks.device, dtype=boxes.dtype) + offset
    x1, y1, x2, y2 = (boxes[:, i, None] for i in range(4))
    if rule == "pixel_index":
        x1, x2 = torch.minimum(x1, x2), torch.maximum(x1, x2)
        y1, y2 = torch.minimum(y1, y2), torch.maximum(y1, y2)
    inside_x = (cols[None] >= x1 - padding) & (cols[None] < x2 + padding)
    inside_y = (rows[None] >= y1 - padding) & (rows[None] < y2 + padding)
    return masks * (inside_y[:, :, None] & inside_x[:, None, :]).to(masks.dtype)


def sort_by_score(scores: Tensor, tie_keys: Tensor, limit: int) -> Tensor:
    """Indices of the ``limit`` best ``scores (K,)``, by decreasing score, ties by increasing
    ``tie_keys (K,)`` (the order instaseg's NMS returns); fewer when ``K < limit``."""
    by_key = torch.argsort(tie_keys, stable=True)
    order = torch.argsort(scores.index_select(0, by_key), descending=True, stable=True)
    return by_key.index_select(0, order)[:limit]


def dense_fast_nms(
    boxes: Tensor, scores: Tensor, iou_threshold: float, top_k: int, score_threshold: float, max_detections: int,
    keep_below_threshold: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`instaseg.ops.fast_nms` (YOLACT's Fast NMS) on fixed-size lists, for ``boxes (N, 4)``
    shared by all classes and ``scores (C, N)``: ``(box_index, labels, scores)``, best first.

    Per class the ``min(top_k, N)`` best boxes form the list; entries at or below the score
    threshold are invalid. They rank last in their list, so they never sit above a valid entry in
    the IoU matrix's upper triangle and cannot suppress one; they are dropped at the end.
    With ``keep_below_threshold`` (dbolya/yolact's rule) the valid entries are the candidate boxes,
    those with any class score above the threshold: the others rank last in every list (their
    scores set to -inf), and every surviving candidate counts whatever its score in the class.
    """
    k = min(top_k, boxes.shape[0])
    if keep_below_threshold:
        candidate = (scores > score_threshold).any(dim=0)  # (N,)
        ranked_scores = torch.where(candidate[None], scores, -math.inf)
        _, index = ranked_scores.topk(k, dim=1)  # (C, k), best first, candidates first
        class_scores, valid = scores.gather(1, index), candidate[index]
    else:
        class_scores, index = scores.topk(k, dim=1)  # (C, k), best first
        valid = class_scores > score_threshold
    iou = _self_box_iou(boxes[index])
    upper = torch.ones(k, k, dtype=torch.bool, device=boxes.device).triu(diagonal=1)
    # Entry j is suppressed if an earlier entry i < j of its class overlaps it (column-wise any).
    suppressed = ((iou > floor_to_float32(iou_threshold)) & upper).any(dim=1)
    keep = valid & ~suppressed
    flat_scores = torch.where(keep, class_scores, -math.inf).flatten()
    # Best first; ties by class, then by rank within the class (the flat class-major position).
    order = torch.argsort(flat_scores, descending=True, stable=True)[:max_detections]
    order = order[torch.nonzero(keep.flatten()[order]).flatten()]
    labels = torch.div(order, k, rounding_mode="floor")
    return index.flatten()[order], labels, class_scores.flatten()[order]


def _self_box_iou(boxes: Tensor) -> Tensor:
    """:func:`instaseg.structures.boxes.box_iou` of each set with itself, with the same arithmetic:
    ``(C, k, 4) -> (C, k, k)``."""
    area = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(dim=-1)  # (C, k)
    top_left = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
    bottom_right = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, :, None] + area[:, None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)
