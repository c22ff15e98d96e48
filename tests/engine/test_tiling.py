"""Sliced inference: tile windows against a slow reference, coordinates, and the merge rule on exact
detections (a fake detector that finds coloured shapes)."""

import math

import numpy as np
import pytest
import torch

from instaseg.engine.tile_merge import merge_tile_detections, overlapping_tile_pairs
from instaseg.engine.tiling import MIN_TILE, predict_tiles, sliced_predict, tile_grid, tile_starts
from instaseg.errors import InstasegError
from instaseg.structures.instances import CroppedInstances, Instances

RED_LABELS = {60: 0, 120: 1}  # the red channel of a shape's colour is its class


class ColourDetector:
    """Detects every non-black colour of a tile as one object: mask = its pixels, box = their extent.

    Label from the red channel (``RED_LABELS``); score from the green channel, so views of one
    shape in different tiles score the same. Records the batch size of each call.
    """

    num_classes = 2

    def __init__(self, with_mask_scores: bool = False):
        self.batch_sizes: list[int] = []
        self.with_mask_scores = with_mask_scores

    def predict(self, images):
        self.batch_sizes.append(len(images))
        return [self._detect(image) for image in images]

    def _detect(self, image):
        _, h, w = image.shape
        pixels = image.round().to(torch.int64).reshape(3, -1)
        codes = (pixels[0] << 16) | (pixels[1] << 8) | pixels[2]
        found = [c for c in torch.unique(codes).tolist() if c]
        masks = torch.stack([(codes == c).reshape(h, w) for c in found]) if found else torch.zeros(0, h, w, dtype=torch.bool)
        boxes = []
        for mask in masks:
            ys, xs = torch.nonzero(mask, as_tuple=True)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        scores = torch.tensor([((c >> 8) & 255) / 255.0 for c in found])
        return Instances(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), scores,
                         torch.tensor([RED_LABELS[c >> 16] for c in found], dtype=torch.int64), masks,
                         scores * 0.5 if self.with_mask_scores else None)


def _paint(image, mask, red, ident):
    image[0][mask], image[1][mask], image[2][mask] = red, 100 + ident, 7 * ident + 1


def _square(height, width, x0, y0, x1, y1):
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _disc(height, width, cx, cy, radius):
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2


def _scene(height, width, shapes):
    """``shapes``: (mask, red) pairs -> (uint8 image, ground-truth masks, labels)."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    for ident, (mask, red) in enumerate(shapes):
        _paint(image, mask, red, ident)
    return image, torch.stack([m for m, _ in shapes]), torch.tensor([RED_LABELS[r] for _, r in shapes])


def _mask_iou(a, b):
    return float((a & b).sum()) / float((a | b).sum())


# --- tiles ---------------------------------------------------------------------------------------

def _reference_windows(height, width, tile, overlap):
    """Slow reference: per axis, step by the largest stride allowed until the end is reached, then
    spread the same number of tiles evenly; every window enumerated as a pixel set."""
    def axis(length):
        if length <= tile:
            return [(0, length)]
        stride = tile - math.floor(round(tile * overlap, 9))
        count = 1
        while (count - 1) * stride < length - tile:
            count += 1
        return [(round_down(i * (length - tile), count - 1), round_down(i * (length - tile), count - 1) + tile)
                for i in range(count)]

    def round_down(num, den):
        return num // den

    return [(x0, y0, x1, y1) for y0, y1 in axis(height) for x0, x1 in axis(width)]


@pytest.mark.parametrize("height,width,tile,overlap", [
    (100, 100, 64, 0.2), (64, 200, 64, 0.0), (1000, 333, 128, 0.5), (50, 90, 64, 0.25), (257, 129, 64, 0.9),
    (300, 300, 100, 0.29), (64, 64, 64, 0.3),
])
def test_tiles_cover_the_image_exactly(height, width, tile, overlap):
    grid = tile_grid((height, width), tile, overlap)
    windows = grid.windows()
    assert windows == _reference_windows(height, width, tile, overlap)
    coverage = np.zeros((height, width), dtype=np.int64)
    for x0, y0, x1, y1 in windows:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (y1 - y0, x1 - x0) == (min(tile, height), min(tile, width))  # no partial tile
        coverage[y0:y1, x0:x1] += 1
    assert coverage.min() >= 1
    assert max(x1 for _, _, x1, _ in windows) == width and max(y1 for _, _, _, y1 in windows) == height
    shared = math.floor(round(tile * overlap, 9))
    for starts, length in ((grid.x_starts, width), (grid.y_starts, height)):
        assert starts[0] == 0
        for a, b in zip(starts, starts[1:]):
            assert 0 < b - a <= tile - shared  # neighbours share at least floor(tile * overlap) px
    # overlapping pairs: brute force over all pairs of windows
    brute = [(a, b) for a in range(len(windows)) for b in range(a + 1, len(windows))
             if min(windows[a][2], windows[b][2]) > max(windows[a][0], windows[b][0])
             and min(windows[a][3], windows[b][3]) > max(windows[a][1], windows[b][1])]
    assert overlapping_tile_pairs(windows) == brute


def test_tile_starts_edge_cases():
    assert tile_starts(64, 64, 0.5) == [0]
    assert tile_starts(30, 64, 0.5) == [0]
    assert tile_starts(128, 64, 0.0) == [0, 64]
    assert tile_starts(129, 64, 0.0) == [0, 32, 65]


@pytest.mark.parametrize("tile,overlap", [(MIN_TILE - 1, 0.2), (0, 0.2), (64.5, 0.2), (True, 0.2),
                                          (128, -0.1), (128, 1.0), (128, 1.5), (128, float("nan"))])
def test_bad_tiling_values_are_refused(tile, overlap):
    with pytest.raises(InstasegError):
        tile_grid((500, 500), tile, overlap)
    with pytest.raises(InstasegError):
        sliced_predict(ColourDetector(), torch.zeros(3, 100, 100), tile, overlap)


# --- merging -------------------------------------------------------------------------------------

def _four_tile_scene():
    """A 112 x 112 image: 2 x 2 tiles of 64 px sharing 16 px (the strip 48..64 on each axis).

    Small shapes fit in a strip (whole in two or four tiles); large ones are cut by every tile
    that sees them (stitched). Two same-class squares 2 px apart across a border stay two.
    """
    h = w = 112
    shapes = [
        (_square(h, w, 50, 10, 60, 20), 60),     # small, on the vertical border, top: whole in 2 tiles
        (_square(h, w, 40, 80, 70, 100), 60),    # large, vertical border, bottom: cut in both
        (_disc(h, w, 18, 56, 13), 120),          # large disc on the horizontal border, left
        (_square(h, w, 85, 50, 95, 60), 120),    # small, horizontal border, right: whole in 2 tiles
        (_disc(h, w, 56, 56, 16), 60),           # large disc on the 4-way corner: cut in 4 tiles
        (_square(h, w, 52, 100, 55, 104), 120),  # small, vertical border at the bottom edge: whole in 2
        (_square(h, w, 100, 20, 110, 30), 60),   # inside one tile only
        (_square(h, w, 30, 22, 50, 40), 120),    # same class as its twin, 2 px apart in the strip
        (_square(h, w, 52, 22, 66, 40), 120),
    ]
    return _scene(h, w, shapes)


@pytest.mark.parametrize("with_mask_scores", [False, True])
def test_four_tiles_give_one_full_detection_per_object(with_mask_scores):
    image, gt_masks, gt_labels = _four_tile_scene()
    detector = ColourDetector(with_mask_scores)
    result = sliced_predict(detector, image, tile=64, overlap=0.25, batch_size=3)
    assert len(tile_grid((112, 112), 64, 0.25)) == 4 and detector.batch_sizes == [3, 1]
    assert isinstance(result, CroppedInstances) and len(result) == len(gt_masks)
    masks = result.masks.to_full()
    for g in range(len(gt_masks)):
        ious = [_mask_iou(masks[d], gt_masks[g]) for d in range(len(result))]
        best = int(np.argmax(ious))
        assert ious[best] == 1.0, (g, ious[best])
        assert int(result.labels[best]) == int(gt_labels[g])
        ys, xs = torch.nonzero(gt_masks[g], as_tuple=True)
        assert result.boxes[best].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert (result.mask_scores is not None) == with_mask_scores
    assert torch.all(result.scores[:-1] >= result.scores[1:])


def test_objects_inside_one_tile_equal_a_prediction_on_the_crop():
    image, _, _ = _four_tile_scene()
    result = sliced_predict(ColourDetector(), image, tile=64, overlap=0.25)
    direct = ColourDetector().predict([image[:, 0:64, 48:112].float()])[0]  # the top-right tile
    inside = direct.boxes[:, 0] >= 50  # the square at x 100..110 (50..60 in the tile): only this tile sees it
    assert int(inside.sum()) == 1
    shifted = direct.boxes[inside] + torch.tensor([48.0, 0.0, 48.0, 0.0])
    match = torch.nonzero((result.boxes == shifted).all(dim=1)).flatten()
    assert match.numel() == 1
    full = result[match].to_instances().masks[0]
    assert torch.equal(full[0:64, 48:112], direct.masks[inside][0]) and int(full.sum()) == int(direct.masks[inside][0].sum())


def test_a_partial_view_is_dropped_for_the_whole_one():
    """A shape whole in the left tile, cut by the right tile's left edge: the left view wins as is."""
    image, gt, _ = _scene(64, 112, [(_square(64, 112, 40, 10, 60, 30), 60)])
    windows = tile_grid((64, 112), 64, 0.25).windows()
    assert windows == [(0, 0, 64, 64), (48, 0, 112, 64)]
    per_tile = predict_tiles(ColourDetector(), image, windows)
    assert [len(r) for r in per_tile] == [1, 1]
    merged = merge_tile_detections(per_tile, windows, (64, 112))
    assert len(merged) == 1 and merged.boxes[0].tolist() == [40, 10, 60, 30]
    assert torch.equal(merged.to_instances().masks[0], gt[0])


def test_views_that_disagree_in_the_shared_window_stay_apart():
    """Mask IoU inside the shared window below ``match_iou``: two detections, not one."""
    image, gt, _ = _scene(64, 112, [(_square(64, 112, 40, 10, 70, 30), 60)])
    windows = tile_grid((64, 112), 64, 0.25).windows()
    per_tile = predict_tiles(ColourDetector(), image, windows)
    right = per_tile[1]
    right.masks.crops[0][:, : 12] = False  # the right view loses most of its part in the strip
    assert len(merge_tile_detections(per_tile, windows, (64, 112))) == 2
    assert len(merge_tile_detections(per_tile, windows, (64, 112), match_iou=0.1)) == 1


def test_stitching_takes_each_pixel_from_the_view_that_sees_it_deepest():
    """Two cut views with errors near their own cut edges: the stitched mask keeps neither error
    (a union of the masks would keep both)."""
    image, gt, _ = _scene(64, 112, [(_square(64, 112, 40, 10, 70, 30), 60)])
    windows = tile_grid((64, 112), 64, 0.25).windows()  # shared strip: x 48..64, midpoint 56
    per_tile = predict_tiles(ColourDetector(), image, windows)
    left, right = (r.to_instances() for r in per_tile)
    left.masks[0, 30:34, 60:64] = True  # spurious pixels 0-4 px from the left tile's cut edge (x = 64)
    right.masks[0, 10:14, 48:50] = False  # missing pixels 0-2 px from the right tile's cut edge (x = 48)
    per_tile = [CroppedInstances.from_instances(left), CroppedInstances.from_instances(right)]
    merged = merge_tile_detections(per_tile, windows, (64, 112))
    assert len(merged) == 1 and merged.boxes[0].tolist() == [40, 10, 70, 30]  # the union of the views' boxes
    assert torch.equal(merged.to_instances().masks[0], gt[0])


def test_image_smaller_than_a_tile_is_one_partial_tile():
    image, gt, _ = _scene(40, 50, [(_square(40, 50, 5, 5, 20, 30), 60), (_disc(40, 50, 35, 20, 8), 120)])
    result = sliced_predict(ColourDetector(), image, tile=64, overlap=0.2)
    direct = ColourDetector().predict([image.float()])[0]
    assert len(result) == 2
    order = torch.argsort(direct.scores, descending=True)
    assert torch.equal(result.boxes, direct.boxes[order]) and torch.equal(result.masks.to_full(), direct.masks[order])


def test_score_threshold_and_empty_images():
    image, _, _ = _four_tile_scene()
    high = sliced_predict(ColourDetector(), image, tile=64, overlap=0.25, score_threshold=104 / 255)
    assert len(high) > 0 and float(high.scores.min()) >= 104 / 255
    empty = sliced_predict(ColourDetector(), torch.zeros(3, 150, 90), tile=64)
    assert len(empty) == 0 and empty.image_size == (150, 90)


# --- a real model: the tile -> image mapping is exact ---------------------------------------------

def test_tile_results_are_the_crop_predictions_shifted():
    from instaseg.config.io import apply_overrides
    from instaseg.config.presets import get_preset
    from instaseg.detectors.build import build_from_config

    config = apply_overrides(get_preset("mask_rcnn_r18_fpn_tiny"),
                             ["input.min_size_test=64", "input.max_size_test=64", "model.inference.score_thresh=0.0",
                              "model.inference.detections_per_image=10", "model.rpn.pre_nms_topk_test=150",
                              "model.rpn.post_nms_topk_test=50"])
    model = build_from_config(config).eval()
    image = (torch.rand(3, 64, 110) * 255).to(torch.uint8)
    windows = tile_grid((64, 110), 64, 0.2).windows()
    assert len(windows) == 2
    per_tile = predict_tiles(model, image, windows, batch_size=1)
    for (x0, y0, x1, y1), found in zip(windows, per_tile):
        direct = model.predict([image[:, y0:y1, x0:x1].float()])[0]
        assert len(found) == len(direct) > 0
        assert torch.equal(found.boxes, direct.boxes + torch.tensor([x0, y0, x0, y0], dtype=torch.float32))
        full = found.to_instances().masks
        assert torch.equal(full[:, y0:y1, x0:x1], direct.masks) and int(full.sum()) == int(direct.masks.sum())
    merged = sliced_predict(model, image, tile=64, overlap=0.2)
    assert 0 < len(merged) <= sum(len(r) for r in per_tile)
    assert merged.image_size == (64, 110)
