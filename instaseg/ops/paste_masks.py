"""Paste fixed-size per-box mask predictions back into the full image.

A Mask R-CNN mask head predicts an ``M x M`` grid of probabilities over each detected box. Pasting
samples that grid at every image pixel centre inside the box. Two rules are provided:

* :func:`paste_masks_in_image` -- the continuous-coordinate rule (Detectron2's paste): image pixel
  ``(r, c)`` has centre ``(c + 0.5, r + 0.5)`` and mask coordinate
  ``u = (c + 0.5 - x1) / (x2 - x1) * M - 0.5`` (``v`` likewise), sampled bilinearly with zeros
  outside the mask grid, which is what ``F.grid_sample(align_corners=False, padding_mode="zeros")``
  computes on such a grid. Work scales with the boxes' areas, not with ``N * H * W``.
* :func:`paste_masks_torchvision_style` -- torchvision's legacy integer-box paste, kept to
  reproduce torchvision-trained models' outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["paste_masks_in_image", "paste_masks_dense", "paste_masks_torchvision_style"]


def _as_mask_stack(masks: Tensor) -> Tensor:
    """``(N, Mh, Mw)`` or ``(N, 1, Mh, Mw)`` -> float ``(N, Mh, Mw)``."""
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"expected masks (N, M, M) or (N, 1, M, M), got {tuple(masks.shape)}")
    return masks if masks.is_floating_point() else masks.float()


def _bilinear_weights(starts: Tensor, length: int, lo: Tensor, hi: Tensor, cells: int) -> Tensor:
    """Separable bilinear weights from image pixels to mask cells along one axis.

    Args:
        starts: ``(N,)`` first image pixel index of each mask's region.
        length: number of pixels per region (the largest region; extra rows are ignored later).
        lo, hi: ``(N,)`` box edges along this axis (x1, x2 or y1, y2).
        cells: mask cells along this axis (M).

    Returns:
        ``(N, length, cells)``: weight of cell ``i`` at pixel ``starts + j``, i.e. the hat function
        ``max(0, 1 - |u - i|)`` at ``u = (p + 0.5 - lo) / (hi - lo) * cells - 0.5``. Cells outside
        ``0..cells-1`` simply have no column, which is bilinear sampling with zero padding.
    """
    pixels = starts[:, None] + torch.arange(length, device=starts.device, dtype=lo.dtype)[None, :]
    coord = (pixels + 0.5 - lo[:, None]) / (hi - lo)[:, None] * cells - 0.5
    cell_index = torch.arange(cells, device=lo.device, dtype=lo.dtype)
    return (1.0 - (coord[:, :, None] - cell_index).abs()).clamp(min=0.0)


def _support(lo: Tensor, hi: Tensor, cells: int, limit: int) -> tuple[Tensor, Tensor]:
    """Integer pixel range ``[start, stop)`` that can receive a nonzero value, clipped to the image.

    Bilinear sampling is nonzero for ``-1 < u < cells``: the box widened by half a mask cell on
    each side, i.e. pixel indices in ``(lo - 0.5 - cell/2, hi - 0.5 + cell/2)``. (Detectron2 widens
    by one pixel instead, which cuts the fringe of boxes larger than ``2 * M`` pixels.)
    """
    half_cell = (hi - lo) / cells * 0.5
    start = torch.floor(lo - 0.5 - half_cell).clamp(min=0, max=limit)
    stop = (torch.ceil(hi - 0.5 + half_cell) + 1).clamp(min=0, max=limit)
    return start, torch.maximum(stop, start)


def paste_masks_in_image(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    threshold: float | None = None,
) -> Tensor:
    """Paste per-box mask probabilities into an image by bilinear sampling at pixel centres.

    Args:
        masks: ``(N, M, M)`` or ``(N, 1, M, M)`` probabilities, each predicted over its box (a
            non-square ``Mh x Mw`` grid also works).
        boxes: ``(N, 4)`` xyxy, absolute pixels of the output image (continuous coordinates; boxes
            may extend past the image or be fractional).
        image_size: ``(H, W)`` of the output.
        threshold: if given (> 0), return ``probs >= threshold`` as bool.

    Returns:
        ``(N, H, W)`` float probabilities in the masks' float dtype, or bool when ``threshold`` is
        given. Boxes with non-positive width or height (or non-finite coordinates) paste nothing.
    """
    if torch.compiler.is_exporting():  # a traced graph: image size symbolic, no per-mask regions
        return paste_masks_dense(masks, boxes, image_size, threshold)
    masks = _as_mask_stack(masks)
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"expected boxes ({masks.shape[0]}, 4), got {tuple(boxes.shape)}")
    if threshold is not None and threshold <= 0:
        raise ValueError(f"threshold must be > 0 (pixels outside every box would pass), got {threshold}")
    height, width = int(image_size[0]), int(image_size[1])
    num, cells_y, cells_x = masks.shape
    out_dtype = torch.bool if threshold is not None else masks.dtype
    out = torch.zeros((num, height, width), dtype=out_dtype, device=masks.device)
    if masks.dtype in (torch.float16, torch.bfloat16):
        masks = masks.float()  # half precision cannot place pixel coordinates of large images
    boxes = boxes.to(device=masks.device, dtype=masks.dtype)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & torch.isfinite(boxes).all(dim=1)
    keep = torch.nonzero(valid).flatten()
    if keep.numel() == 0:
        return out
    masks, boxes = masks[keep], boxes[keep]
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    x_start, x_stop = _support(x1, x2, cells_x, width)
    y_start, y_stop = _support(y1, y2, cells_y, height)
    max_w = int((x_stop - x_start).max().item())
    max_h = int((y_stop - y_start).max().item())
    weights_x = _bilinear_weights(x_start, max_w, x1, x2, cells_x)  # (K, max_w, Mw)
    weights_y = _bilinear_weights(y_start, max_h, y1, y2, cells_y)  # (K, max_h, Mh)
    # Columns first, batched over masks (cheap: K * Mh * max_w); rows per mask, so the work of each
    # mask is its own region's area rather than the largest region's.
    columns = torch.bmm(masks, weights_x.transpose(1, 2))  # (K, Mh, max_w)
    bounds = torch.stack([x_start, x_stop, y_start, y_stop], dim=1).long().tolist()
    for k, (n, (xa, xb, ya, yb)) in enumerate(zip(keep.tolist(), bounds)):
        if xa >= xb or ya >= yb:
            continue
        region = weights_y[k, : yb - ya] @ columns[k, :, : xb - xa]
        out[n, ya:yb, xa:xb] = region >= threshold if threshold is not None else region.to(out_dtype)
    return out


def paste_masks_dense(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float | None = None
) -> Tensor:
    """:func:`paste_masks_in_image` over the whole image, traceable (what it runs while
    ``torch.export`` traces): the same sampling rule as two batched matmuls per mask, with no
    data-dependent region. ``masks (N, Mh, Mw)``, ``boxes (N, 4)`` -> ``(N, H, W)`` probabilities,
    or bool ``probs >= threshold``. Only the summation order differs from the eager paste (a pixel
    within float rounding of the threshold may flip)."""
    height, width = image_size
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    valid = ((x2 > x1) & (y2 > y1))[:, None, None]
    zeros = torch.zeros_like(x1)
    weights_x = _bilinear_weights(zeros, width, x1, x2, masks.shape[2])  # (N, W, Mw)
    weights_y = _bilinear_weights(zeros, height, y1, y2, masks.shape[1])  # (N, H, Mh)
    # A degenerate box divides by zero: its weights are NaN or inf, so zero them out.
    weights_x = torch.where(valid, weights_x, 0.0)
    weights_y = torch.where(valid, weights_y, 0.0)
    probs = torch.bmm(weights_y, torch.bmm(masks, weights_x.transpose(1, 2)))
    return probs if threshold is None else probs >= threshold


def _expand_boxes_about_centre(boxes: Tensor, scale: float) -> Tensor:
    """Scale ``(N, 4)`` xyxy boxes about their centres by ``scale`` (in the boxes' own dtype)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    return torch.cat([centre - half, centre + half], dim=1)


def paste_masks_torchvision_style(
    masks: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    padding: int = 1,
) -> Tensor:
    """Paste masks with torchvision's legacy rule (``roi_heads.paste_masks_in_image``).

    Each ``M x M`` mask is zero-padded by ``padding`` cells, its box is scaled about its centre by
    ``(M + 2 * padding) / M`` to cover the padding and truncated to int64; the padded mask is resized
    with ``F.interpolate(mode="bilinear", align_corners=False)`` to ``h = max(y2 - y1 + 1, 1)``,
    ``w = max(x2 - x1 + 1, 1)`` pixels and written at rows ``y1..y2``, columns ``x1..x2`` (inclusive,
    the "+1" integer-box convention), clipped to the image. Use this only to match torchvision
    checkpoints' outputs; :func:`paste_masks_in_image` is the continuous-coordinate rule.

    Args:
        masks: ``(N, M, M)`` or ``(N, 1, M, M)`` probabilities (M is taken from the last axis).
        boxes: ``(N, 4)`` xyxy float boxes in image pixels.
        image_size: ``(H, W)``.
        padding: zero cells added on each side before resizing (torchvision uses 1).

    Returns:
        ``(N, H, W)`` float probabilities (a box entirely outside the image pastes nothing; torchvision
        itself fails on such boxes, which its post-processing never produces).
    """
    masks = _as_mask_stack(masks)
    height, width = int(image_size[0]), int(image_size[1])
    out = torch.zeros((masks.shape[0], height, width), dtype=masks.dtype, device=masks.device)
    if masks.shape[0] == 0:
        return out
    scale = (masks.shape[-1] + 2 * padding) / masks.shape[-1]
    padded = F.pad(masks, (padding, padding, padding, padding))
    # Truncation toward zero (int64 cast), as torchvision does, not floor.
    int_boxes = _expand_boxes_about_centre(boxes.to(masks.device), scale).to(torch.int64).tolist()
    for n, (x1, y1, x2, y2) in enumerate(int_boxes):
        xa, xb = max(x1, 0), min(x2 + 1, width)
        ya, yb = max(y1, 0), min(y2 + 1, height)
        if xa >= xb or ya >= yb:
            continue
        size = (max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1))
        resized = F.interpolate(padded[n][None, None], size=size, mode="bilinear", align_corners=False)
        out[n, ya:yb, xa:xb] = resized[0, 0, ya - y1 : yb - y1, xa - x1 : xb - x1]
    return out
