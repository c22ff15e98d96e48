"""Crowd regions travel as ``Targets.crowd_boxes``: from the COCO json through the transforms and the
train loader to YOLACT's anchor matching (ignored anchors); Mask R-CNN does not read them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.config.presets import get_preset
from instaseg.data.coco import CocoDataset
from instaseg.data.loader import build_train_loader
from instaseg.data.transforms import (
    Expand,
    RandomHorizontalFlip,
    RandomSampleCrop,
    ResizeSquare,
    build_transforms,
)
from instaseg.hub import build_model
from instaseg.structures.instances import Targets

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _targets(h: int, w: int, boxes: list[list[float]], crowd: list[list[float]]) -> Targets:
    """Instances with rectangle masks filling their (integer) boxes, plus crowd boxes."""
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        masks[k, int(y1):int(y2), int(x1):int(x2)] = True
    return Targets(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.arange(len(boxes)), masks,
                   torch.tensor(crowd, dtype=torch.float32).reshape(-1, 4))


def test_targets_default_to_no_crowd_and_check_the_shape() -> None:
    plain = Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 5, 5, dtype=torch.bool))
    assert plain.crowd_boxes.shape == (0, 4)
    with pytest.raises(ValueError, match="crowd_boxes"):
        Targets(plain.boxes, plain.labels, plain.masks, torch.zeros(3))
    moved = _targets(8, 8, [[1, 1, 4, 4]], [[0, 0, 2, 3]]).to("cpu")
    assert moved.crowd_boxes.tolist() == [[0.0, 0.0, 2.0, 3.0]]


def test_deterministic_transforms_move_crowd_boxes() -> None:
    image = torch.rand(3, 20, 40) * 255
    targets = _targets(20, 40, [[2, 2, 10, 10]], [[4, 6, 30, 16]])
    _, flipped = RandomHorizontalFlip(p=1.0)(image, targets)
    assert flipped.crowd_boxes.tolist() == [[40 - 30, 6, 40 - 4, 16]]
    _, resized = ResizeSquare(80)(image, targets)  # x * 2, y * 4
    assert resized.crowd_boxes.tolist() == [[8, 24, 60, 64]]


@pytest.mark.parametrize("seed", range(6))
def test_random_geometry_moves_crowd_boxes_like_instance_boxes(seed: int) -> None:
    """A crowd box equal to an instance box stays equal to it through Expand and the SSD crop
    (whenever the crop keeps the instance); the crowd box is never dropped unless cut away."""
    image = torch.rand(3, 30, 30) * 255
    boxes = [[3, 4, 15, 20], [12, 10, 28, 27]]
    targets = _targets(30, 30, boxes, boxes)
    generator = torch.Generator().manual_seed(seed)
    image, expanded = Expand(3.0, p=1.0)(image, targets, generator)
    torch.testing.assert_close(expanded.crowd_boxes, expanded.boxes)
    _, cropped = RandomSampleCrop()(image, expanded, generator)
    for box in cropped.boxes.tolist():
        assert box in cropped.crowd_boxes.tolist()
    for x1, y1, x2, y2 in cropped.crowd_boxes.tolist():
        assert x2 > x1 and y2 > y1  # empty (cut away) crowd boxes are dropped


def _crowd_dataset(root: Path) -> CocoDataset:
    """One 48x48 image: an object in the top-left corner and a crowd region on the right half."""
    (root / "img").mkdir()
    Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(root / "img" / "a.png")
    doc = {"images": [{"id": 5, "file_name": "a.png", "height": 48, "width": 48}],
           "categories": [{"id": 1, "name": "thing"}],
           "annotations": [
               {"id": 1, "image_id": 5, "category_id": 1, "bbox": [2, 2, 12, 12], "iscrowd": 0,
                "segmentation": [[2, 2, 14, 2, 14, 14, 2, 14]]},
               {"id": 2, "image_id": 5, "category_id": 1, "bbox": [24, 0, 24, 48], "iscrowd": 1,
                "segmentation": {"size": [48, 48], "counts": [24 * 48, 24 * 48]}}]}
    (root / "ann.json").write_text(json.dumps(doc))
    return CocoDataset(root / "ann.json", root / "img")


def test_coco_crowd_reaches_the_training_batch(tmp_path: Path) -> None:
    dataset = _crowd_dataset(tmp_path)
    assert dataset[0].targets.crowd_boxes.tolist() == [[24.0, 0.0, 48.0, 48.0]]
    config = get_preset("yolact_r18_tiny")
    loader = build_train_loader(dataset, build_transforms(config, train=True), 2, 0, seed=3)
    batch = next(iter(loader))
    for image, targets in zip(batch.images, batch.targets):
        assert image.shape[-2:] == (128, 128)
        # The augmented crowd box still covers the part of the image the crowd pixels landed on.
        assert targets.crowd_boxes.shape[1] == 4 and (targets.crowd_boxes >= 0).all()
        assert (targets.crowd_boxes <= 128).all()


def test_yolact_ignores_anchors_inside_crowd_regions() -> None:
    model = build_model("yolact_r18_tiny", input__square=64).train()
    plain = _targets(64, 64, [[4, 4, 20, 20]], [])
    crowded = _targets(64, 64, [[4, 4, 20, 20]], [[32, 0, 64, 64]])
    images = [torch.rand(3, 64, 64) * 255]
    with torch.no_grad():
        raw_plain = model(images, [plain])
    raw_crowd = model(images, [crowded])
    matched_plain, matched_crowd, anchors = raw_plain.anchor_targets[0], raw_crowd.anchor_targets[0], raw_plain.anchors
    # Independent rule: intersection with the crowd box over the anchor's own area > 0.7.
    ix = (anchors[:, 2].clamp(max=64) - anchors[:, 0].clamp(min=32)).clamp(min=0)
    iy = (anchors[:, 3].clamp(max=64) - anchors[:, 1].clamp(min=0)).clamp(min=0)
    area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    covered = ix * iy / area > 0.7
    positive = matched_plain.positive
    assert covered.any() and not (covered & positive).any()
    expected = matched_plain.labels.clone()
    expected[covered] = -1
    assert torch.equal(matched_crowd.labels, expected)
    total, _ = model.loss(raw_crowd, [crowded])
    assert torch.isfinite(total)


def test_mask_rcnn_does_not_read_crowd_boxes() -> None:
    model = build_model("mask_rcnn_r18_fpn_tiny").train()
    plain = _targets(64, 64, [[4, 4, 30, 30]], [])
    crowded = _targets(64, 64, [[4, 4, 30, 30]], [[32, 0, 64, 64]])
    images = [torch.rand(3, 64, 64) * 255]
    losses = []
    for targets in (plain, crowded):
        torch.manual_seed(0)
        _, terms = model.loss(model(images, [targets]), [targets])
        losses.append({k: float(v.detach()) for k, v in terms.items()})
    assert losses[0] == losses[1]
