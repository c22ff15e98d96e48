"""The trainer's default loader hands a keypoint dataset's flip map to the flip transform."""

from __future__ import annotations

import torch

from instaseg.config.schema import Config, InputConfig, TrainConfig
from instaseg.data.coco import Sample
from instaseg.engine.train import _default_train_loader
from instaseg.structures.instances import Targets


class _Figures(list):
    """A one-item dataset of 10x20 images with keypoints (head, left_hand, right_hand)."""

    keypoint_flip_map = [0, 2, 1]


def _dataset() -> _Figures:
    masks = torch.zeros(1, 10, 20, dtype=torch.bool)
    masks[0, 2:8, 2:8] = True
    keypoints = torch.tensor([[[5.5, 3.5, 2.0], [3.5, 6.5, 2.0], [7.5, 6.5, 1.0]]])
    targets = Targets(torch.tensor([[2.0, 2.0, 8.0, 8.0]]), torch.tensor([0]), masks, keypoints=keypoints)
    return _Figures([Sample(torch.zeros(3, 10, 20, dtype=torch.uint8), targets, 1, targets.crowd_boxes)])


def test_default_loader_flips_keypoints_with_the_dataset_flip_map() -> None:
    config = Config(input=InputConfig(min_size_train=(10,), max_size_train=100),
                    train=TrainConfig(flip_prob=1.0, num_workers=0))
    batch = next(iter(_default_train_loader(_dataset(), config, 1, 0, False)))
    expected = torch.tensor([[[14.5, 3.5, 2.0], [12.5, 6.5, 1.0], [16.5, 6.5, 2.0]]])  # x -> 20 - x, hands swap
    torch.testing.assert_close(batch.targets[0].keypoints, expected)


def test_without_flips_the_flip_map_is_not_read() -> None:
    class _Unpaired(_Figures):
        @property
        def keypoint_flip_map(self) -> list[int]:
            raise AssertionError("read without flips")

    config = Config(input=InputConfig(min_size_train=(10,), max_size_train=100),
                    train=TrainConfig(flip_prob=0.0, num_workers=0))
    batch = next(iter(_default_train_loader(_Unpaired(_dataset()), config, 1, 0, False)))
    assert batch.targets[0].keypoints.shape == (1, 3, 3)
