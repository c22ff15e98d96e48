"""The keypoint head's config part: its modes are checked and agree with the components' choices."""

from __future__ import annotations

import dataclasses

import pytest

from instaseg.config import schema
from instaseg.config.schema import KeypointHeadConfig, mode_choices
from instaseg.errors import ConfigError
from instaseg.losses.keypoints import KEYPOINT_LOSS_NORMALIZATIONS
from instaseg.ops.keypoints import KEYPOINT_SCORES


def test_keypoint_head_config_defaults_are_the_papers() -> None:
    config = KeypointHeadConfig()
    assert (config.num_keypoints, config.conv_dims, config.pooler_resolution, config.heatmap_size) == (
        17, (512,) * 8, 14, 56)
    assert (config.loss_normalization, config.loss_weight, config.score) == ("visible", 1.0, "logit")


def test_keypoint_head_config_refuses_unknown_modes_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"model\.keypoint_head\.loss_normalization: expected one of 'visible', 'fixed'"):
        KeypointHeadConfig(loss_normalization="positives")
    with pytest.raises(ConfigError, match=r"model\.keypoint_head\.score: expected one of 'logit', 'detectron2'"):
        dataclasses.replace(KeypointHeadConfig(), score="softmax")
    assert KeypointHeadConfig(loss_normalization="fixed", loss_weight=4.0).loss_normalization == "fixed"


def test_keypoint_head_config_refuses_inconsistent_sizes() -> None:
    with pytest.raises(ConfigError, match="heatmap_size"):
        KeypointHeadConfig(heatmap_size=28)
    assert KeypointHeadConfig(pooler_resolution=7, heatmap_size=28).heatmap_size == 28
    with pytest.raises(ConfigError, match="conv_dims"):
        KeypointHeadConfig(conv_dims=())


def test_keypoint_modes_agree_with_the_components() -> None:
    assert mode_choices(schema.KeypointLossNormalization) == KEYPOINT_LOSS_NORMALIZATIONS
    assert mode_choices(schema.KeypointScore) == KEYPOINT_SCORES
