"""Pictures of results and ground truth that stay readable from one object to hundreds.

* Colour follows the class (:data:`PALETTE`, the same colours as the plots); instances of one
  class get slightly different fill shades so that touching neighbours stay apart.
* Masks are a light fill (``alpha``) with a full-colour outline, drawn largest first so small
  objects stay on top; with masks no box is drawn (the outline is the object), except for an
  instance whose mask is empty.
* Labels ("name 0.93") are placed greedily, best score (or largest object) first, above the box,
  else inside its top, else below it, always inside the picture, never on another label; a label
  is dropped when it would overlap one already placed or exceed the label budget, and every label
  is dropped when there are more than ``max_labels`` instances. When a label is dropped, a legend
  (class colour, name, count) in the emptiest corner names the classes instead.
* Keypoints (optional): the skeleton's limbs as lines in the class colour, then each joint as a
  white dot ringed in black, over the masks and under the labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from instaseg.structures.instances import CroppedInstances, Instances
from instaseg.structures.mask_crops import MaskCrops

__all__ = ["PALETTE", "class_colours", "instance_colours", "draw_instances", "draw_detections", "plan_labels", "side_by_side",
           "tile_pictures", "add_title", "font_of_size"]

# Twenty distinct colours (Tableau's 10 then their light partners), cycled for more classes.
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229),
], dtype=np.uint8)

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive


def class_colours(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """``(N, 3)`` uint8: the palette colour of each label."""
    return PALETTE[np.asarray(labels, dtype=np.int64).reshape(-1) % len(PALETTE)]


def instance_colours(count: int, seed: int = 0) -> np.ndarray:
    """``(count, 3)`` uint8 distinct, saturated colours (golden-ratio hue steps)."""
    import colorsys

    hues = (seed * 0.137 + np.arange(count) * 0.618033988749895) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.75, 1.0) for h in hues]
    return (np.array(rgb, dtype=np.float64).reshape(-1, 3) * 255).astype(np.uint8)


def font_of_size(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` pixels (its fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # an old Pillow or no FreeType
        return ImageFont.load_default()


def _as_array(image: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(image, Tensor):
        image = image.detach().cpu()
        if image.dim() == 3 and image.shape[0] == 3:
            image = image.permute(1, 2, 0)
        image = image.clamp(0, 255).to(torch.uint8).numpy()
    return np.ascontiguousarray(image, dtype=np.uint8)


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """4-neighbour erosion; outside the array counts as background."""
    for _ in range(steps):
        padded = np.pad(mask, 1)
        mask = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask


def _mask_windows(masks: np.ndarray) -> list[tuple[int, int, int, int] | None]:
    """The ``(x0, y0, x1, y1)`` extent of each ``(N, H, W)`` mask's pixels (None when it has none)."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # (N, H), (N, W)
    windows: list[tuple[int, int, int, int] | None] = []
    for r, c in zip(rows, cols):
        y, x = np.nonzero(r)[0], np.nonzero(c)[0]
        windows.append((int(x[0]), int(y[0]), int(x[-1]) + 1, int(y[-1]) + 1) if len(y) else None)
    return windows


def _as_crops(masks: Tensor | MaskCrops, size: tuple[int, int]) -> tuple[list[np.ndarray], list, np.ndarray]:
    """Masks as (crops, their ``(x0, y0, x1, y1)`` windows or None, ``(H, W)`` bool union); float
    masks thresholded at 0.5."""
    if isinstance(masks, MaskCrops):
        windows = [tuple(w) for w in masks.windows.tolist()]
        crops = [c.detach().cpu().numpy().astype(bool) for c in masks.crops]
    else:
        full = masks.detach().cpu().numpy()
        full = full >= 0.5 if full.dtype != bool else full
        windows = _mask_windows(full)
        crops = [full[i, w[1]:w[3], w[0]:w[2]] if w is not None else full[i, :0, :0] for i, w in enumerate(windows)]
    union = np.zeros(size, bool)
    for crop, w in zip(crops, windows):
        if w is not None and crop.size:
            union[w[1]:w[3], w[0]:w[2]] |= crop
    return crops, windows, union


def _blend_masks(canvas: np.ndarray, crops: Sequence[np.ndarray], windows: Sequence[Any], fills: np.ndarray,
                 outlines: np.ndarray, alpha: float, thickness: int) -> np.ndarray:
    """Fill (``alpha``) and outline each mask in place, largest first: ``crops[i]`` is mask ``i`` in
    its window ``(x0, y0, x1, y1)`` of the ``(H, W, 3)`` float ``canvas``. Returns the ``(N,)`` bool
    "mask is empty". Objects under 12 outline widths across get a one-pixel outline."""
    areas = np.array([int(c.sum()) if w is not None else 0 for c, w in zip(crops, windows)], dtype=np.int64)
    for i in np.argsort(-areas, kind="stable"):
        if areas[i] == 0:
            continue
        x0, y0, x1, y1 = windows[i]
        region, mask = canvas[y0:y1, x0:x1], crops[i]
        region[mask] = (1 - alpha) * region[mask] + alpha * fills[i]
        steps = thickness if min(y1 - y0, x1 - x0) >= 12 * thickness else 1  # small objects: a thin line
        region[mask & ~_erode(mask, steps)] = outlines[i]
    return areas == 0


def _free(rect: Rect, placed: dict[int, Rect]) -> bool:
    return all(rect[2] <= r[0] or r[2] <= rect[0] or rect[3] <= r[1] or r[3] <= rect[1] for r in placed.values())


def plan_labels(image_size: tuple[int, int], boxes: np.ndarray, text_sizes: Sequence[tuple[int, int]],
                order: Sequence[int], max_labels: int = 40, budget: float = 0.15, few: int = 8) -> dict[int, Rect]:
    """Where each instance's label goes (``{index: rect}``); instances left out get no label.

    Args:
        image_size: ``(H, W)`` of the picture.
        boxes: ``(N, 4)`` xyxy of the instances.
        text_sizes: ``(width, height)`` in pixels of each label.
        order: the instances by priority (e.g. score high to low).
        max_labels: with more instances than this, no label at all (a legend says it better).
        budget: the largest fraction of the picture the labels together may cover, once more than
            ``few`` instances are drawn (a handful of objects keeps every label that finds room).

    A label goes above the box, else inside its top, else below it, aligned with the box's left
    edge, else its right edge: the first of these that lies inside the picture and overlaps no
    label already placed. Every rect lies inside the picture and no two overlap.
    """
    height, width = image_size
    if len(order) > max_labels:
        return {}
    placed: dict[int, Rect] = {}
    room = budget * height * width if len(order) > few else float("inf")
    for i in order:
        w, h = text_sizes[i]
        if w > width or h > height or w * h > room:
            continue
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        lefts = [int(min(max(x, 0.0), width - w)) for x in (x1, x2 - w)]
        tops = [int(round(y)) for y in (y1 - h, y1, y2)]
        fits = [(x, y, x + w, y + h) for y in tops for x in lefts if 0 <= y <= height - h]
        rect = next((r for r in fits if _free(r, placed)), None)
        if rect is not None:
            placed[i] = rect
            room -= w * h
    return placed


def _text_colour(colour: np.ndarray) -> tuple[int, int, int]:
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _legend(draw: ImageDraw.ImageDraw, picture: Image.Image, coverage: np.ndarray, entries: list[tuple[int, str]],
            font: ImageFont.ImageFont, line: int) -> None:
    """A box of (swatch, text) lines in the corner of the picture that objects cover least."""
    height, width = picture.height, picture.width
    most = max(1, (height // 3) // line)
    if len(entries) > most:
        entries = entries[:most - 1] + [(-1, f"+{len(entries) - most + 1} more")]
    text_w = max(int(draw.textlength(text, font=font)) for _, text in entries)
    w, h = min(width, text_w + line + 6), min(height, line * len(entries) + 4)
    corners = [(0, 0), (width - w, 0), (0, height - h), (width - w, height - h)]
    x0, y0 = min(corners, key=lambda c: coverage[c[1]:c[1] + h, c[0]:c[0] + w].mean() if w and h else 0)
    box = np.asarray(picture)[y0:y0 + h, x0:x0 + w].astype(np.float32) * 0.35  # darken: text reads on anything
    picture.paste(Image.fromarray(box.astype(np.uint8)), (x0, y0))
    for row, (label, text) in enumerate(entries):
        top = y0 + 2 + row * line
        if label >= 0:
            swatch = tuple(int(c) for c in class_colours([label])[0])
            draw.rectangle([x0 + 3, top + 2, x0 + line - 2, top + line - 3], fill=swatch)
        draw.text((x0 + line + 2, top), text, fill=(255, 255, 255), font=font)


def draw_instances(
    image: np.ndarray | Tensor,
    boxes: Tensor,
    labels: Tensor,
    masks: Tensor | MaskCrops | None = None,
    scores: Tensor | None = None,
    class_names: list[str] | None = None,
    alpha: float = 0.3,
    show_labels: bool = True,
    *,
    max_labels: int = 40,
    label_budget: float = 0.15,
    keypoints: Tensor | None = None,
    skeleton: Sequence[tuple[int, int]] = (),
    keypoint_threshold: float = 0.0,
) -> Image.Image:
    """Overlay instances on ``image`` (``(H, W, 3)`` uint8 or ``(3, H, W)`` in [0, 255]).

    ``boxes (N, 4)`` xyxy absolute pixels, ``labels (N,)`` in ``[0, C)``, ``masks (N, H, W)`` bool
    (or float, thresholded at 0.5) or :class:`MaskCrops` (each mask kept in its window, for images
    too large for a mask per detection; the same picture), ``scores (N,)`` optional. See the module
    docstring for what is drawn; ``show_labels=False`` draws neither labels nor legend.

    ``keypoints (N, K, 3)`` ``(x, y, v)`` in the image's continuous pixel frame (ground truth, v the
    COCO visibility) or ``(x, y, score)`` (predictions): the points whose third value exceeds
    ``keypoint_threshold`` are drawn, and a limb ``(a, b)`` of ``skeleton`` (0-based pairs) where
    both ends are.
    """
    canvas = _as_array(image).astype(np.float32)
    height, width = canvas.shape[:2]
    n = int(boxes.shape[0])
    boxes_np = boxes.detach().cpu().to(torch.float64).numpy().reshape(n, 4)
    labels_np = labels.detach().cpu().numpy().astype(np.int64).reshape(n)
    outlines = class_colours(labels_np).astype(np.float32)
    shade = 0.8 + 0.4 * ((np.arange(n) * 0.618033988749895) % 1.0)  # fill shades 0.8x .. 1.2x
    fills = np.clip(outlines * shade[:, None], 0, 255)
    thickness = int(np.clip(np.ceil(min(height, width) / 256), 1, 3))
    without_mask = np.ones(n, bool)
    coverage = np.zeros((height, width), np.float32)
    if masks is not None and n:
        crops, windows, union = _as_crops(masks, (height, width))
        without_mask = _blend_masks(canvas, crops, windows, fills, outlines, alpha, thickness)
        coverage = union.astype(np.float32)
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for i in np.nonzero(without_mask)[0]:
        x1, y1, x2, y2 = boxes_np[i]
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=tuple(int(c) for c in outlines[i]),
                       width=thickness)
    if keypoints is not None and n:
        _draw_keypoints(draw, keypoints.detach().cpu().to(torch.float64).numpy(), skeleton, keypoint_threshold,
                        outlines, thickness)
    if show_labels and n:
        _draw_labels(picture, boxes_np, labels_np, None if scores is None else scores.detach().cpu().numpy(),
                     class_names, coverage, max_labels, label_budget)
    return picture


def draw_detections(image: np.ndarray | Tensor, detections: Instances | CroppedInstances,
                    class_names: Sequence[str] | None = None, skeleton: Sequence[tuple[int, int]] = (),
                    keypoint_threshold: float = 0.0) -> Image.Image:
    """:func:`draw_instances` of a model's detections: masks when it predicts them (boxes otherwise),
    labels with scores, and keypoints when it predicts them (joints scoring above
    ``keypoint_threshold``, limbs of ``skeleton`` between two shown joints)."""
    return draw_instances(image, detections.boxes, detections.labels, detections.masks, detections.scores,
                          None if class_names is None else list(class_names), keypoints=detections.keypoints,
                          skeleton=skeleton, keypoint_threshold=keypoint_threshold)


def _draw_keypoints(draw: ImageDraw.ImageDraw, keypoints: np.ndarray, skeleton: Sequence[tuple[int, int]],
                    threshold: float, colours: np.ndarray, thickness: int) -> None:
    """Limbs (class colour) then joints (white dots ringed in black) of ``keypoints (N, K, 3)``.

    PIL draws pixel ``(i, j)`` for integer coordinates, so a continuous point ``x`` is drawn at
    ``x - 0.5`` (the centre of pixel ``floor(x)``).
    """
    if keypoints.ndim != 3 or keypoints.shape[2] != 3:
        raise ValueError(f"keypoints must be (N, K, 3), got {keypoints.shape}")
    radius = thickness + 1
    for points, colour in zip(keypoints, colours):
        shown = points[:, 2] > threshold
        xy = points[:, :2] - 0.5
        for a, b in skeleton:
            if shown[a] and shown[b]:
                draw.line([tuple(xy[a]), tuple(xy[b])], fill=tuple(int(c) for c in colour), width=thickness)
        for x, y in xy[shown]:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 255, 255), outline=(0, 0, 0))


def _draw_labels(picture: Image.Image, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray | None,
                 class_names: Sequence[str] | None, coverage: np.ndarray, max_labels: int, budget: float) -> None:
    """Labels where :func:`plan_labels` finds room (best score, else largest box, first); a legend
    when any is left out. ``coverage (H, W)``: where objects are, for the legend to avoid."""
    height, width = coverage.shape
    draw = ImageDraw.Draw(picture)
    size = int(np.clip(round(min(height, width) / 32), 9, 22))
    font = font_of_size(size)

    def name(k: int) -> str:
        return class_names[k] if class_names and 0 <= k < len(class_names) else str(k)

    texts = [name(k) if scores is None else f"{name(k)} {float(scores[i]):.2f}" for i, k in enumerate(labels.tolist())]
    text_sizes = [(int(draw.textlength(t, font=font)) + 4, size + 4) for t in texts]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    priority = np.argsort(-(scores if scores is not None else areas), kind="stable")
    placed = plan_labels((height, width), boxes, text_sizes, priority.tolist(), max_labels, budget)
    colours = class_colours(labels)
    for i, (x0, y0, x1, y1) in placed.items():
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=tuple(int(c) for c in colours[i]))
        draw.text((x0 + 2, y0 + 1), texts[i], fill=_text_colour(colours[i]), font=font)
    if len(placed) < len(labels):
        coverage = coverage.copy()
        for x0, y0, x1, y1 in placed.values():  # the legend avoids the labels above all
            coverage[y0:y1, x0:x1] = 4.0
        entries = [(k, f"{name(k)} {c}") for k, c in Counter(labels.tolist()).most_common()]
        small = max(9, size - 2)  # the legend a little smaller than the labels: it stands for many of them
        _legend(draw, picture, coverage, entries, font_of_size(small), small + 4)


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 4) -> Image.Image:
    """Two pictures next to each other (e.g. ground truth | prediction)."""
    height = max(left.height, right.height)
    out = Image.new("RGB", (left.width + gap + right.width, height), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out


def add_title(picture: Image.Image, text: str, size: int = 14) -> Image.Image:
    """``picture`` under a white strip holding ``text`` (left aligned, cut to the picture's width)."""
    font = font_of_size(size)
    out = Image.new("RGB", (picture.width, picture.height + size + 8), (255, 255, 255))
    out.paste(picture, (0, size + 8))
    ImageDraw.Draw(out).text((4, 3), text, fill=(0, 0, 0), font=font)
    return out


def tile_pictures(pictures: Sequence[Image.Image], columns: int, gap: int = 4,
                  background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """A grid of pictures, row by row, each cell the size of the largest picture (top-left aligned)."""
    if not pictures:
        raise ValueError("no pictures to tile")
    columns = max(1, min(columns, len(pictures)))
    rows = -(-len(pictures) // columns)
    cell_w, cell_h = max(p.width for p in pictures), max(p.height for p in pictures)
    out = Image.new("RGB", (columns * cell_w + (columns - 1) * gap, rows * cell_h + (rows - 1) * gap), background)
    for index, picture in enumerate(pictures):
        row, col = divmod(index, columns)
        out.paste(picture, (col * (cell_w + gap), row * (cell_h + gap)))
    return out
