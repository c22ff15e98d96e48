"""Sliced inference keeps predicted keypoints: shifted into the image, and the top view's on a stitched object."""

from __future__ import annotations

import dataclasses

import torch

from instaseg.engine.tile_merge import merge_tile_detections
from instaseg.engine.tiling import predict_tiles, tile_grid
from instaseg.structures.instances import CroppedInstances
from tests.engine.test_tiling import ColourDetector, _scene, _square


def test_stitched_detection_keeps_the_top_views_keypoints() -> None:
    image, _, _ = _scene(64, 112, [(_square(64, 112, 40, 10, 70, 30), 60)])  # cut by both tiles
    windows = tile_grid((64, 112), 64, 0.25).windows()
    per_tile = predict_tiles(ColourDetector(), image, windows)
    views = []
    for t, view in enumerate(per_tile):
        keypoints = torch.tensor([[[50.0 + t, 20.0, 0.9]]])
        views.append(dataclasses.replace(view, scores=torch.tensor([0.5 + 0.1 * t]), keypoints=keypoints))
    merged = merge_tile_detections(views, windows, (64, 112))
    assert len(merged) == 1 and merged.boxes[0].tolist() == [40, 10, 70, 30]
    assert torch.equal(merged.keypoints, torch.tensor([[[51.0, 20.0, 0.9]]]))  # the right view scores higher
    assert isinstance(merged, CroppedInstances)
