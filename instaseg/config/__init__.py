"""Configuration: the schema (frozen dataclasses), named presets, overrides and YAML io."""

from instaseg.config.io import apply_overrides, config_from_dict, config_to_dict, load_yaml, save_yaml
from instaseg.config.presets import PRESETS, get_preset, list_presets
from instaseg.config.schema import (
    BackboneConfig,
    BoxHeadConfig,
    Config,
    FPNConfig,
    InferenceConfig,
    InputConfig,
    MaskHeadConfig,
    MaskIoUConfig,
    MaskRCNNConfig,
    RPNConfig,
    TrainConfig,
)

__all__ = [
    "PRESETS",
    "BackboneConfig",
    "BoxHeadConfig",
    "Config",
    "FPNConfig",
    "InferenceConfig",
    "InputConfig",
    "MaskHeadConfig",
    "MaskIoUConfig",
    "MaskRCNNConfig",
    "RPNConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "get_preset",
    "list_presets",
    "load_yaml",
    "save_yaml",
]
