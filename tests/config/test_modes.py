"""Modes (``Literal`` config fields) are refused when the config is built, naming the allowed values."""

import dataclasses
import re
import typing

import pytest

from instaseg.config import Config, apply_overrides, config_from_dict, config_to_dict, get_preset
from instaseg.config import schema
from instaseg.config.schema import (
    FPNConfig,
    InferenceConfig,
    MaskRCNNConfig,
    TrainConfig,
    YolactConfig,
    YolactConventions,
    mode_choices,
)
from instaseg.errors import ConfigError

BAD = "no_such_mode"


def _mode_fields(node: object, prefix: str) -> list[tuple[str, tuple[str, ...]]]:
    """``(key, allowed values)`` of every Literal field under the config part ``node``."""
    found = []
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(node, f.name)
        if typing.get_origin(hints[f.name]) is typing.Literal:
            found.append((key, typing.get_args(hints[f.name])))
        elif dataclasses.is_dataclass(value):
            found.extend(_mode_fields(value, key))
    return found


_BASES = {"mask_rcnn": Config(), "yolact": Config(model=YolactConfig())}
MODE_FIELDS = [(arch, key, choices) for arch, base in _BASES.items() for key, choices in _mode_fields(base, "")]


def test_the_schema_has_the_modes_the_issue_lists():
    keys = {key for _, key, _ in MODE_FIELDS}
    expected = {"model.inference.nms", "model.mask_head.paste", "model.box_head.pooler_type",
                "input.resize_rounding", "input.resize_filter", "model.rpn.anchor_strides",
                "model.conventions.crop", "model.fpn.extra", "model.fpn.extra_from", "train.optimizer",
                "train.schedule", "train.precision", "train.augmentation", "model.backbone.norm", "model.backbone.name",
                "model.conventions.box_clip", "model.conventions.fast_nms_fill", "model.conventions.rescoring_iou",
                "model.inference.soft_nms_method", "model.mask_head.head", "model.mask_head.loss",
                "model.box_head.head", "model.rpn.anchor_convention", "input.channel_order", "model.arch"}
    assert keys == expected


@pytest.mark.parametrize("arch, key, choices", MODE_FIELDS, ids=[f"{a}:{k}" for a, k, _ in MODE_FIELDS])
def test_an_unknown_mode_is_refused_at_set_time_naming_the_allowed_values(arch, key, choices):
    with pytest.raises(ConfigError) as error:
        apply_overrides(_BASES[arch], [f"{key}={BAD}"])
    message = str(error.value)
    assert message.startswith(f"{key}:") and repr(BAD) in message
    for choice in choices:
        assert repr(choice) in message


@pytest.mark.parametrize("arch, key, choices", MODE_FIELDS, ids=[f"{a}:{k}" for a, k, _ in MODE_FIELDS])
def test_an_unknown_mode_is_refused_in_a_config_dict(arch, key, choices):
    data = config_to_dict(_BASES[arch])
    node = data
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = BAD
    with pytest.raises(ConfigError, match=re.escape(f"{key}: expected one of")):
        config_from_dict(data)


def test_every_allowed_mode_is_accepted_or_refused_for_its_architecture():
    refused = {("mask_rcnn", "model.inference.nms", "fast_nms")} | {
        ("yolact", "model.fpn.extra", kind) for kind in ("maxpool", "none")
    }
    for arch, key, choices in MODE_FIELDS:
        for choice in choices:
            if (arch, key, choice) in refused:
                with pytest.raises(ConfigError, match=re.escape(key)):
                    apply_overrides(_BASES[arch], [f"{key}={choice}"])
                continue
            config = apply_overrides(_BASES[arch], [f"{key}={choice}"])
            node = config
            for part in key.split("."):
                node = getattr(node, part)
            assert node == choice


def test_direct_construction_and_replace_are_checked_too():
    with pytest.raises(ConfigError, match=r"model\.inference\.nms: expected one of 'nms', 'soft_nms', 'fast_nms'"):
        InferenceConfig(nms="fastnms")
    with pytest.raises(ConfigError, match=r"train\.precision: .*'float32', 'bf16', 'fp16'.*'fp8'"):
        dataclasses.replace(TrainConfig(), precision="fp8")
    with pytest.raises(ConfigError, match=r"model\.conventions\.crop"):
        YolactConventions(crop="pixel_center")


def test_the_word_none_is_a_mode_where_one_is_called_none():
    config = apply_overrides(get_preset("yolact_r18_tiny"), ["train.precision=bf16", "model.conventions.fast_nms_fill=none"])
    assert config.train.precision == "bf16" and config.model.conventions.fast_nms_fill == "none"
    with pytest.raises(ConfigError, match="model.inference.nms"):
        apply_overrides(config, ["model.inference.nms=none"])


def test_fast_nms_is_refused_for_mask_rcnn_at_config_time():
    with pytest.raises(ConfigError, match=r"model\.inference\.nms: expected one of 'nms', 'soft_nms', got 'fast_nms'"):
        apply_overrides(Config(), ["model.inference.nms=fast_nms"])
    with pytest.raises(ConfigError, match="fast_nms is YOLACT's"):
        MaskRCNNConfig(inference=InferenceConfig(nms="fast_nms"))


def test_yolact_refuses_an_fpn_extra_its_builder_would_ignore():
    with pytest.raises(ConfigError, match=r"model\.fpn\.extra: expected one of 'convs', got 'maxpool'"):
        apply_overrides(get_preset("yolact_r18_tiny"), ["model.fpn.extra=maxpool"])
    with pytest.raises(ConfigError, match=r"model\.fpn\.extra"):
        YolactConfig(fpn=FPNConfig())
    assert YolactConfig().fpn.extra == "convs"


def test_a_list_of_modes_names_the_bad_entry():
    with pytest.raises(ConfigError, match=r"model\.backbone\.out_features\[1\]: expected one of 'stem', .*'res5', got 'res6'"):
        apply_overrides(Config(), ["model.backbone.out_features=[res4, res6]"])
    with pytest.raises(ConfigError, match=r"model\.backbone\.out_features\[0\]"):
        schema.BackboneConfig(out_features=("c5",))
    assert apply_overrides(Config(), ["model.backbone.out_features=res4"]).model.backbone.out_features == ("res4",)


def test_the_architecture_discriminator_is_a_mode():
    with pytest.raises(ConfigError, match=r"model\.arch"):
        MaskRCNNConfig(arch="yolact")


def test_mode_choices_reads_an_alias():
    assert mode_choices(schema.NmsMode) == ("nms", "soft_nms", "fast_nms")
    with pytest.raises(TypeError):
        mode_choices(str)


def test_the_schema_modes_agree_with_the_components_choices():
    from instaseg.backbones.resnet import OUTPUT_NAMES, RESNET_PRESETS
    from instaseg.layers.norm import NORM_NAMES
    from instaseg.necks.fpn import _EXTRA_KINDS
    from instaseg.ops.poolers import _METHODS
    from instaseg.structures.image_list import RESIZE_FILTERS, RESIZE_ROUNDINGS
    from instaseg.targets.anchors import _CONVENTIONS, _STRIDE_RULES
    from instaseg.targets.yolact import CROP_RULES

    pairs = [
        (schema.BackboneName, RESNET_PRESETS), (schema.NormName, NORM_NAMES), (schema.FPNExtra, _EXTRA_KINDS),
        (schema.PoolerType, _METHODS), (schema.ResizeFilter, RESIZE_FILTERS),
        (schema.ResizeRounding, RESIZE_ROUNDINGS), (schema.AnchorConvention, _CONVENTIONS),
        (schema.AnchorStrides, _STRIDE_RULES), (schema.CropRule, CROP_RULES), (schema.StageName, OUTPUT_NAMES),
    ]
    for alias, component in pairs:
        assert set(mode_choices(alias)) == set(component), alias
