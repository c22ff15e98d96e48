"""Sliced inference: a large image cut into overlapping tiles, each tile run through the model,
the detections mapped back to the image and merged (:mod:`instaseg.engine.tile_merge`).

Tiles (:func:`tile_grid`): squares of ``tile`` px, neighbours sharing at least
``floor(tile * overlap)`` px. Along each axis the tiles' starts are spread evenly between ``0`` and
``length - tile``, so the last row and column end exactly at the image's edge and no tile is
partial; the overlap only grows where the image length asks for it. An axis shorter than a tile
gets one tile of that axis' length. Every tile has the same size, so tiles are batched
(``batch_size`` per forward). The model resizes each tile as usual (``min_size_test`` /
``max_size_test``): choose ``tile`` near the resolution the model was trained for.

Masks are cut to their windows as soon as a tile's detections come back
(:class:`~instaseg.structures.instances.CroppedInstances`), so memory holds the image, one batch of
tile results and the crops: never a full-image mask per detection.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from instaseg.engine.tile_merge import merge_tile_detections
from instaseg.errors import InstasegError
from instaseg.structures.instances import CroppedInstances, Instances

__all__ = ["MIN_TILE", "TileGrid", "check_tiling", "overlap_argument", "predict_tiles", "sliced_predict",
           "tile_argument", "tile_grid", "tile_starts"]

# The coarsest feature maps the R-CNN heads pool from have stride 32 (P5; P6 only feeds the RPN):
# a tile below 64 px holds at most two of their cells, and the model would upsample it anyway.
MIN_TILE = 64


class TileDetector(Protocol):
    """Anything with the detectors' ``predict``: RGB ``(3, h, w)`` images in [0, 255] -> Instances."""

    def predict(self, images: list[Tensor]) -> list[Instances]: ...


@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles over an ``image_size = (H, W)`` image, all of ``tile_size = (h, w)``.

    Tile ``(r, c)`` covers columns ``x_starts[c] .. x_starts[c] + w - 1`` and rows
    ``y_starts[r] .. y_starts[r] + h - 1``; tiles are numbered row by row.
    """

    image_size: tuple[int, int]
    tile_size: tuple[int, int]
    x_starts: tuple[int, ...]
    y_starts: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.x_starts) * len(self.y_starts)

    def windows(self) -> list[tuple[int, int, int, int]]:
        """``[x0, y0, x1, y1]`` integer windows (xyxy, image pixels), row by row."""
        h, w = self.tile_size
        return [(x, y, x + w, y + h) for y in self.y_starts for x in self.x_starts]


def check_tiling(tile: int, overlap: float) -> None:
    """Raise ``InstasegError`` unless ``tile >= MIN_TILE`` and ``0 <= overlap < 1``."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE:
        raise InstasegError(f"tile must be an integer of at least {MIN_TILE} px, got {tile!r}")
    if not (isinstance(overlap, (int, float)) and 0.0 <= overlap < 1.0):
        raise InstasegError(f"overlap must be a fraction in [0, 1), got {overlap!r}")


def tile_argument(text: str) -> int:
    """``argparse`` type of ``--tile``: an integer of at least ``MIN_TILE``."""
    try:
        tile = int(text)
        check_tiling(tile, 0.0)
    except (ValueError, InstasegError):
        raise argparse.ArgumentTypeError(f"expected an integer tile size of at least {MIN_TILE} px, got {text!r}") from None
    return tile


def overlap_argument(text: str) -> float:
    """``argparse`` type of ``--overlap``: a fraction in [0, 1)."""
    try:
        overlap = float(text)
        check_tiling(MIN_TILE, overlap)
    except (ValueError, InstasegError):
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    return overlap


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """First pixels of the tiles covering ``[0, length)`` along one axis.

    Consecutive starts are at most ``tile - floor(tile * overlap)`` apart (so neighbours share at
    least ``floor(tile * overlap)`` px), the first is 0 and the last ``length - tile``; the fewest
    tiles that allow it, spread evenly. ``[0]`` when ``length <= tile``.
    """
    if length <= tile:
        return [0]
    stride = tile - math.floor(tile * overlap + 1e-9)  # >= 1 since overlap < 1; 1e-9: 100 * 0.29 = 28.99..
    count = -(-(length - tile) // stride) + 1
    return [i * (length - tile) // (count - 1) for i in range(count)]


def tile_grid(image_size: tuple[int, int], tile: int, overlap: float) -> TileGrid:
    """The tiles of ``tile`` px with ``overlap`` (fraction of a tile) over an ``(H, W)`` image."""
    check_tiling(tile, overlap)
    height, width = int(image_size[0]), int(image_size[1])
    if height < 1 or width < 1:
        raise InstasegError(f"cannot tile an empty image of size {height}x{width}")
    return TileGrid((height, width), (min(tile, height), min(tile, width)),
                    tuple(tile_starts(width, tile, overlap)), tuple(tile_starts(height, tile, overlap)))


def predict_tiles(model: TileDetector, image: Tensor, windows: list[tuple[int, int, int, int]],
                  batch_size: int = 4, score_threshold: float = 0.0,
                  device: torch.device | str | None = None) -> list[CroppedInstances]:
    """Run ``model`` on each window of ``image``, ``batch_size`` windows per forward.

    Args:
        model: a detector (``predict(list of (3, h, w)) -> list[Instances]``).
        image: ``(3, H, W)`` RGB, uint8 or float in [0, 255]; tiles are cut and made float32 one
            batch at a time (a uint8 image costs a quarter of a float one).
        windows: ``[x0, y0, x1, y1]`` tile windows in image pixels, all of one size.
        batch_size: tiles per ``predict`` call.
        score_threshold: drop detections scoring below it, before their masks are cropped.
        device: where the tiles go (default: the image's device).

    Returns:
        One :class:`CroppedInstances` per window, in the image frame (boxes shifted by the window's
        top-left corner, masks cut to their windows), on the CPU.

    Raises:
        InstasegError: the model predicts no masks (tiles are merged by mask overlap).
    """
    if batch_size < 1:
        raise InstasegError(f"batch_size must be at least 1, got {batch_size}")
    device = image.device if device is None else torch.device(device)
    image_size = (int(image.shape[1]), int(image.shape[2]))
    results: list[CroppedInstances] = []
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        tiles = [image[:, y0:y1, x0:x1].to(device=device, dtype=torch.float32) for x0, y0, x1, y1 in batch]
        for (x0, y0, _, _), found in zip(batch, model.predict(tiles)):
            if found.masks is None:
                raise InstasegError("sliced inference merges the tiles' detections by their masks, and this model "
                                    "predicts none (boxes and keypoints only): predict on the whole image")
            if score_threshold > 0:
                found = found[found.scores >= score_threshold]
            results.append(CroppedInstances.from_instances(found, (x0, y0), image_size).to("cpu"))
        del tiles
    return results


def sliced_predict(model: TileDetector, image: Tensor, tile: int, overlap: float = 0.2, batch_size: int = 4,
                   score_threshold: float = 0.0, match_iou: float = 0.5,
                   device: torch.device | str | None = None) -> CroppedInstances:
    """Detections of a large ``(3, H, W)`` image (uint8 or float in [0, 255]) by overlapping tiles.

    The tiles come from :func:`tile_grid`; detections of different tiles that are views of one
    object are merged by :func:`~instaseg.engine.tile_merge.merge_tile_detections` (``match_iou``:
    the mask IoU inside two tiles' shared window from which two detections count as one object).
    Each tile's detection cap (``detections_per_image``) applies per tile, not to the image.

    Returns:
        :class:`CroppedInstances` in the image frame, by decreasing score, on the CPU: masks kept
        as crops; ``.to_instances()`` makes the full ``(N, H, W)`` masks.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise InstasegError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    grid = tile_grid((int(image.shape[1]), int(image.shape[2])), tile, overlap)
    windows = grid.windows()
    per_tile = predict_tiles(model, image, windows, batch_size, score_threshold, device)
    return merge_tile_detections(per_tile, windows, grid.image_size, match_iou=match_iou)
