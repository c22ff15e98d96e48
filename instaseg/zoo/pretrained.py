"""Catalogue names -> local instaseg checkpoints and backbone files: the one place that fetches weights.

* :func:`resolve_checkpoint` turns ``--weights NAME_OR_PATH`` into an instaseg checkpoint path: a path
  is used as is; a catalogue name is fetched (``instaseg.zoo.download``) and converted once with the
  publisher's converter (``instaseg.weights``); the converted checkpoint is cached beside the file as
  ``<name>.instaseg.pt`` and carries the COCO category ids and names.
* :func:`backbone_weights_file` does the same for ``model.backbone.weights`` (ImageNet weights, used as
  published), and :func:`apply_backbone_conventions` makes the config what those weights need (stride
  placement, channel order, pixel statistics) or says why it cannot.
* :func:`config_for_weights` picks the config a checkpoint's model is built from.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from instaseg.config.schema import Config
from instaseg.errors import CheckpointError, ConfigError
from instaseg.zoo.catalogue import CATALOGUE, WeightsEntry, get_entry
from instaseg.zoo.download import DEFAULT_TIMEOUT, fetch_file, weights_dir

__all__ = ["converted_path", "cache_state", "checkpoint_for", "resolve_checkpoint", "backbone_weights_file",
           "apply_backbone_conventions", "check_backbone_conventions", "config_for_weights"]


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


def _say(message: str, verbose: bool) -> None:
    if verbose:
        print(message, file=sys.stderr)


def _convert(entry: WeightsEntry, src: Path, dst: Path):
    """Run the publisher's converter: ``src`` (its file) -> ``dst`` (an instaseg checkpoint)."""
    if entry.converter == "torchvision":
        from instaseg.weights.torchvision import convert_torchvision_file

        return convert_torchvision_file(src, dst)
    if entry.converter == "detectron2":
        from instaseg.weights.detectron2 import convert_detectron2_file

        return convert_detectron2_file(src, dst)
    if entry.converter == "yolact":
        from instaseg.weights.yolact import convert_yolact_file

        return convert_yolact_file(src, dst)
    if entry.converter == "mmdet":
        try:
            from instaseg.weights.mmdet import convert_mmdet_file
        except ImportError:
            raise CheckpointError(f"{entry.name}: converting MMDetection checkpoints needs instaseg.weights.mmdet, "
                                  "which this installation does not have") from None
        return convert_mmdet_file(src, dst)
    raise CheckpointError(f"{entry.name}: no converter for {entry.converter!r}")


def _record_origin(entry: WeightsEntry, path: Path) -> list[str]:
    """Add the catalogue name, URL and (for COCO models) category ids and names to a converted checkpoint."""
    from instaseg.data.coco_categories import coco_categories
    from instaseg.engine.checkpoint import atomic_torch_save, load_checkpoint

    payload = load_checkpoint(path)
    payload["source"] = {"catalogue": entry.name, "publisher": entry.publisher, "url": entry.url,
                         "file_name": entry.file_name}
    notes = []
    num_classes = int(payload["config"]["model"]["num_classes"])
    if entry.classes and "categories" not in payload:  # a converter may have read them from the file
        ids, names = coco_categories(entry.classes)
        if len(ids) == num_classes:
            payload["categories"] = {"ids": ids, "names": names}
        else:
            notes.append(f"the file has {num_classes} classes, not the {len(ids)} COCO ones: categories not recorded")
    atomic_torch_save(payload, path)
    return notes


def checkpoint_for(entry: WeightsEntry, *, home: str | Path | None = None, mirror: str | None = None,
                   timeout: float = DEFAULT_TIMEOUT, verbose: bool = True) -> Path:
    """The instaseg checkpoint of a detector entry: cached, else fetched and converted (once).

    A conversion cached before the publisher's file was replaced (a newer file dropped in by hand)
    is redone.
    """
    if entry.kind != "detector":
        raise ConfigError(f"{entry.name} holds ImageNet backbone weights, not a whole model: train with "
                          f"--set model.backbone.weights={entry.name}")
    out = converted_path(entry, home)
    file = weights_dir(home) / entry.file_name
    if entry.converter != "instaseg" and out.is_file() and not (
            file.is_file() and file.stat().st_mtime > out.stat().st_mtime):
        return out
    src = fetch_file(entry, home=home, mirror=mirror, timeout=timeout, progress=verbose)
    if entry.converter == "instaseg":
        return src
    _say(f"converting {entry.file_name} ({entry.publisher}) -> {out.name}", verbose)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        summary = _convert(entry, src, Path(tmp))
        notes = list(summary.notes) + _record_origin(entry, Path(tmp))
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    for note in notes:
        _say(f"  note: {note}", verbose)
    _say(f"  {summary.architecture}, {summary.num_classes} classes, config {summary.config_name}", verbose)
    return out


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith((".pt", ".pth", ".pkl", ".ckpt"))


def resolve_checkpoint(name_or_path: str | Path, *, home: str | Path | None = None, mirror: str | None = None,
                       timeout: float = DEFAULT_TIMEOUT, verbose: bool = True) -> Path:
    """``--weights NAME_OR_PATH`` -> an instaseg checkpoint path.

    An existing file is returned as is (``load_checkpoint`` checks it is an instaseg checkpoint); a
    catalogue name is fetched and converted (:func:`checkpoint_for`).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    value = str(name_or_path)
    if value not in CATALOGUE and _looks_like_path(value):
        raise CheckpointError(f"{value}: no such checkpoint file (and not a catalogue name; see "
                              "`instaseg weights list`)")
    return checkpoint_for(get_entry(value), home=home, mirror=mirror, timeout=timeout, verbose=verbose)


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


def config_for_weights(weights_config: Config, preset: str | Config | None, source: str = "the weights") -> Config:
    """The config to build a model for a checkpoint whose own config is ``weights_config``.

    No preset: the checkpoint's config (publishers' conventions included). A preset name must build
    the same tensors as the checkpoint's config (``mask_rcnn_r50_fpn`` for ``mask_rcnn_r50_fpn_detectron2``,
    ``ms_rcnn_r50_fpn`` for MMDetection's caffe-style MS R-CNN); the checkpoint's config is used then
    too, since it carries the conventions the weights need. A :class:`Config` object is used as given.
    """
    from instaseg.config.presets import get_preset
    from instaseg.engine.checkpoint import model_shapes

    if preset is None:
        return weights_config
    if isinstance(preset, Config):
        return preset
    name = weights_config.name
    if name == preset or name.startswith(preset + "_"):
        return weights_config
    candidate = get_preset(preset)
    candidate = replace(candidate, model=replace(candidate.model, num_classes=weights_config.model.num_classes))
    if type(candidate.model) is type(weights_config.model) and model_shapes(candidate) == model_shapes(weights_config):
        return weights_config
    raise ConfigError(f"{source} hold a {name} model, which the preset {preset} does not build: leave the preset "
                      f"out (the weights' own config is used), or choose {name}")
