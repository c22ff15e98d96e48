"""Tests for the synthetic stick-figure keypoint dataset: it loads, its keypoints sit on its masks, it is seeded."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from instaseg.data.coco import CocoDataset
from instaseg.data.synthetic import SyntheticDataset
from instaseg.data.synthetic_keypoints import (
    FIGURE_KEYPOINT_NAMES,
    FIGURE_KEYPOINT_SIGMAS,
    FIGURE_SKELETON,
    generate_keypoint_dataset,
)
from instaseg.data.transforms import RandomHorizontalFlip
from instaseg.structures.keypoints import keypoint_flip_map

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return generate_keypoint_dataset(tmp_path_factory.mktemp("fig"), num_images=10, image_size=64, seed=3,
                                     val_fraction=0.2)


@pytest.fixture(scope="module")
def dataset(figures: SyntheticDataset) -> CocoDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no skipped entries, no num_keypoints mismatch
        return CocoDataset(figures.train_annotations, figures.train_images)


def test_json_loads_with_its_keypoint_schema(dataset: CocoDataset) -> None:
    assert dataset.keypoint_names == FIGURE_KEYPOINT_NAMES and dataset.num_keypoints == 13
    assert dataset.skeleton == list(FIGURE_SKELETON) and dataset.category_names == ["figure"]
    assert len(dataset) == 8 and dataset.skipped == {}
    counts = [len(dataset[i].targets) for i in range(len(dataset))]
    assert sum(counts) >= 6 and max(counts) <= 3


def test_flip_map_pairs_every_side(dataset: CocoDataset) -> None:
    flip_map = dataset.keypoint_flip_map
    assert flip_map == keypoint_flip_map(FIGURE_KEYPOINT_NAMES)
    for k, name in enumerate(FIGURE_KEYPOINT_NAMES):
        twin = FIGURE_KEYPOINT_NAMES[flip_map[k]]
        assert twin == name.replace("left_", "right_") if name.startswith("left_") else \
            twin == name.replace("right_", "left_") if name.startswith("right_") else twin == name
    assert sum(flip_map[k] != k for k in range(13)) == 10


def _check_on_masks(keypoints: torch.Tensor, masks: torch.Tensor) -> tuple[int, int]:
    """Every v = 2 point on its own mask; every v = 1 point off it but on a figure above. Counts of both."""
    visible = occluded = 0
    for g in range(keypoints.shape[0]):
        for x, y, v in keypoints[g].tolist():
            if v == 0:
                assert x == y == 0
                continue
            col, row = int(x), int(y)
            assert x - col == 0.5 and y - row == 0.5  # pixel centres
            if v == 2:
                assert masks[g, row, col], (g, x, y)
                visible += 1
            else:
                assert not masks[g, row, col] and masks[g + 1:, row, col].any(), (g, x, y)
                occluded += 1
    return visible, occluded


def test_visible_keypoints_lie_on_their_masks(dataset: CocoDataset) -> None:
    totals = [_check_on_masks(s.targets.keypoints, s.targets.masks) for s in (dataset[i] for i in range(len(dataset)))]
    assert sum(t[0] for t in totals) > 40  # the check saw many points


def test_flipped_keypoints_stay_on_the_flipped_masks(dataset: CocoDataset) -> None:
    flip = RandomHorizontalFlip(1.0, dataset.keypoint_flip_map)
    for i in range(len(dataset)):
        sample = dataset[i]
        image, targets = flip(sample.image.float(), sample.targets)
        _check_on_masks(targets.keypoints, targets.masks)
        # a figure facing the viewer has its left shoulder on the image's right; its mirror image too
        # (without the left/right swap the flipped left shoulder would be on the image's left)
        left, right = FIGURE_KEYPOINT_NAMES.index("left_shoulder"), FIGURE_KEYPOINT_NAMES.index("right_shoulder")
        for keypoints in (sample.targets.keypoints, targets.keypoints):
            both = (keypoints[:, [left, right], 2] > 0).all(dim=1)
            assert (keypoints[both, left, 0] > keypoints[both, right, 0]).all()


def test_num_keypoints_counts_the_labelled(figures: SyntheticDataset) -> None:
    doc = json.loads(figures.val_annotations.read_text())
    assert doc["categories"][0]["skeleton"][0] == [1, 2]  # 1-based in the json
    for ann in doc["annotations"] + json.loads(figures.train_annotations.read_text())["annotations"]:
        assert ann["num_keypoints"] == sum(v > 0 for v in ann["keypoints"][2::3])


def test_the_category_declares_one_oks_sigma_per_joint(figures: SyntheticDataset, dataset: CocoDataset) -> None:
    category = json.loads(figures.train_annotations.read_text())["categories"][0]
    assert category["sigmas"] == list(FIGURE_KEYPOINT_SIGMAS) == [0.05] * len(FIGURE_KEYPOINT_NAMES)
    assert dataset.keypoint_names == tuple(category["keypoints"])  # the extra key loads (warnings are errors)


def test_same_seed_same_bytes(figures: SyntheticDataset, tmp_path: Path) -> None:
    again = generate_keypoint_dataset(tmp_path / "a", num_images=10, image_size=64, seed=3, val_fraction=0.2)
    assert again.train_annotations.read_bytes() == figures.train_annotations.read_bytes()
    assert (again.val_images / "000010.png").read_bytes() == (figures.val_images / "000010.png").read_bytes()
    other = generate_keypoint_dataset(tmp_path / "b", num_images=2, image_size=64, seed=4, val_fraction=0.0)
    first = json.loads(figures.train_annotations.read_text())["annotations"][0]["keypoints"]
    assert json.loads(other.train_annotations.read_text())["annotations"][0]["keypoints"] != first


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_figures"):
        generate_keypoint_dataset(tmp_path, num_images=1, max_figures=0)
