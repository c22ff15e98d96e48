"""``instaseg demo``'s overlays with a keypoint model without masks: ground-truth joints drawn, the
mask-less predictions drawn as boxes (no crash)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.cli.demo import _write_overlays
from instaseg.data.coco import CocoDataset
from instaseg.data.synthetic_keypoints import generate_keypoint_dataset
from instaseg.detectors.build import build_from_config, resolve_config
from instaseg.engine.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_overlays_draw_ground_truth_keypoints_and_maskless_predictions(tmp_path):
    data = generate_keypoint_dataset(tmp_path / "data", num_images=2, image_size=128, seed=2, val_fraction=0.5)
    val = CocoDataset(data.val_annotations, data.val_images)
    config = resolve_config("keypoint_rcnn_r18_fpn_tiny", 1, overrides=[
        "input.min_size_test=128", "input.max_size_test=128", "model.inference.detections_per_image=5"])
    torch.manual_seed(0)
    checkpoint = tmp_path / "untrained.pt"
    save_checkpoint(checkpoint, build_from_config(config), config,
                    categories={"ids": list(val.category_ids), "names": list(val.category_names)})
    _write_overlays(checkpoint, val, tmp_path / "overlays", count=1)
    [path] = sorted((tmp_path / "overlays").glob("*.png"))
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    truth = val[0].targets.keypoints.reshape(-1, 3)
    joints = truth[truth[:, 2] > 0, :2] * 2  # the demo shows the pictures at twice their size
    white = [(picture[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] >= 230).all(axis=2).any() for x, y in joints]
    assert len(joints) and np.mean(white) > 0.6  # joints close together or under a label may not show
