"""ImageNet ResNet weights in any of three layouts, renamed to :class:`~instaseg.backbones.resnet.ResNet` names.

* ``torchvision``: torchvision ResNet/ResNeXt state dicts (``conv1.weight``, ``bn1.*``,
  ``layer1.0.conv1.weight`` ..., ``fc.*``): our names already; the classifier is dropped.
* ``msra``: the Caffe2/Detectron ImageNet ``.pkl`` files Detectron2 starts from (``R-50.pkl``):
  ``conv1_w``, ``res_conv1_bn_{s,b}``, ``res2_0_branch2a_w``, ``res2_0_branch2a_bn_{s,b}``,
  ``res2_0_branch1_w`` ... (``_bn_rm``/``_bn_riv`` when present), ``fc1000_*``, ``*_momentum``.
  Their norms are a folded affine ``x * s + b``; we give them mean 0 and var ``1 - eps`` so our
  FrozenBatchNorm2d reproduces it exactly (see ``fill_missing_bn_stats``).
* ``detectron2``: ResNets already in Detectron2 names (``stem.conv1.weight``,
  ``res2.0.conv1.norm.weight`` ...), e.g. from Detectron2's convert-torchvision-to-d2 tool.

An instaseg checkpoint (``runs/x/checkpoints/last.pt``) given as backbone weights gives its backbone
(a C4 model's res5 head included); starting from the whole model is ``instaseg train --weights``.
Whole-detector files of other codebases are refused with the command that converts them.

MSRA weights were trained with the stride in the 1x1 conv and on BGR 0-255 images minus the
mean (103.53, 116.28, 123.675), std 1; torchvision weights with the stride in the 3x3 and on
RGB images normalised with ImageNet mean/std. Loading them into a built backbone (with a report,
and a warning when its stride placement disagrees) is ``instaseg.hub.load_backbone_weights``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor

from instaseg.errors import CheckpointError
from instaseg.weights.common import rename_state_dict
from instaseg.weights.detectron2 import block_name_to_ours, fill_missing_bn_stats
from instaseg.weights.safe_pickle import load_weights_file, numpy_state_to_tensors

__all__ = [
    "BACKBONE_FORMATS",
    "detect_backbone_format",
    "convert_msra_backbone",
    "convert_detectron2_backbone",
    "convert_torchvision_backbone",
    "read_backbone_weights",
]

BACKBONE_FORMATS = ("torchvision", "msra", "detectron2", "instaseg")
# Key prefixes of whole-detector files: (prefix, codebase, `instaseg convert --from` value)
_DETECTORS = (("backbone.body.", "torchvision Mask R-CNN", "torchvision"),
              ("backbone.bottom_up.", "Detectron2", "detectron2"), ("proposal_generator.", "Detectron2", "detectron2"),
              ("backbone.layers.", "YOLACT", "yolact"))
_CLASSIFIER = re.compile(r"^(fc\.|fc1000_|pred_|linear\.)")  # ImageNet classifier heads
_MSRA_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_MSRA_BRANCH = {"2a": "1", "2b": "2", "2c": "3"}


def detect_backbone_format(state: dict[str, Any]) -> str:
    """``"torchvision"``, ``"msra"`` or ``"detectron2"`` from the key names."""
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return "torchvision"
    if "conv1_w" in state and any(k.startswith("res2_0_") for k in state):
        return "msra"
    if "stem.conv1.weight" in state and any(k.startswith("res2.") for k in state):
        return "detectron2"
    for prefix, codebase, source in _DETECTORS:
        if any(k.startswith(prefix) for k in state):
            raise CheckpointError(
                f"a whole {codebase} detector, not ImageNet backbone weights: convert it (`instaseg convert --from "
                f"{source} FILE model.pt`) and start from the whole model with `instaseg train --weights model.pt`"
            )
    raise CheckpointError(
        f"unknown backbone weight layout (first keys: {sorted(state)[:4]}); expected torchvision "
        "(conv1.weight, layer1.*), MSRA/Caffe2 (conv1_w, res2_0_branch2a_w) or Detectron2 (stem.*, res2.*)"
    )


def _msra_name_to_ours(name: str) -> str | None:
    if name == "conv1_w":
        return "conv1.weight"
    if m := re.fullmatch(r"res_conv1_bn_(s|b|rm|riv)", name):
        return f"bn1.{_MSRA_BN[m[1]]}"
    m = re.fullmatch(r"res([2-5])_(\d+)_branch(1|2a|2b|2c)_(w|bn_s|bn_b|bn_rm|bn_riv)", name)
    if m is None:
        return None
    block = f"layer{int(m[1]) - 1}.{m[2]}."
    if m[3] == "1":
        part = "downsample.0" if m[4] == "w" else "downsample.1"
    else:
        part = f"conv{_MSRA_BRANCH[m[3]]}" if m[4] == "w" else f"bn{_MSRA_BRANCH[m[3]]}"
    return f"{block}{part}.{'weight' if m[4] == 'w' else _MSRA_BN[m[4][3:]]}"


def _rename_backbone(state: dict[str, Tensor], rename: Any, layout: str) -> dict[str, Tensor]:
    """``state`` less the classifier, renamed to instaseg's ResNet keys (``layout`` names the source)."""
    backbone = {name: value for name, value in state.items() if not _CLASSIFIER.match(name)}
    return rename_state_dict(backbone, rename, f"{layout} ResNet")


def convert_msra_backbone(blobs: dict[str, Tensor]) -> dict[str, Tensor]:
    """MSRA/Caffe2 blob names -> our ResNet names; classifier and ``_momentum`` blobs dropped,
    missing running stats filled so each norm is exactly ``x * s + b``."""
    blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    ours = _rename_backbone(blobs, _msra_name_to_ours, "MSRA/Caffe2")
    fill_missing_bn_stats(ours)
    return ours


def _detectron2_resnet_name_to_ours(name: str) -> str | None:
    if name.startswith("stem."):
        return block_name_to_ours(name[len("stem."):])
    if m := re.fullmatch(r"res([2-5])\.(\d+)\.(.+)", name):
        rest = block_name_to_ours(m[3])
        return None if rest is None else f"layer{int(m[1]) - 1}.{m[2]}.{rest}"
    return None


def convert_detectron2_backbone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ResNet in Detectron2 names (``stem.*``, ``res2.*``) -> our ResNet names."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    ours = _rename_backbone(state, _detectron2_resnet_name_to_ours, "Detectron2")
    fill_missing_bn_stats(ours)
    return ours


def convert_torchvision_backbone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ResNet/ResNeXt state dict without its classifier and BN step counters."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return _rename_backbone(state, lambda name: name, "torchvision")


def _unwrap(payload: Any, source: str) -> dict[str, Any]:
    if isinstance(payload, dict):
        for key in ("blobs", "model", "state_dict"):  # Caffe2 detection files keep weights in "blobs"
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload:
        raise CheckpointError(f"{source}: expected a dict of weights")
    if all(k.startswith("module.") for k in payload):  # saved from DataParallel
        payload = {k[len("module."):]: v for k, v in payload.items()}
    return payload


def _instaseg_backbone(payload: dict[str, Any]) -> dict[str, Tensor]:
    """The ResNet of an instaseg checkpoint in ResNet names: ``backbone.*``, and a C4 model's
    ``box_head.res5.*`` as ``layer4.*``."""
    ours = {}
    for name, value in payload["model"].items():
        if name.startswith("backbone."):
            ours[name[len("backbone."):]] = value
        elif name.startswith("box_head.res5."):
            ours["layer4." + name[len("box_head.res5."):]] = value
    return {k: v for k, v in ours.items() if not k.endswith("num_batches_tracked")}


def read_backbone_weights(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """Read ImageNet ResNet weights in any supported layout -> (state in our names, format)."""
    payload = load_weights_file(path)
    if isinstance(payload, dict) and payload.get("format") == "instaseg":
        return _instaseg_backbone(payload), "instaseg"
    raw = _unwrap(payload, str(path))
    fmt = detect_backbone_format(raw)
    if fmt == "msra":
        raw = {k: v for k, v in raw.items() if not k.endswith("_momentum")}
    tensors = numpy_state_to_tensors(raw)
    convert = {"torchvision": convert_torchvision_backbone, "msra": convert_msra_backbone,
               "detectron2": convert_detectron2_backbone}[fmt]
    return convert(tensors), fmt
