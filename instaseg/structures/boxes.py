"""Box helpers on ``(N, 4)`` absolute-pixel ``xyxy`` tensors.

Coordinates are continuous: a box covering pixel columns ``0..W-1`` is ``[0, W]``, so a box's
width is ``x2 - x1`` with no "+1". The functions that torchvision.ops also has keep its names and
signatures (``box_area``, ``box_iou``, ``clip_boxes_to_image``, ``remove_small_boxes``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_iou",
    "box_ioa",
    "clip_boxes_to_image",
    "remove_small_boxes",
    "nonempty",
    "BoxCoder",
]


def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``boxes (..., N, 4)`` xyxy -> ``(..., N)``. Degenerate boxes have area 0 (never negative)."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def _pairwise_intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection areas ``(..., N, M)`` of ``boxes1 (..., N, 4)`` and ``boxes2 (..., M, 4)``.

    One contiguous ``(N, M)`` map per coordinate, updated in place: the ``(N, M, 2)`` corner tensors
    of the textbook form cost 4x the time on the ``300 x 25 000`` ground-truth x anchor matrices
    of a crowded image (the same float operations in the same order, so the same bits).
    """
    a, b = boxes1[..., :, None, :], boxes2[..., None, :, :]
    width = torch.minimum(a[..., 2], b[..., 2]).sub_(torch.maximum(a[..., 0], b[..., 0])).clamp_(min=0)
    height = torch.minimum(a[..., 3], b[..., 3]).sub_(torch.maximum(a[..., 1], b[..., 1])).clamp_(min=0)
    return width.mul_(height)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU of ``boxes1 (..., N, 4)`` and ``boxes2 (..., M, 4)`` xyxy -> ``(..., N, M)`` in
    [0, 1] (leading dimensions broadcast: ``(C, k, 4)`` with itself gives each set's matrix).

    A pair whose union is empty (two degenerate boxes) has IoU 0 rather than NaN (the intersection
    is then 0 too, as it never exceeds either area); so has a pair with a NaN or infinite coordinate.
    """
    inter = _pairwise_intersection(boxes1, boxes2)
    union = (box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :]).sub_(inter)
    return inter.div_(union.clamp_(min=torch.finfo(inter.dtype).tiny)).nan_to_num_(nan=0.0)


def box_ioa(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection over the area of ``boxes2``: ``(N, 4), (M, 4) -> (N, M)`` (used for crowd regions)."""
    inter = _pairwise_intersection(boxes1, boxes2)
    area2 = box_area(boxes2)[None, :]
    return torch.where(area2 > 0, inter / area2.clamp(min=torch.finfo(inter.dtype).tiny), 0.0)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int] | Tensor) -> Tensor:
    """Clip ``boxes (..., 4)`` xyxy to an image of ``size = (height, width)``: x in [0, W], y in [0, H].

    ``size`` may be a ``(2,)`` tensor ``[H, W]`` (a traced graph's image size, :func:`image_size_tensor`).
    """
    if isinstance(size, Tensor):
        limit = torch.stack((size[1], size[0], size[1], size[0])).to(boxes.dtype)
        return torch.minimum(boxes.clamp(min=0), limit)
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices ``(K,)`` of the boxes whose width and height are both ``>= min_size``."""
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = (wh[:, 0] >= min_size) & (wh[:, 1] >= min_size)
    return torch.where(keep)[0]


def nonempty(boxes: Tensor, threshold: float = 0.0) -> Tensor:
    """Bool ``(N,)``: True where both sides of the box are longer than ``threshold``."""
    wh = boxes[:, 2:] - boxes[:, :2]
    return (wh[:, 0] > threshold) & (wh[:, 1] > threshold)


class BoxCoder:
    """Encodes boxes as deltas ``(dx, dy, dw, dh)`` relative to reference boxes, and back.

    ``dx = wx * (gx - px) / pw``, ``dw = ww * log(gw / pw)`` (R-CNN parametrisation, centres and
    sizes in continuous coordinates). ``weights`` is (10, 10, 5, 5) in the R-CNN box heads and
    (1, 1, 1, 1) in the RPN; ``clamp`` bounds ``dw, dh`` before ``exp`` so that one wild
    regression cannot produce an infinite box (log(1000 / 16) as in Detectron2 and torchvision).
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        clamp: float = math.log(1000.0 / 16),
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.clamp = float(clamp)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, clamp={self.clamp:.4f})"

    def encode(self, reference: Tensor, target: Tensor) -> Tensor:
        """Deltas ``(N, 4)`` that turn ``reference (N, 4)`` into ``target (N, 4)`` (both xyxy)."""
        wx, wy, ww, wh = self.weights
        ref_w = reference[:, 2] - reference[:, 0]
        ref_h = reference[:, 3] - reference[:, 1]
        ref_x = reference[:, 0] + 0.5 * ref_w
        ref_y = reference[:, 1] + 0.5 * ref_h
        gt_w = target[:, 2] - target[:, 0]
        gt_h = target[:, 3] - target[:, 1]
        gt_x = target[:, 0] + 0.5 * gt_w
        gt_y = target[:, 1] + 0.5 * gt_h
        return torch.stack(
            (
                wx * (gt_x - ref_x) / ref_w,
                wy * (gt_y - ref_y) / ref_h,
                ww * torch.log(gt_w / ref_w),
                wh * torch.log(gt_h / ref_h),
            ),
            dim=1,
        )

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """Boxes from ``deltas (N, 4*k)`` applied to ``reference (N, 4)`` -> ``(N, 4*k)`` xyxy.

        ``k > 1`` decodes class-specific deltas (one group of four per class) in one call.
        """
        reference = reference.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        ref_w = (reference[:, 2] - reference[:, 0])[:, None]
        ref_h = (reference[:, 3] - reference[:, 1])[:, None]
        ref_x = reference[:, 0, None] + 0.5 * ref_w
        ref_y = reference[:, 1, None] + 0.5 * ref_h
        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.clamp)
        cx = dx * ref_w + ref_x
        cy = dy * ref_h + ref_y
        half_w = 0.5 * torch.exp(dw) * ref_w
        half_h = 0.5 * torch.exp(dh) * ref_h
        boxes = torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=2)
        return boxes.reshape(deltas.shape)
