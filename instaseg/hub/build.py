"""Models ready to use: built from a preset or config with their ImageNet backbone weights, loaded
from a checkpoint, or initialised from published weights for fine-tuning.

``instaseg.detectors.build`` assembles modules from a config and reads nothing; this module adds
what comes from files: ``model.backbone.weights`` (a file, or a catalogue name fetched through
``instaseg.zoo``), instaseg checkpoints (``instaseg.engine.checkpoint`` reads and writes them) and
``build_model(..., weights=NAME)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instaseg.config.budget import with_max_detections
from instaseg.config.io import apply_overrides, config_from_dict
from instaseg.config.presets import get_preset
from instaseg.config.schema import Config
from instaseg.detectors.build import build_from_config, resolve_config
from instaseg.engine.checkpoint import load_checkpoint, load_state_dict_checked
from instaseg.errors import CheckpointError, ConfigError
from instaseg.hub.backbone import load_imagenet_weights
from instaseg.hub.pretrained import resolve_checkpoint
from instaseg.zoo.pretrained import apply_backbone_conventions, backbone_weights_file, check_backbone_conventions

__all__ = [
    "build_model",
    "class_sized_tensors",
    "config_for_weights",
    "load_model",
    "load_pretrained_weights",
    "model_from_config",
    "model_shapes",
    "resolve_config",
    "without_backbone_weights",
]

_LOG = logging.getLogger("instaseg")


def model_from_config(config: Config) -> nn.Module:
    """The model a :class:`Config` describes (weights freshly initialised, or the ImageNet backbone
    weights ``model.backbone.weights`` names: a file, or a catalogue name whose conventions the config
    must follow; see ``instaseg.zoo.apply_backbone_conventions``)."""
    weights = config.model.backbone.weights
    if weights and not Path(weights).expanduser().is_file():
        check_backbone_conventions(config)
    model = build_from_config(config)
    if weights:  # ImageNet initialisation (torchvision, MSRA/Caffe2 or Detectron2 layout)
        for line in load_imagenet_weights(model, backbone_weights_file(weights)):
            _LOG.info(line)
    return model


def build_model(preset: str | Config | None = None, num_classes: int | None = None, weights: str | Path | None = None,
                **overrides: Any) -> nn.Module:
    """``build_model("mask_rcnn_r50_fpn", num_classes=3, model__rpn__nms_thresh=0.6)``.

    Keyword overrides use ``__`` for nesting (``model__rpn__nms_thresh`` is ``model.rpn.nms_thresh``).
    ImageNet weights named in ``model__backbone__weights`` (a file or a catalogue name) set the input
    conventions they need.

    ``weights``: a catalogue name (``instaseg weights list``; fetched and converted once) or an instaseg
    checkpoint path. The model is built from the weights' own config (which carries the publisher's
    conventions; ``preset``, when given, must be the one they were made for), ``num_classes`` and the
    overrides applied, and initialised from them: with another ``num_classes`` the class-sized tensors
    keep their fresh initialisation, ready for fine-tuning (``build_model(weights="maskrcnn_r50_fpn_3x_coco_d2",
    num_classes=3)``).
    """
    if weights is None:
        if preset is None:
            raise ConfigError("build_model needs a preset, or weights=NAME_OR_PATH")
        config, notes = apply_backbone_conventions(resolve_config(preset, num_classes, **overrides))
        for note in notes:
            _LOG.info(f"model.backbone.weights: {note}")
        return model_from_config(config)
    path = resolve_checkpoint(weights)
    payload = load_checkpoint(path)
    base = config_for_weights(config_from_dict(payload["config"]), preset, source=str(weights))
    config = without_backbone_weights(resolve_config(base, num_classes, **overrides))
    model = model_from_config(config)
    for line in load_pretrained_weights(model, config, payload, str(path)):
        _LOG.info(line)
    return model


def load_model(path: str | Path, allow_partial: bool = False, overrides: Sequence[str] = (),
               max_detections: int | None = None) -> tuple[nn.Module, Config]:
    """Build the model a checkpoint's config describes and load its weights (eval mode).

    ``overrides`` (``"key=value"``, as ``--set``) and ``max_detections`` (every detection cap
    raised to let that many objects through, :func:`instaseg.config.budget.with_max_detections`)
    change the stored config before the model is built. The ImageNet ``model.backbone.weights`` it
    names are not read (the checkpoint holds the weights).
    """
    payload = load_checkpoint(path)
    config = apply_overrides(config_from_dict(payload["config"]), list(overrides))
    if max_detections is not None:
        config = with_max_detections(config, max_detections)
    model = build_from_config(without_backbone_weights(config))
    load_state_dict_checked(model, payload["model"], allow_partial, source=str(path))
    return model.eval(), config


def without_backbone_weights(config: Config) -> Config:
    """``config`` with ``model.backbone.weights`` cleared, for a model whose weights come from a whole
    checkpoint (the ImageNet file would be read, or fetched, only to be overwritten)."""
    backbone = replace(config.model.backbone, weights="")
    return replace(config, model=replace(config.model, backbone=backbone))


def model_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the model ``config`` builds, without allocating it (meta device)."""
    with torch.device("meta"):
        model = build_from_config(without_backbone_weights(config))
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def class_sized_tensors(config: Config, other_num_classes: int) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """The tensors sized by the number of classes: ``{name: (shape with other_num_classes, shape in config)}``.

    Found by building the model of ``config`` and the same model with ``other_num_classes`` (on the
    meta device) and keeping the tensors whose shapes differ: box classifier and regressor, mask
    predictor, MaskIoU output, YOLACT's class conv, semantic-segmentation conv, re-scoring output,
    and whatever else a head sizes by ``num_classes``.
    """
    if other_num_classes == config.model.num_classes:
        return {}
    other = replace(config, model=replace(config.model, num_classes=other_num_classes))
    mine, theirs = model_shapes(config), model_shapes(other)
    return {k: (theirs[k], shape) for k, shape in mine.items() if k in theirs and theirs[k] != shape}


def load_pretrained_weights(model: nn.Module, config: Config, payload: dict[str, Any],
                            source: str = "checkpoint") -> list[str]:
    """Initialise ``model`` (built from ``config``) from a checkpoint ``payload`` for fine-tuning.

    When the checkpoint's model has another number of classes, the class-sized tensors
    (:func:`class_sized_tensors`) keep ``model``'s fresh initialisation and everything else is loaded;
    with the same number of classes everything loads. Any other missing, unexpected or mis-shaped
    tensor raises :class:`CheckpointError` (another architecture). Returns report lines.
    """
    state = payload["model"]
    old = int(payload["config"]["model"]["num_classes"])
    new = config.model.num_classes
    resized = class_sized_tensors(config, old)
    own = model.state_dict()
    problems = [f"missing {k}" for k in own if k not in state and k not in resized]
    problems += [f"unexpected {k}" for k in state if k not in own]
    for k, value in state.items():
        expected = resized[k][0] if k in resized else tuple(own[k].shape) if k in own else None
        if expected is not None and tuple(value.shape) != expected:
            problems.append(f"shape {k}: checkpoint {tuple(value.shape)} vs model {expected}")
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise CheckpointError(f"{source} does not fit this model ({len(problems)} problems; another architecture?):"
                              f"\n  {shown}")
    loaded = {k: v for k, v in state.items() if k not in resized}
    model.load_state_dict(loaded, strict=False)
    lines = [f"initialised from {source}: {len(loaded)} of {len(own)} tensors loaded"]
    if resized:
        lines.append(f"re-initialised {len(resized)} class-sized tensors (the weights predict {old} classes, "
                     f"this model {new}):")
        lines += [f"  {k}: {tuple(a)} in the weights -> {tuple(b)}, fresh initialisation" for k, (a, b) in resized.items()]
    return lines


def config_for_weights(weights_config: Config, preset: str | Config | None, source: str = "the weights") -> Config:
    """The config to build a model for a checkpoint whose own config is ``weights_config``.

    No preset: the checkpoint's config (publishers' conventions included). A preset name must build
    the same tensors as the checkpoint's config (``mask_rcnn_r50_fpn`` for ``mask_rcnn_r50_fpn_detectron2``,
    ``ms_rcnn_r50_fpn`` for MMDetection's caffe-style MS R-CNN); the checkpoint's config is used then
    too, since it carries the conventions the weights need. A :class:`Config` object is used as given.
    """
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
