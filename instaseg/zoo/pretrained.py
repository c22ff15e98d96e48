"""Catalogue names -> cached files, and what ImageNet backbone weights need from a config.

* :func:`converted_path` / :func:`cache_state`: where a detector entry's converted instaseg checkpoint
  is cached (beside the publisher's file, as ``<name>.instaseg.pt``) and whether it is there.
  Fetching and converting it is ``instaseg.hub.resolve_checkpoint`` (the converters build models).
* :func:`backbone_weights_file` turns ``model.backbone.weights`` into a local file (ImageNet weights,
  used as published), and :func:`apply_backbone_conventions` makes the config what those weights need
  (stride placement, channel order, pixel statistics) or says why it cannot.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from instaseg.config.schema import Config
from instaseg.errors import CheckpointError, ConfigError
from instaseg.zoo.catalogue import CATALOGUE, WeightsEntry
from instaseg.zoo.download import fetch_file, weights_dir

__all__ = ["converted_path", "cache_state", "backbone_weights_file", "apply_backbone_conventions",
           "check_backbone_conventions"]


def converted_path(entry: WeightsEntry, home: str | Path | None = None) -> Path:
    """Where the converted instaseg checkpoint of a detector entry is cached (beside the file)."""
    if entry.converter == "instaseg":  # published as an instaseg checkpoint: the file itself
        return weights_dir(home) / entry.file_name
    return weights_dir(home) / f"{entry.name}.instaseg.pt"


def cache_state(entry: WeightsEntry, home: str | Path | None = None) -> str:
    """``"ready"`` (usable without network), ``"file only"`` (downloaded, not yet converted) or ``""``."""
    file = weights_dir(home) / entry.file_name
    if entry.kind == "backbone":
        return "ready" if file.is_file() else ""
    if converted_path(entry, home).is_file():
        return "ready"
    return "file only" if file.is_file() else ""


def backbone_weights_file(value: str, *, home: str | Path | None = None, mirror: str | None = None,
                          verbose: bool = True) -> Path:
    """``model.backbone.weights`` -> a local file: a path as is, a catalogue name fetched (and verified)."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if value not in CATALOGUE:
        raise CheckpointError(f"model.backbone.weights={value}: no such file, and not a catalogue name "
                              "(`instaseg weights list` shows the ImageNet backbones)")
    entry = CATALOGUE[value]
    if entry.kind != "backbone":
        raise ConfigError(f"model.backbone.weights={value} names a whole {entry.preset} model: start from it "
                          f"with `instaseg train --weights {value}` (or build_model(..., weights={value!r}))")
    return fetch_file(entry, home=home, mirror=mirror, progress=verbose)


def _close(a: tuple[float, ...], b: tuple[float, ...], tolerance: float = 0.5) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


def apply_backbone_conventions(config: Config) -> tuple[Config, list[str]]:
    """When ``model.backbone.weights`` names catalogue ImageNet weights, make the config what they need.

    Sets ``model.backbone.stride_in_1x1`` and ``input.channel_order`` / ``pixel_mean`` / ``pixel_std``
    to the publisher's (statistics within 0.5 of theirs are kept); returns the config and one note per
    change. Raises :class:`ConfigError` where the weights cannot fit: another backbone, or Caffe2
    weights (norms folded into an affine) on a model that does not use FrozenBN.
    """
    backbone = config.model.backbone
    entry = CATALOGUE.get(backbone.weights)
    if entry is None or Path(backbone.weights).expanduser().is_file():
        return config, []
    if entry.backbone is None:
        raise ConfigError(f"model.backbone.weights={entry.name} names a whole {entry.preset} model: start from it "
                          f"with `instaseg train --weights {entry.name}`")
    need = entry.backbone
    if backbone.name != need.backbone:
        raise ConfigError(f"model.backbone.weights={entry.name} holds {need.backbone} weights but the model's "
                          f"backbone is {backbone.name}: choose a {need.backbone} preset, or ImageNet weights of a "
                          f"{backbone.name} (`instaseg weights list`)")
    if need.folded_norm and backbone.norm != "FrozenBN":
        raise ConfigError(f"model.backbone.weights={entry.name}: these Caffe2 weights have their norms folded "
                          f"into an affine and only fit FrozenBN, but model.backbone.norm={backbone.norm}; "
                          "set model.backbone.norm=FrozenBN or use torchvision ImageNet weights")
    notes = []
    if backbone.stride_in_1x1 != need.stride_in_1x1:
        notes.append(f"model.backbone.stride_in_1x1={need.stride_in_1x1} ({entry.publisher} weights)")
        backbone = replace(backbone, stride_in_1x1=need.stride_in_1x1)
    inputs = config.input
    if inputs.channel_order != need.channel_order or not _close(inputs.pixel_mean, need.pixel_mean) or not _close(
            inputs.pixel_std, need.pixel_std):
        notes.append(f"input.channel_order={need.channel_order}, input.pixel_mean={list(need.pixel_mean)}, "
                     f"input.pixel_std={list(need.pixel_std)} (what {entry.name} was trained with)")
        inputs = replace(inputs, channel_order=need.channel_order, pixel_mean=need.pixel_mean,
                         pixel_std=need.pixel_std)
    return replace(config, model=replace(config.model, backbone=backbone), input=inputs), notes


def check_backbone_conventions(config: Config) -> None:
    """Raise :class:`ConfigError` when ``model.backbone.weights`` names catalogue weights the config
    does not fit (the builder's guard; :func:`apply_backbone_conventions` makes configs that fit)."""
    adjusted, notes = apply_backbone_conventions(config)
    if notes:
        raise ConfigError(f"model.backbone.weights={config.model.backbone.weights} needs " + "; ".join(notes)
                          + ": set them, or let instaseg.zoo.apply_backbone_conventions(config) do it")
