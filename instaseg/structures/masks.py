"""Instance masks: COCO polygons and RLE to bitmaps and back.

The Mask R-CNN target crop (RoIAlign on the masks) is an op: ``instaseg.ops.crop_and_resize``.

Bitmaps are ``(H, W)`` bool numpy arrays for one instance and ``(N, H, W)`` for several (never
``(H, W, N)``). Polygon and RLE encoding and decoding are delegated to ``pycocotools.mask`` so that
rasterisation matches the COCO evaluator exactly. Boxes are absolute-pixel ``xyxy`` with continuous
coordinates (a box covering pixel columns ``0..W-1`` is ``[0, W]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from torch import Tensor

__all__ = [
    "polygons_to_bitmap",
    "rle_to_bitmap",
    "annotation_to_bitmap",
    "bitmap_to_rle",
    "bitmaps_to_rles",
]


def _check_polygon(polygon: Any, index: int) -> list[float]:
    coords = [float(v) for v in polygon]
    if len(coords) % 2 != 0:
        raise ValueError(f"polygon part {index} has an odd number of coordinates ({len(coords)})")
    if len(coords) < 6:
        # pycocotools reads a 4-number list as a *box*, so a 2-point "polygon" would be silently
        # rasterised as a rectangle; reject it instead.
        raise ValueError(f"polygon part {index} has {len(coords) // 2} points; at least 3 are needed")
    return coords


def polygons_to_bitmap(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons into an ``(height, width)`` bool mask.

    Args:
        polygons: one flat ``[x1, y1, x2, y2, ...]`` list per part, in absolute pixel coordinates
            (COCO frame: pixel (r, c) spans [c, c+1] x [r, r+1]). The result is the union of parts.
            An empty list gives an all-False mask.
        height, width: image size.

    Raises:
        ValueError: a part with an odd number of coordinates or fewer than 3 points.
    """
    parts = [_check_polygon(p, i) for i, p in enumerate(polygons)]
    if not parts:
        return np.zeros((height, width), dtype=bool)
    rles = mask_util.frPyObjects(parts, height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def rle_to_bitmap(rle: dict, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Decode a COCO RLE into an ``(H, W)`` bool mask.

    Accepts compressed RLE (``counts`` is a ``str`` or ``bytes``) and uncompressed RLE (``counts``
    is a list of run lengths, as COCO stores for ``iscrowd`` annotations). ``rle["size"]`` is
    ``[H, W]``; when ``height``/``width`` are given they must agree with it.

    Raises:
        ValueError: missing keys, a size that does not match the image, or uncompressed run lengths
            that do not add up to ``H * W``.
    """
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise ValueError("an RLE must be a dict with 'counts' and 'size' keys")
    rle_h, rle_w = (int(v) for v in rle["size"])
    if (height is not None and height != rle_h) or (width is not None and width != rle_w):
        raise ValueError(f"RLE size {[rle_h, rle_w]} does not match the image size {[height, width]}")
    counts = rle["counts"]
    if isinstance(counts, list):
        if sum(int(c) for c in counts) != rle_h * rle_w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected {rle_h * rle_w}")
        rle = mask_util.frPyObjects({"size": [rle_h, rle_w], "counts": counts}, rle_h, rle_w)
    elif isinstance(counts, (str, bytes)):
        rle = {"size": [rle_h, rle_w], "counts": counts}
    else:
        raise ValueError(f"RLE counts must be str, bytes or a list of ints, got {type(counts).__name__}")
    return mask_util.decode(rle).astype(bool)


def annotation_to_bitmap(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Decode a COCO ``segmentation`` field (polygon list or RLE dict) into an ``(H, W)`` bool mask.

    Dispatches on the form: a list is a list of polygon parts, a dict with list ``counts`` is
    uncompressed RLE, a dict with str/bytes ``counts`` is compressed RLE.

    Raises:
        ValueError: malformed polygons or RLE (see :func:`polygons_to_bitmap`, :func:`rle_to_bitmap`)
            or an unknown form.
    """
    if isinstance(segmentation, list):
        if any(not isinstance(p, (list, tuple)) for p in segmentation):
            raise ValueError("a polygon segmentation must be a list of coordinate lists, one per part")
        return polygons_to_bitmap(segmentation, height, width)
    if isinstance(segmentation, dict):
        return rle_to_bitmap(segmentation, height, width)
    raise ValueError(f"unknown segmentation form: {type(segmentation).__name__}")


def bitmap_to_rle(mask: np.ndarray) -> dict:
    """Encode an ``(H, W)`` bool mask as compressed COCO RLE.

    Returns ``{"size": [H, W], "counts": str}``: ``counts`` is decoded to ``str`` so the result can
    be written to JSON directly (pycocotools returns bytes).
    """
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def bitmaps_to_rles(masks: np.ndarray | Tensor) -> list[dict]:
    """Encode ``(N, H, W)`` bool masks (numpy or tensor) as a list of N compressed RLE dicts."""
    if isinstance(masks, Tensor):
        masks = masks.detach().cpu().numpy()
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
    return [bitmap_to_rle(m) for m in masks]
