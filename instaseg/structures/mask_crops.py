"""Binary masks of a large image kept as crops: each mask stored only inside its own window.

A full-image mask per detection costs ``N * H * W`` bytes: 100 MB per detection on a 10k x 10k
image. :class:`MaskCrops` stores mask ``i`` as the bool array of its window ``windows[i]``, so the
cost is the sum of the windows' areas; full masks are made only when asked
(:meth:`MaskCrops.to_full`), and COCO RLE is written straight from the crops
(:func:`window_to_rle`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["MaskCrops", "window_to_rle"]


@dataclass
class MaskCrops:
    """``N`` bool masks of an ``image_size = (H, W)`` image, each kept in its window.

    ``windows`` is ``(N, 4)`` int64 ``[x0, y0, x1, y1]``: the integer box (continuous xyxy frame,
    so pixel columns ``x0..x1-1`` and rows ``y0..y1-1``) inside ``[0, W] x [0, H]``; an empty mask
    has a window of zero area. ``crops[i]`` is the ``(y1 - y0, x1 - x0)`` bool mask of detection
    ``i`` inside its window; every pixel outside the window is False.
    """

    windows: Tensor  # (N, 4) int64 [x0, y0, x1, y1], image pixels
    crops: list[Tensor]  # N tensors (h_i, w_i) bool
    image_size: tuple[int, int]  # (H, W)

    def __post_init__(self) -> None:
        if self.windows.dim() != 2 or self.windows.shape[1] != 4:
            raise ValueError(f"windows must be (N, 4), got {tuple(self.windows.shape)}")
        if len(self.crops) != self.windows.shape[0]:
            raise ValueError(f"{len(self.crops)} crops for {self.windows.shape[0]} windows")
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        height, width = self.image_size
        for i, ((x0, y0, x1, y1), crop) in enumerate(zip(self.windows.tolist(), self.crops)):
            if not (0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height):
                raise ValueError(f"window {i} {[x0, y0, x1, y1]} is not inside the {height}x{width} image")
            if tuple(crop.shape) != (y1 - y0, x1 - x0):
                raise ValueError(f"crop {i} has shape {tuple(crop.shape)}, its window needs {(y1 - y0, x1 - x0)}")

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(N, H, W)``: the shape of the full masks these crops stand for."""
        return (len(self), *self.image_size)

    def __getitem__(self, index: Tensor | slice | list[int]) -> "MaskCrops":
        """Select masks by a bool mask, an index tensor or list, or a slice."""
        picked = torch.arange(len(self))[index]
        return MaskCrops(self.windows[picked].reshape(-1, 4), [self.crops[i] for i in picked.reshape(-1).tolist()],
                         self.image_size)

    def to(self, device: torch.device | str) -> "MaskCrops":
        return MaskCrops(self.windows.to(device), [c.to(device) for c in self.crops], self.image_size)

    def areas(self) -> Tensor:
        """``(N,)`` int64 number of True pixels of each mask."""
        # numpy: torch's sum over small bool tensors costs far more than the counting
        return torch.tensor([int(np.count_nonzero(c.detach().cpu().numpy())) for c in self.crops], dtype=torch.int64)

    def nbytes(self) -> int:
        """Bytes held by the crops (one byte per window pixel)."""
        return sum(c.numel() * c.element_size() for c in self.crops)

    @classmethod
    def empty(cls, image_size: tuple[int, int], device: torch.device | str = "cpu") -> "MaskCrops":
        return cls(torch.zeros(0, 4, dtype=torch.int64, device=device), [], image_size)

    @classmethod
    def from_masks(cls, masks: Tensor, offset: tuple[int, int] = (0, 0),
                   image_size: tuple[int, int] | None = None) -> "MaskCrops":
        """Crop ``(N, h, w)`` masks to their True pixels' bounding windows.

        Args:
            masks: ``(N, h, w)`` bool (float masks are thresholded at 0.5), in the frame of a
                region of the image whose top-left pixel is ``offset = (x, y)``.
            offset: where the masks' pixel ``(0, 0)`` lies in the image.
            image_size: ``(H, W)`` of the image (default: the masks' own size).

        Returns:
            The masks with windows in image pixels; an empty mask gets the zero-area window
            ``[x, y, x, y]`` at the offset.
        """
        if masks.dim() != 3:
            raise ValueError(f"masks must be (N, h, w), got {tuple(masks.shape)}")
        masks = masks >= 0.5 if masks.is_floating_point() else masks.bool()
        num, height, width = masks.shape
        image_size = (height, width) if image_size is None else image_size
        if num == 0:
            return cls.empty(image_size, masks.device)
        rows, cols = _occupied_rows_and_columns(masks)  # (N, h), (N, w)
        filled = rows.any(dim=1)
        y0 = rows.byte().argmax(dim=1)
        y1 = height - rows.flip(1).byte().argmax(dim=1)
        x0 = cols.byte().argmax(dim=1)
        x1 = width - cols.flip(1).byte().argmax(dim=1)
        local = torch.stack([x0, y0, x1, y1], dim=1) * filled[:, None]  # empty: [0, 0, 0, 0]
        # clone(): a slice would keep the whole (N, h, w) tensor alive
        crops = [masks[i, a:b, l:r].clone() for i, (l, a, r, b) in enumerate(local.tolist())]
        shift = torch.tensor([offset[0], offset[1], offset[0], offset[1]], device=masks.device)
        return cls(local + shift, crops, image_size)

    @staticmethod
    def cat(items: list["MaskCrops"]) -> "MaskCrops":
        """Masks of the same image, one list after the other."""
        if not items:
            raise ValueError("MaskCrops.cat needs at least one item")
        if len({it.image_size for it in items}) != 1:
            raise ValueError(f"cannot concatenate masks of different images: {[it.image_size for it in items]}")
        return MaskCrops(torch.cat([it.windows for it in items]), [c for it in items for c in it.crops],
                         items[0].image_size)

    def to_full(self) -> Tensor:
        """``(N, H, W)`` bool full-image masks (``N * H * W`` bytes: for small images or few masks)."""
        height, width = self.image_size
        out = torch.zeros((len(self), height, width), dtype=torch.bool, device=self.windows.device)
        for i, ((x0, y0, x1, y1), crop) in enumerate(zip(self.windows.tolist(), self.crops)):
            out[i, y0:y1, x0:x1] = crop
        return out

    def to_rles(self) -> list[dict]:
        """N compressed COCO RLEs of the full-image masks (``counts`` as str), made from the crops."""
        return [window_to_rle(crop.detach().cpu().numpy(), window, self.image_size)
                for window, crop in zip(self.windows.tolist(), self.crops)]


def _occupied_rows_and_columns(masks: Tensor) -> tuple[Tensor, Tensor]:
    """``(N, h)`` and ``(N, w)`` bool: which rows / columns of each ``(N, h, w)`` bool mask hold a True.

    On the CPU through numpy (several times faster than torch's ``any`` over bool there).
    """
    if masks.device.type != "cpu":
        return masks.any(dim=2), masks.any(dim=1)
    array = masks.numpy()
    return torch.from_numpy(array.any(axis=2)), torch.from_numpy(array.any(axis=1))


def window_to_rle(crop: np.ndarray, window: list[int] | tuple[int, ...], image_size: tuple[int, int]) -> dict:
    """Compressed COCO RLE of the ``(H, W)`` image mask that is ``crop`` inside ``window``, False elsewhere.

    COCO RLE counts alternate runs of 0s and 1s (starting with 0s) in column-major order. Image
    column ``x0 + j`` reads: ``y0`` zeros, crop column ``j``, ``H - y0 - h`` zeros; so the image
    sequence is the crop's column-major cells with one zero "gap" cell of weight ``H - h`` after
    each column (``y0`` zeros before the first column and everything after the last one are the
    first and last weights). Runs are weighted sums over cells: work and memory are the crop's
    size, never ``H * W``.

    Args:
        crop: ``(h, w)`` bool.
        window: ``[x0, y0, x1, y1]`` with ``x1 - x0 = w``, ``y1 - y0 = h``, inside the image.
        image_size: ``(H, W)``.

    Returns:
        ``{"size": [H, W], "counts": str}``, equal to ``bitmap_to_rle`` of the full mask.
    """
    height, width = int(image_size[0]), int(image_size[1])
    x0, y0 = int(window[0]), int(window[1])
    h, w = crop.shape
    values = np.zeros((w, h + 1), dtype=bool)
    values[:, :h] = crop.T
    weights = np.ones((w, h + 1), dtype=np.int64)
    weights[:, h] = height - h
    if w:
        weights[-1, h] = (height - y0 - h) + (width - x0 - w) * height
    values = np.concatenate([[False], values.ravel()])
    weights = np.concatenate([[x0 * height + y0 if w else height * width], weights.ravel()])
    keep = weights > 0  # a zero-weight gap (h == H) must not split a run of ones
    values, weights = values[keep], weights[keep]
    starts = np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1])
    counts = np.add.reduceat(weights, starts).tolist() if values.size else []
    if values.size and values[0]:
        counts = [0, *counts]
    import pycocotools.mask as mask_util  # here: importing Instances stays light

    rle = mask_util.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
