"""dbolya/yolact released checkpoints (``yolact_base_54_800000.pth``, ``yolact_plus_resnet50_54_800000.pth``,
...) -> instaseg YOLACT / YOLACT++ state dicts.

Key names follow the reference's ``yolact.py`` and ``backbone.py``: ``backbone.layers.{i}.{j}``,
``fpn.lat_layers`` / ``fpn.pred_layers`` (listed from the coarsest level: index 0 is C5/P5),
``fpn.downsample_layers``, ``proto_net.{0,2,4,8,10}`` (ReLUs and the interpolation in between),
``prediction_layers.0.{upfeature.0,bbox_layer,conf_layer,mask_layer}`` (shared by all levels),
``semantic_seg_conv``, ``maskiou_net.{0,2,...,10}``; DCNv2 blocks hold ``conv2.conv_offset_mask``
(offset then mask channels, the layout of ``instaseg.layers.deform``) and a ``conv2.bias``.
The reference's class logits put background FIRST; ours put it LAST, so ``conf_layer`` rows are
permuted per anchor.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from torch import Tensor

from instaseg.config.presets import get_preset
from instaseg.config.schema import Config
from instaseg.errors import CheckpointError
from instaseg.weights.safe_pickle import load_weights_file
from instaseg.weights.torchvision import ConversionSummary, save_converted, unwrap_state_dict

__all__ = ["convert_yolact_state_dict", "yolact_config_for", "convert_yolact_file"]

_PROTO = {"0": "convs.0", "2": "convs.1", "4": "convs.2", "8": "post_conv", "10": "out_conv"}


def _background_last(tensor: Tensor, num_anchors: int) -> Tensor:
    """Rows ``(A * (C + 1), ...)`` grouped per anchor with background first -> background last."""
    rows = tensor.reshape(num_anchors, -1, *tensor.shape[1:])
    return rows.roll(-1, dims=1).reshape(tensor.shape)


def _rename(name: str, num_fpn_inputs: int) -> str | None:
    """Our name for a reference key; None for keys with no counterpart (dropped)."""
    if name.startswith("backbone.layers."):
        index, rest = name[len("backbone.layers."):].split(".", 1)
        rest = rest.replace("conv2.conv_offset_mask.", "conv2.conv_offset.")
        return f"backbone.layer{int(index) + 1}.{rest}"
    if name.startswith(("backbone.conv1.", "backbone.bn1.")):
        return name
    match = re.fullmatch(r"fpn\.(lat_layers|pred_layers|downsample_layers)\.(\d+)\.(weight|bias)", name)
    if match:
        kind, index, param = match.groups()
        if kind == "downsample_layers":
            return f"neck.extra_convs.{index}.{param}"
        ours = "lateral_convs" if kind == "lat_layers" else "output_convs"
        return f"neck.{ours}.{num_fpn_inputs - 1 - int(index)}.{param}"
    match = re.fullmatch(r"proto_net\.(\d+)\.(weight|bias)", name)
    if match and match.group(1) in _PROTO:
        return f"protonet.{_PROTO[match.group(1)]}.{match.group(2)}"
    match = re.fullmatch(r"prediction_layers\.0\.(upfeature\.0|bbox_layer|conf_layer|mask_layer)\.(weight|bias)", name)
    if match:
        return f"prediction_head.{match.group(1).replace('upfeature.0', 'upfeature')}.{match.group(2)}"
    if name.startswith("semantic_seg_conv."):
        return "semantic_head.conv." + name.split(".", 1)[1]
    match = re.fullmatch(r"maskiou_net\.maskiou_net\.(\d+)\.(weight|bias)|maskiou_net\.(\d+)\.(weight|bias)", name)
    if match:
        index = match.group(1) or match.group(3)
        return f"rescoring_head.convs.{int(index) // 2}.{match.group(2) or match.group(4)}"
    return None


def convert_yolact_state_dict(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Reference state dict -> (our state dict, notes). Zero DCN biases are dropped (ours has none)."""
    try:
        num_anchors = state["prediction_layers.0.bbox_layer.weight"].shape[0] // 4
    except KeyError:
        raise CheckpointError("not a YOLACT checkpoint: no prediction_layers.0.bbox_layer.weight") from None
    num_fpn_inputs = len({k.split(".")[2] for k in state if k.startswith("fpn.lat_layers.")})
    ours, notes, dropped = {}, [], []
    for name, tensor in state.items():
        if re.fullmatch(r"backbone\.layers\.\d+\.\d+\.conv2\.bias", name):
            if tensor.abs().max() > 0:
                raise CheckpointError(f"{name} is non-zero; instaseg's DCN backbone convs have no bias")
            continue  # the reference zeroes it at init and (with BN after it) it stays inert
        new = _rename(name, num_fpn_inputs)
        if new is None:
            dropped.append(name)
            continue
        if new.startswith("prediction_head.conf_layer."):
            tensor = _background_last(tensor, num_anchors)
        ours[new] = tensor
    if dropped:
        notes.append(f"dropped {len(dropped)} keys without a counterpart (e.g. {dropped[0]})")
    notes.append("class logits permuted: reference background first, instaseg background last")
    return ours, notes


def yolact_config_for(state: dict[str, Tensor]) -> Config:
    """The preset matching a reference state dict: R-50/R-101 (res4 depth), YOLACT or YOLACT++."""
    blocks = {k.split(".")[3] for k in state if k.startswith("backbone.layers.2.")}
    depth = {6: "r50", 23: "r101"}.get(len(blocks))
    if depth is None:
        raise CheckpointError(f"unsupported YOLACT backbone with {len(blocks)} res4 blocks")
    plus = any(k.startswith("maskiou_net.") for k in state)
    config = get_preset(f"yolact_{'pp_' if plus else ''}{depth}_550")
    num_anchors = state["prediction_layers.0.bbox_layer.weight"].shape[0] // 4
    num_classes = state["prediction_layers.0.conf_layer.weight"].shape[0] // num_anchors - 1
    return replace(config, model=replace(config.model, num_classes=num_classes))


def convert_yolact_file(src: str | Path, dst: str | Path) -> ConversionSummary:
    """Convert a dbolya/yolact ``.pth`` (read without running code) into an instaseg checkpoint."""
    state = unwrap_state_dict(load_weights_file(src), str(src))
    config = yolact_config_for(state)
    ours, notes = convert_yolact_state_dict(state)
    count = save_converted(ours, config, dst, source=str(src))
    return ConversionSummary(config.name, config.model.num_classes, count, config.name, tuple(notes))
