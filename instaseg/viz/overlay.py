"""Pictures of results and ground truth: masks blended in colour, boxes, class names and scores."""

from __future__ import annotations

import colorsys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from instaseg.structures.mask_crops import MaskCrops

__all__ = ["instance_colours", "draw_instances", "side_by_side"]


def instance_colours(count: int, seed: int = 0) -> np.ndarray:
    """``(count, 3)`` uint8 distinct, saturated colours (golden-ratio hue steps)."""
    hues = (seed * 0.137 + np.arange(count) * 0.618033988749895) % 1.0
    rgb = [colorsys.hsv_to_rgb(h, 0.75, 1.0) for h in hues]
    return (np.array(rgb, dtype=np.float64).reshape(-1, 3) * 255).astype(np.uint8)


def _as_array(image: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(image, Tensor):
        image = image.detach().cpu()
        if image.dim() == 3 and image.shape[0] == 3:
            image = image.permute(1, 2, 0)
        image = image.clamp(0, 255).to(torch.uint8).numpy()
    return np.ascontiguousarray(image, dtype=np.uint8)


def draw_instances(
    image: np.ndarray | Tensor,
    boxes: Tensor,
    labels: Tensor,
    masks: Tensor | MaskCrops | None = None,
    scores: Tensor | None = None,
    class_names: list[str] | None = None,
    alpha: float = 0.45,
    show_labels: bool = True,
) -> Image.Image:
    """Overlay instances on ``image`` (``(H, W, 3)`` uint8 or ``(3, H, W)`` in [0, 255]).

    ``boxes (N, 4)`` xyxy, ``labels (N,)``, ``masks (N, H, W)`` bool or :class:`MaskCrops` (masks kept
    in their windows: each is blended only there, for images too large for a mask per detection),
    ``scores (N,)`` optional.
    Each instance gets its own colour; its label reads "name 0.93" at the box's top-left corner
    (``show_labels=False``: masks and boxes only, for crowded pictures).
    """
    n = int(boxes.shape[0])
    colours = instance_colours(n)
    if isinstance(masks, MaskCrops):
        picture = Image.fromarray(_blend_crops(_as_array(image).copy(), masks, colours, alpha))
    else:
        canvas = _as_array(image).astype(np.float32)
        if masks is not None and n:
            masks_np = masks.detach().cpu().numpy().astype(bool)
            # draw larger masks first so small instances stay visible on top
            order = np.argsort(-masks_np.reshape(n, -1).sum(1))
            for i in order:
                region = masks_np[i]
                canvas[region] = (1 - alpha) * canvas[region] + alpha * colours[i]
        picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for i in range(n):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        colour = tuple(int(c) for c in colours[i])
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=max(1, picture.width // 400))
        if not show_labels:
            continue
        label = int(labels[i])
        text = class_names[label] if class_names and 0 <= label < len(class_names) else str(label)
        if scores is not None:
            text = f"{text} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        width, height = right - left + 3, bottom - top + 2
        # above the box, moved left (and down) as needed to stay inside the picture
        label_x = max(0.0, min(x1, picture.width - width))
        top_y = max(0.0, y1 - height)
        draw.rectangle([label_x, top_y, label_x + width, top_y + height], fill=colour)
        draw.text((label_x + 1, top_y), text, fill=(0, 0, 0), font=font)
    return picture


def _blend_crops(canvas: np.ndarray, masks: MaskCrops, colours: np.ndarray, alpha: float) -> np.ndarray:
    """Blend each crop into its window of the ``(H, W, 3)`` uint8 ``canvas``, larger masks first."""
    areas = masks.areas().numpy()
    for i in np.argsort(-areas, kind="stable"):
        x0, y0, x1, y1 = masks.windows[i].tolist()
        region = canvas[y0:y1, x0:x1]
        inside = masks.crops[i].detach().cpu().numpy().astype(bool)
        # float32 as in the full-mask path, so both draw the same picture
        blended = ((1 - alpha) * region[inside].astype(np.float32) + alpha * colours[i]).astype(np.float32)
        region[inside] = blended.clip(0, 255).astype(np.uint8)
    return canvas


def side_by_side(left: Image.Image, right: Image.Image, gap: int = 4) -> Image.Image:
    """Two pictures next to each other (e.g. ground truth | prediction)."""
    height = max(left.height, right.height)
    out = Image.new("RGB", (left.width + gap + right.width, height), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out
