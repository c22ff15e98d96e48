import dataclasses

import pytest

from instaseg.config import (
    Config,
    MaskIoUConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    get_preset,
    list_presets,
    load_yaml,
    save_yaml,
)
from instaseg.errors import ConfigError


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_round_trips_through_yaml(name, tmp_path):
    config = get_preset(name)
    assert config.name == name
    path = tmp_path / "config.yaml"
    save_yaml(config, path)
    assert load_yaml(path) == config
    assert config_from_dict(config_to_dict(config)) == config


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="mask_rcnn_r50_fpn"):
        get_preset("mask_rcnn_r51_fpn")


def test_overrides_are_typed_and_nested():
    config = apply_overrides(
        Config(),
        ["model.rpn.nms_thresh=0.6", "train.steps=[10, 20]", "model.num_classes=3",
         "model.backbone.name=resnet18", "input.pixel_std=[1, 1, 1]"],
    )
    assert config.model.rpn.nms_thresh == 0.6
    assert config.train.steps == (10, 20)
    assert config.model.num_classes == 3
    assert config.model.backbone.name == "resnet18"
    assert config.input.pixel_std == (1.0, 1.0, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.num_classes = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.rpn.nms_tresh=0.6", "nms_tresh"),
        ("model.num_classes=three", "expected an integer"),
        ("model.num_classes=2.5", "expected an integer"),
        ("input.pixel_std=1", "expected a list of 3 values"),
        ("input.pixel_std=[1, 1]", "expected 3 values"),
        ("model.box_head.aligned=maybe", "expected true or false"),
        ("model.num_classes", "key=value"),
        ("model.num_classes.x=1", "no sub-keys"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), [override])


def test_exponent_notation_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 (PyYAML) reads ``2e-3`` and ``1e-4`` as strings: ``--set train.lr=2e-3`` and ``lr: 1e-4`` in
    a config file mean numbers all the same; a word is still refused."""
    config = apply_overrides(Config(), ["train.lr=2e-3", "train.weight_decay=1E-4", "model.rpn.nms_thresh=7e-1"])
    assert (config.train.lr, config.train.weight_decay, config.model.rpn.nms_thresh) == (2e-3, 1e-4, 0.7)
    assert isinstance(config.train.lr, float)
    path = tmp_path / "config.yaml"
    save_yaml(config, path)
    path.write_text(path.read_text().replace("lr: 0.002", "lr: 5e-4"))
    assert load_yaml(path).train.lr == 5e-4
    for word in ("fast", "nan", "inf", "1e-3x"):
        with pytest.raises(ConfigError, match="expected a number"):
            apply_overrides(Config(), [f"train.lr={word}"])


def test_a_scalar_is_a_one_element_tuple_where_the_length_is_free():
    config = apply_overrides(Config(), ["input.min_size_train=320", "train.steps=500"])
    assert config.input.min_size_train == (320,) and config.train.steps == (500,)
    assert apply_overrides(Config(), ["train.steps=[]"]).train.steps == ()


def test_setting_a_field_of_an_optional_part_switches_it_on():
    config = apply_overrides(Config(), ["model.maskiou.loss_weight=2.0"])
    assert config.model.maskiou == MaskIoUConfig(loss_weight=2.0)
    assert apply_overrides(config, ["model.maskiou=null"]).model.maskiou is None
    c4 = apply_overrides(Config(), ["model.fpn=none"])
    assert c4.model.fpn is None


def test_unknown_key_in_yaml_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  num_clases: 3\n")
    with pytest.raises(ConfigError, match="num_clases"):
        load_yaml(path)


def test_a_renamed_key_reads_under_its_old_name_from_files_and_overrides():
    # train.amp ("none" / "bf16" / "fp16") became train.precision ("float32" / "bf16" / "fp16"):
    # configs saved in checkpoints and run folders before the rename must still load.
    assert config_from_dict({"train": {"amp": "none"}}).train.precision == "float32"
    assert config_from_dict({"train": {"amp": "bf16"}}).train.precision == "bf16"
    assert apply_overrides(Config(), ["train.amp=none"]).train.precision == "float32"
    assert apply_overrides(Config(), ["train.amp=fp16"]).train.precision == "fp16"
    with pytest.raises(ConfigError, match="train.precision"):
        config_from_dict({"train": {"amp": "fp8"}})
