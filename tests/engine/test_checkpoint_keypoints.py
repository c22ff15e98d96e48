"""Keypoint names and skeleton travel from the training set to the checkpoint and back."""

from __future__ import annotations

import pytest

from instaseg.data.coco import CocoDataset
from instaseg.data.synthetic_keypoints import FIGURE_KEYPOINT_NAMES, FIGURE_SKELETON, generate_keypoint_dataset
from instaseg.engine.checkpoint import checkpoint_keypoints
from instaseg.engine.train import _categories
from instaseg.errors import CheckpointError
from instaseg.structures.keypoints import COCO_PERSON_KEYPOINT_NAMES, COCO_PERSON_SKELETON


def test_training_stores_what_predict_reads_back(tmp_path):
    data = generate_keypoint_dataset(tmp_path, num_images=2, image_size=32, val_fraction=0.5)
    categories = _categories(CocoDataset(data.train_annotations, data.train_images))
    assert categories["names"] == ["figure"]
    schema = checkpoint_keypoints({"categories": categories}, len(FIGURE_KEYPOINT_NAMES))
    assert schema.names == FIGURE_KEYPOINT_NAMES
    assert schema.skeleton == FIGURE_SKELETON


def test_a_dataset_without_keypoints_stores_none(tmp_path):
    from instaseg.data.synthetic import generate_synthetic_dataset

    data = generate_synthetic_dataset(tmp_path, num_images=2, image_size=32, val_fraction=0.5)
    assert "keypoints" not in _categories(CocoDataset(data.train_annotations, data.train_images))


def test_fallbacks_without_stored_keypoints():
    assert checkpoint_keypoints({}, 0) is None  # no keypoint head
    person = checkpoint_keypoints({"categories": {"ids": [1], "names": ["person"]}}, 17)
    assert person.names == COCO_PERSON_KEYPOINT_NAMES and person.skeleton == COCO_PERSON_SKELETON
    assert max(max(pair) for pair in COCO_PERSON_SKELETON) == 16 and len(COCO_PERSON_SKELETON) == 19
    other = checkpoint_keypoints({}, 3)
    assert other.names == ("keypoint_0", "keypoint_1", "keypoint_2") and other.skeleton == ()


def test_stored_keypoints_that_do_not_fit_the_model_are_refused():
    payload = {"categories": {"keypoints": {"names": ["a", "b"], "skeleton": [[0, 1]]}}}
    with pytest.raises(CheckpointError, match="2 keypoints"):
        checkpoint_keypoints(payload, 3)
