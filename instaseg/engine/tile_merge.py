"""One set of detections from the detections of overlapping tiles: the rule, and why.

An object near a tile border is seen by several tiles: whole by some, cut by the border in others.
The rule, per class:

1. **Cut views.** A detection is *cut* when its extent (its box together with its mask's window)
   comes within ``edge_margin`` px of an *inner* edge of its tile (an edge that is not the image's
   edge): the object may go on outside the tile, and the model saw it without that context.
   The default margin is generous (2% of the tile, at least 2 px): calling a whole view cut costs
   little (step 4 rebuilds the same mask), calling a partial view whole would keep a partial mask.
2. **Same object.** Two detections of different tiles with the same label are views of one object
   when their masks agree inside the window the two tiles share: the IoU of the two masks
   restricted to that window is at least ``match_iou`` (0.5). Both tiles see every pixel of that
   window, so two views of one object agree there whatever part of the object each tile sees,
   whereas IoU of the whole masks is low between a whole view and a sliver of it (greedy NMS would
   keep both), and box IoU cannot tell two touching objects from one. Views are grouped
   transitively (union-find): an object on a 4-way corner has up to four views.
3. **A whole view wins.** A group with an uncut view (a tile saw the whole object) becomes that
   view unchanged: the largest uncut one, then the best-scored. Cut views are dropped: they are
   partial, and their masks are least reliable near the cut. An object inside one tile's interior
   therefore comes out exactly as a prediction on that tile, shifted by its offset.
4. **Stitching.** A group of cut views only (an object larger than the overlap, that no tile saw
   whole) becomes one detection whose mask takes, at each pixel, the value of the view whose tile
   sees that pixel farthest from an inner edge (the most context; ties go to the better score);
   box: the union of the views' boxes; score: the best view's score (and its mask score).

A detection that matches nothing is kept as it is (including a cut view whose other views were
dropped by the score threshold). Two detections of one tile are never compared: duplicates within a
tile are the model's own NMS's business.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from instaseg.structures.instances import CroppedInstances
from instaseg.structures.mask_crops import MaskCrops

__all__ = ["merge_tile_detections", "overlapping_tile_pairs", "cut_detections"]

Window = tuple[int, int, int, int]  # [x0, y0, x1, y1] integer, image pixels

EDGE_MARGIN_FRACTION = 0.02
MIN_EDGE_MARGIN = 2.0


def _intersect(a: Window, b: Window) -> Window | None:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def overlapping_tile_pairs(windows: list[Window]) -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of tile windows that share pixels (sweep over ``x0``)."""
    order = sorted(range(len(windows)), key=lambda t: windows[t][0])
    pairs = []
    for k, a in enumerate(order):
        for b in order[k + 1 :]:
            if windows[b][0] >= windows[a][2]:
                break
            if _intersect(windows[a], windows[b]) is not None:
                pairs.append((min(a, b), max(a, b)))
    return sorted(pairs)


def cut_detections(dets: CroppedInstances, tile_index: Tensor, windows: list[Window],
                   edge_margin: float) -> Tensor:
    """``(N,)`` bool: detection ``i``'s extent comes within ``edge_margin`` px of an inner edge of its tile.

    The extent is the box together with the mask's window (an empty mask: the box alone).
    """
    height, width = dets.image_size
    extent = dets.boxes.detach().to(torch.float64).clone()
    win = dets.masks.windows.to(torch.float64)
    filled = (win[:, 2] > win[:, 0]) & (win[:, 3] > win[:, 1])
    extent[filled, :2] = torch.minimum(extent[filled, :2], win[filled, :2])
    extent[filled, 2:] = torch.maximum(extent[filled, 2:], win[filled, 2:])
    tiles = torch.tensor(windows, dtype=torch.float64).reshape(-1, 4)[tile_index]
    left = (tiles[:, 0] > 0) & (extent[:, 0] <= tiles[:, 0] + edge_margin)
    top = (tiles[:, 1] > 0) & (extent[:, 1] <= tiles[:, 1] + edge_margin)
    right = (tiles[:, 2] < width) & (extent[:, 2] >= tiles[:, 2] - edge_margin)
    bottom = (tiles[:, 3] < height) & (extent[:, 3] >= tiles[:, 3] - edge_margin)
    return left | top | right | bottom


def _part(crop: np.ndarray, window: Window, region: Window) -> np.ndarray:
    """The part of ``crop`` (lying in ``window``) inside ``region`` (a sub-window of ``window``)."""
    return crop[region[1] - window[1] : region[3] - window[1], region[0] - window[0] : region[2] - window[0]]


def _count_in(crop: np.ndarray, window: Window, region: Window) -> int:
    """True pixels of ``crop`` (lying in ``window``) inside ``region``."""
    inside = _intersect(window, region)
    return 0 if inside is None else int(np.count_nonzero(_part(crop, window, inside)))


def _matching_pairs(dets: CroppedInstances, tile_index: Tensor, windows: list[Window],
                    match_iou: float) -> list[tuple[int, int]]:
    """Pairs of detections of overlapping tiles, same label, shared-window mask IoU >= ``match_iou``.

    The IoU counts pixels inside the two tiles' shared window only (rule 2). Counting is done in
    numpy: torch's reductions over strided bool views are one to two orders of magnitude slower.
    """
    mask_windows: list[Window] = [tuple(w) for w in dets.masks.windows.tolist()]
    crops = [c.detach().cpu().numpy() for c in dets.masks.crops]
    labels = dets.labels.tolist()
    by_tile: dict[int, list[int]] = {}
    for i, t in enumerate(tile_index.tolist()):
        by_tile.setdefault(t, []).append(i)
    pairs = []
    for a, b in overlapping_tile_pairs(windows):
        shared = _intersect(windows[a], windows[b])
        near_a = {i: _count_in(crops[i], mask_windows[i], shared) for i in by_tile.get(a, [])
                  if _intersect(mask_windows[i], shared)}
        near_b = {j: _count_in(crops[j], mask_windows[j], shared) for j in by_tile.get(b, [])
                  if _intersect(mask_windows[j], shared)}
        for i, area_i in near_a.items():
            for j, area_j in near_b.items():
                both = _intersect(mask_windows[i], mask_windows[j])
                both = None if both is None else _intersect(both, shared)
                if labels[i] != labels[j] or both is None:
                    continue
                inter = int(np.count_nonzero(_part(crops[i], mask_windows[i], both)
                                             & _part(crops[j], mask_windows[j], both)))
                union = area_i + area_j - inter
                if union > 0 and inter / union >= match_iou:
                    pairs.append((i, j))
    return pairs


def _groups(count: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of ``range(count)`` under ``pairs`` (union-find), each sorted."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[root(i)] = root(j)
    components: dict[int, list[int]] = {}
    for i in range(count):
        components.setdefault(root(i), []).append(i)
    return list(components.values())


def _axis_depth(centres: Tensor, lo: int, hi: int, length: int) -> Tensor:
    """Distance of pixel centres inside ``[lo, hi)`` to the nearest inner edge of it (inf if none)."""
    depth = torch.full_like(centres, float("inf"))
    if lo > 0:
        depth = torch.minimum(depth, centres - lo)
    if hi < length:
        depth = torch.minimum(depth, hi - centres)
    return depth


def _stitch(dets: CroppedInstances, members: list[int], tiles: list[Window]) -> MaskCrops:
    """One mask from cut views: each pixel from the view whose tile sees it deepest inside.

    ``members`` are ordered by decreasing score (a tie in depth keeps the earlier view);
    ``tiles[k]`` is the tile window of ``members[k]``. Views are folded in one at a time, so the
    memory is two arrays of the merged window whatever the number of views.
    """
    height, width = dets.image_size
    wins = dets.masks.windows[members]
    merged_window = (int(wins[:, 0].min()), int(wins[:, 1].min()), int(wins[:, 2].max()), int(wins[:, 3].max()))
    x0, y0, x1, y1 = merged_window
    best = torch.full((y1 - y0, x1 - x0), -1.0)  # depth of the view deciding each pixel; -1: none
    merged = torch.zeros((y1 - y0, x1 - x0), dtype=torch.bool)
    for i, tile in zip(members, tiles):
        region = _intersect(tile, merged_window)  # the member's mask lies in its tile and in the window
        rx0, ry0, rx1, ry1 = region
        depth_x = _axis_depth(torch.arange(rx0, rx1, dtype=torch.float32) + 0.5, tile[0], tile[2], width)
        depth_y = _axis_depth(torch.arange(ry0, ry1, dtype=torch.float32) + 0.5, tile[1], tile[3], height)
        depth = torch.minimum(depth_y[:, None], depth_x[None, :])
        view = torch.zeros((ry1 - ry0, rx1 - rx0), dtype=torch.bool)
        a0, b0, a1, b1 = dets.masks.windows[i].tolist()
        view[b0 - ry0 : b1 - ry0, a0 - rx0 : a1 - rx0] = dets.masks.crops[i]
        region_best = best[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0]
        region_merged = merged[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0]
        deeper = depth > region_best
        region_merged[deeper] = view[deeper]
        region_best[deeper] = depth[deeper]
    return MaskCrops.from_masks(merged[None], (x0, y0), (height, width))


def _merge_group(dets: CroppedInstances, group: list[int], cut: Tensor, tile_index: Tensor,
                 windows: list[Window]) -> CroppedInstances:
    """One detection from the views in ``group`` (rules 3 and 4 of the module docstring)."""
    scores = dets.scores[group]
    uncut = [i for i in group if not bool(cut[i])]
    if uncut:
        areas = dets.masks[uncut].areas().tolist()
        best = max(range(len(uncut)), key=lambda k: (areas[k], float(dets.scores[uncut[k]]), -uncut[k]))
        return dets[[uncut[best]]]
    members = [group[k] for k in torch.argsort(scores, descending=True, stable=True).tolist()]
    top = members[0]
    boxes = dets.boxes[members]
    box = torch.cat([boxes[:, :2].min(dim=0).values, boxes[:, 2:].max(dim=0).values])[None]
    masks = _stitch(dets, members, [windows[t] for t in tile_index[members].tolist()])
    return CroppedInstances(box, dets.scores[[top]], dets.labels[[top]], masks,
                            None if dets.mask_scores is None else dets.mask_scores[[top]],
                            None if dets.keypoints is None else dets.keypoints[[top]])


def merge_tile_detections(per_tile: list[CroppedInstances], windows: list[Window], image_size: tuple[int, int],
                          match_iou: float = 0.5, edge_margin: float | None = None) -> CroppedInstances:
    """Merge the detections of overlapping tiles into one detection per object.

    Args:
        per_tile: detections of tile ``t`` in the image frame (``per_tile[t]``, masks as crops), on the CPU.
        windows: ``[x0, y0, x1, y1]`` of each tile in the image.
        image_size: ``(H, W)`` of the image.
        match_iou: shared-window mask IoU from which two views are one object (rule 2).
        edge_margin: px from an inner tile edge within which a detection is cut (rule 1); default
            2% of the larger tile side, at least 2 px.

    Returns:
        The merged detections by decreasing score (rules in the module docstring).
    """
    if len(per_tile) != len(windows):
        raise ValueError(f"{len(per_tile)} tile results for {len(windows)} windows")
    if not per_tile:
        return CroppedInstances.empty(image_size)
    if edge_margin is None:
        side = max(max(w[2] - w[0], w[3] - w[1]) for w in windows)
        edge_margin = max(MIN_EDGE_MARGIN, EDGE_MARGIN_FRACTION * side)
    dets = CroppedInstances.cat(per_tile)
    tile_index = torch.cat([torch.full((len(r),), t, dtype=torch.int64) for t, r in enumerate(per_tile)])
    if len(dets) == 0:
        return dets
    cut = cut_detections(dets, tile_index, windows, edge_margin)
    groups = _groups(len(dets), _matching_pairs(dets, tile_index, windows, match_iou))
    alone = [g[0] for g in groups if len(g) == 1]
    merged = [dets[alone]] + [_merge_group(dets, g, cut, tile_index, windows) for g in groups if len(g) > 1]
    result = CroppedInstances.cat(merged)
    return result[torch.argsort(result.scores, descending=True, stable=True)]
