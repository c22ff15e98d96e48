"""ImageNet weights for a :class:`~instaseg.backbones.resnet.ResNet`, in any of three layouts.

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
RGB images normalised with ImageNet mean/std. The report says so when the backbone disagrees.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor

from instaseg.backbones.resnet import ResNet
from instaseg.errors import CheckpointError
from instaseg.weights.detectron2 import block_name_to_ours, fill_missing_bn_stats
from instaseg.weights.safe_pickle import load_weights_file, numpy_state_to_tensors

__all__ = [
    "BACKBONE_FORMATS",
    "detect_backbone_format",
    "convert_msra_backbone",
    "convert_detectron2_backbone",
    "convert_torchvision_backbone",
    "read_backbone_weights",
    "load_backbone_weights",
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
    ours, unknown = {}, []
    for name, value in state.items():
        if _CLASSIFIER.match(name):
            continue
        new = rename(name)
        if new is None:
            unknown.append(name)
        else:
            ours[new] = value
    if unknown:
        raise CheckpointError(f"{len(unknown)} tensors are not part of a {layout} ResNet: {unknown[:8]}")
    return ours


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


def _stride_warnings(backbone: ResNet, fmt: str) -> list[str]:
    block = getattr(backbone, "layer2", [None])[0]
    if block is None or not hasattr(block, "conv3"):  # BasicBlocks have no 1x1 to put a stride in
        return []
    stride_in_1x1 = block.conv1.stride != (1, 1)
    if fmt == "msra" and not stride_in_1x1:
        return ["warning: MSRA/Caffe2 weights were trained with the stride in the 1x1 conv; "
                "build the backbone with stride_in_1x1=True"]
    if fmt == "torchvision" and stride_in_1x1:
        return ["warning: torchvision weights were trained with the stride in the 3x3 conv; "
                "build the backbone with stride_in_1x1=False"]
    return []


def _partition(backbone: ResNet, state: dict[str, Tensor]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(unused, unexpected, missing, mismatched) names of ``state`` against ``backbone``."""
    own = backbone.state_dict()
    unbuilt = tuple(f"layer{k}." for k in range(backbone.num_stages + 1, 5))
    unused = [k for k in state if k not in own and k.startswith(unbuilt)] if unbuilt else []
    unexpected = [k for k in state if k not in own and k not in unused]
    # Deformable convs' offset branches and BN step counters are not ImageNet weights: they keep
    # their own initialisation (zero offsets: the DCN starts as the plain conv).
    missing = [k for k in own if k not in state and ".conv_offset." not in k
               and not k.endswith("num_batches_tracked")]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs backbone {tuple(own[k].shape)}"
                  for k in state if k in own and state[k].shape != own[k].shape]
    return unused, unexpected, missing, mismatched


def load_backbone_weights(backbone: ResNet, path: str | Path) -> list[str]:
    """Load ImageNet weights (torchvision, MSRA/Caffe2 or Detectron2 layout) into ``backbone``.

    Stages the backbone does not build (``layer4`` of a C4 trunk) are reported as unused; every
    other tensor must fit exactly (missing, unknown or mis-shaped tensors raise
    :class:`CheckpointError`, and nothing is loaded). Returns report lines for the caller to print.
    """
    state, fmt = read_backbone_weights(path)
    unused, unexpected, missing, mismatched = _partition(backbone, state)
    problems = ([f"unexpected {k}" for k in unexpected] + [f"missing {k}" for k in missing]
                + [f"shape {m}" for m in mismatched])
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise CheckpointError(f"{path}: {fmt} weights do not fit this backbone (another depth or "
                              f"width?), {len(problems)} problems:\n  {shown}")
    own = backbone.state_dict()
    merged = dict(own)
    merged.update({k: v.to(own[k].dtype) for k, v in state.items() if k in own})
    backbone.load_state_dict(merged, strict=True)
    kept = [k for k in own if k not in state]
    what = "the backbone of an instaseg checkpoint (the whole model: --weights)" if fmt == "instaseg" else \
        f"{fmt} ImageNet weights"
    report = [f"{path}: {what}, loaded {len(state) - len(unused)} tensors"]
    if unused:
        report.append(f"unused (stages this backbone does not build): {len(unused)} tensors")
    if kept:
        report.append(f"kept their initialisation (not in ImageNet weights): {len(kept)} tensors")
    return report + _stride_warnings(backbone, fmt)

