"""Keypoints through the training transforms and the loader: hand-computed cases per transform."""

from __future__ import annotations

import pytest
import torch

from instaseg.config.schema import Config, InputConfig, TrainConfig
from instaseg.data.coco import Sample
from instaseg.data.loader import build_train_loader, collate
from instaseg.data.transforms import (
    Compose,
    Expand,
    PhotometricDistort,
    RandomHorizontalFlip,
    RandomSampleCrop,
    ResizeShortestEdge,
    build_transforms,
)
from instaseg.structures.instances import Targets
from instaseg.structures.keypoints import keypoint_flip_map

NAMES = ("head", "left_hand", "right_hand")
FLIP_MAP = keypoint_flip_map(NAMES)  # [0, 2, 1]
KEYPOINTS = torch.tensor([[[5.5, 3.5, 2.0], [0.0, 0.0, 0.0], [7.5, 6.5, 1.0]]])  # (1, 3, 3), one unlabelled


def _scene() -> tuple[torch.Tensor, Targets]:
    """A 10x20 image (H x W) with one instance, box [2, 2, 8, 8], and the keypoints above."""
    masks = torch.zeros(1, 10, 20, dtype=torch.bool)
    masks[0, 2:8, 2:8] = True
    image = torch.arange(3 * 10 * 20, dtype=torch.float32).reshape(3, 10, 20) % 255
    return image, Targets(torch.tensor([[2.0, 2.0, 8.0, 8.0]]), torch.tensor([0]), masks, keypoints=KEYPOINTS.clone())


def test_resize_scales_x_and_y() -> None:
    image, targets = _scene()
    out, result = ResizeShortestEdge((20,), 1000)(image, targets)  # x2 on both axes
    assert out.shape == (3, 20, 40)
    expected = torch.tensor([[[11.0, 7.0, 2.0], [0.0, 0.0, 0.0], [15.0, 13.0, 1.0]]])
    torch.testing.assert_close(result.keypoints, expected)


def test_flip_mirrors_and_swaps_left_and_right() -> None:
    image, targets = _scene()
    _, result = RandomHorizontalFlip(1.0, FLIP_MAP)(image, targets)
    # x -> 20 - x, then the left hand (unlabelled) and the right hand swap places
    expected = torch.tensor([[[14.5, 3.5, 2.0], [12.5, 6.5, 1.0], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(result.keypoints, expected)
    assert result.boxes.tolist() == [[12.0, 2.0, 18.0, 8.0]]


def test_flip_twice_is_the_identity() -> None:
    image, targets = _scene()
    flip = RandomHorizontalFlip(1.0, FLIP_MAP)
    out, result = flip(*flip(image, targets))
    torch.testing.assert_close(result.keypoints, targets.keypoints)
    torch.testing.assert_close(out, image)


def test_flip_without_a_flip_map_refuses_keypoints() -> None:
    image, targets = _scene()
    with pytest.raises(ValueError, match="no flip_map"):
        RandomHorizontalFlip(1.0)(image, targets)
    plain = Targets(targets.boxes, targets.labels, targets.masks)
    assert RandomHorizontalFlip(1.0)(image, plain)[1].keypoints is None


def test_expand_shifts_labelled_points_only() -> None:
    image, targets = _scene()
    _, result = Expand(3.0, p=1.0)(image, targets, torch.Generator().manual_seed(3))
    left, top = (result.boxes[0, :2] - targets.boxes[0, :2]).tolist()
    assert left > 0 or top > 0
    expected = KEYPOINTS + torch.tensor([left, top, 0.0])
    expected[0, 1] = 0.0
    torch.testing.assert_close(result.keypoints, expected)


def test_crop_shifts_and_unlabels_points_it_cuts_off() -> None:
    image, targets = _scene()
    out, result = RandomSampleCrop._crop(image, targets, (6, 0, 12, 10), torch.tensor([True]))
    assert out.shape == (3, 10, 6)
    # the head (x 5.5 -> -0.5) leaves the crop; the right hand moves to 1.5
    expected = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.5, 6.5, 1.0]]])
    torch.testing.assert_close(result.keypoints, expected)


def test_crop_selects_the_keypoints_of_kept_instances() -> None:
    image, targets = _scene()
    two = Targets(targets.boxes.repeat(2, 1), torch.tensor([0, 1]), targets.masks.repeat(2, 1, 1),
                  keypoints=torch.cat([KEYPOINTS, KEYPOINTS * torch.tensor([1.0, 1.0, 0.5])]))
    _, result = RandomSampleCrop._crop(image, two, (0, 0, 20, 10), torch.tensor([False, True]))
    assert result.labels.tolist() == [1]
    torch.testing.assert_close(result.keypoints[0, :, 2], torch.tensor([1.0, 0.0, 0.5]))


@pytest.mark.parametrize("augmentation", ["rcnn", "yolact"])
def test_built_pipelines_keep_keypoints_on_their_instances(augmentation: str) -> None:
    config = Config(input=InputConfig(square=40 if augmentation == "yolact" else 0, min_size_train=(20,),
                                      max_size_train=100),
                    train=TrainConfig(augmentation=augmentation, flip_prob=0.5))
    pipeline = build_transforms(config, train=True, keypoint_flip_map=FLIP_MAP)
    for seed in range(6):
        image, targets = _scene()
        out, result = pipeline(image, targets, torch.Generator().manual_seed(seed))
        assert result.keypoints is not None and result.keypoints.shape == (len(result), 3, 3)
        height, width = out.shape[-2:]
        labelled = result.keypoints[..., 2] > 0
        points = result.keypoints[labelled]
        assert ((points[:, 0] >= 0) & (points[:, 0] <= width) & (points[:, 1] >= 0) & (points[:, 1] <= height)).all()
        assert (result.keypoints[~labelled] == 0).all()


def test_photometric_leaves_keypoints() -> None:
    image, targets = _scene()
    _, result = Compose([PhotometricDistort()])(image, targets, torch.Generator().manual_seed(0))
    assert result.keypoints is targets.keypoints


def test_collate_and_train_loader_keep_keypoints() -> None:
    image, targets = _scene()
    samples = [Sample(image.to(torch.uint8), targets, image_id=7, crowd_boxes=targets.crowd_boxes)]
    torch.testing.assert_close(collate(samples).targets[0].keypoints, KEYPOINTS)
    loader = build_train_loader(samples, RandomHorizontalFlip(1.0, FLIP_MAP), batch_size=1, num_workers=0, seed=0)
    batch = next(iter(loader))
    torch.testing.assert_close(batch.targets[0].keypoints[0, 1], torch.tensor([12.5, 6.5, 1.0]))
