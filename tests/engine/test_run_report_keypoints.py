"""The run folder's pictures of a keypoint dataset and of a model without masks: joints and limbs
drawn in the training batches and in the validation predictions, boxes where there are no masks."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

from instaseg.engine.run_data import (load_train_batch, load_val_samples, save_train_batch, save_val_samples,
                                      train_pictures, val_samples)
from instaseg.engine.run_report import _train_batch, _val_predictions
from instaseg.structures.instances import Targets
from instaseg.viz.overlay import PALETTE

SKELETON = ((0, 1), (1, 2))


def _is_white(pixel: np.ndarray) -> bool:
    return bool((pixel >= 230).all())


def _near_colour(picture: np.ndarray, x: float, y: float, colour: np.ndarray) -> bool:
    patch = picture[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].reshape(-1, 3).astype(int)
    return bool((np.abs(patch - colour.astype(int)).sum(axis=1) <= 30).any())


def _batch() -> object:
    """One 40 x 60 gray image with one object of label 1 and three keypoints (the last unlabelled)."""
    masks = torch.zeros(1, 40, 60, dtype=torch.bool)
    masks[0, 5:35, 5:55] = True
    keypoints = torch.tensor([[[10.5, 10.5, 2.0], [40.5, 12.5, 2.0], [0.0, 0.0, 0.0]]])
    targets = Targets(boxes=torch.tensor([[5.0, 5.0, 55.0, 35.0]]), labels=torch.tensor([1]), masks=masks,
                      keypoints=keypoints)
    return type("Batch", (), {"images": [torch.full((3, 40, 60), 100.0)], "targets": [targets], "image_ids": [3]})


def test_train_batch_keeps_and_draws_keypoints(tmp_path):
    pictures = train_pictures(_batch(), max_side=30, skeleton=SKELETON)  # shrunk by 2
    np.testing.assert_allclose(pictures[0].keypoints[0, :2], [[5.25, 5.25, 2.0], [20.25, 6.25, 2.0]])
    path = save_train_batch(pictures, ["a", "b"], tmp_path / "plot_data" / "train_batch_0.npz")
    loaded, _ = load_train_batch(path)
    np.testing.assert_array_equal(loaded[0].keypoints, pictures[0].keypoints)
    assert loaded[0].skeleton == SKELETON
    picture = np.asarray(Image.open(_train_batch(path, tmp_path)).convert("RGB"))
    # the mosaic: a title strip, then the picture (enlarged 384 // 30 = 12x) under its own title
    strips = picture.shape[0] - 20 * 12
    x0, y0 = 5.25 * 12, 5.25 * 12 + strips
    assert _is_white(picture[int(y0), int(x0)])
    x1, y1 = 20.25 * 12, 6.25 * 12 + strips
    assert _near_colour(picture, (x0 + x1) / 2, (y0 + y1) / 2, PALETTE[1])  # the limb 0-1, class 1's colour


def _coco_with_keypoints() -> COCO:
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 40, "height": 30, "file_name": "a.png"}],
        "categories": [{"id": 4, "name": "figure", "keypoints": ["a", "b", "c"], "skeleton": [[1, 2], [2, 3]]}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [2, 2, 30, 20], "area": 600,
                         "iscrowd": 0, "segmentation": [[2, 2, 32, 2, 32, 22, 2, 22]], "num_keypoints": 2,
                         "keypoints": [5, 5, 2, 25, 6, 1, 0, 0, 0]}],
    }
    coco.createIndex()
    return coco


def test_val_samples_of_a_model_without_masks_draw_keypoints(tmp_path):
    image = np.full((30, 40, 3), 90, np.uint8)
    results = [{"image_id": 1, "category_id": 4, "bbox": [3.0, 3.0, 28.0, 18.0], "score": 0.9,
                "keypoints": [5.0, 5.0, 3.0, 25.0, 6.0, 2.0, 15.0, 15.0, -1.0]}]  # no segmentation
    samples = val_samples({1: image}, _coco_with_keypoints(), results, [4])
    assert samples[0].skeleton == ((0, 1), (1, 2))
    assert samples[0].gt[0]["keypoints"] == [[5.5, 5.5, 2.0], [25.5, 6.5, 1.0], [0.0, 0.0, 0.0]]
    assert samples[0].predictions[0]["keypoints"][2] == [15.5, 15.5, -1.0]
    assert "segmentation" not in samples[0].predictions[0]
    folder = tmp_path / "run"
    save_val_samples(samples, ["figure"], folder / "plot_data")
    loaded, _ = load_val_samples(folder / "plot_data" / "val_samples.json")
    assert loaded[0].skeleton == samples[0].skeleton
    [path] = _val_predictions(folder, tmp_path / "out")
    picture = np.asarray(Image.open(path).convert("RGB"))
    factor = 384 // 40
    right = picture.shape[1] - 40 * factor  # the prediction, right of ground truth
    top = picture.shape[0] - 30 * factor
    assert _is_white(picture[int(top + 5.5 * factor), int(right + 5.5 * factor)])  # predicted joint 0
    assert _near_colour(picture, right + 15.5 * factor, top + 6 * factor, PALETTE[0])  # limb 0-1
    assert not _is_white(picture[int(top + 15.5 * factor), int(right + 15.5 * factor)])  # joint 2 scores -1
    assert _is_white(picture[int(top + 6.5 * factor), int(25.5 * factor)])  # ground-truth joint 1 (v = 1)
    assert json.loads((folder / "plot_data" / "val_samples.json").read_text())["samples"][0]["skeleton"]
