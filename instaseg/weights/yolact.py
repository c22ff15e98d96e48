"""dbolya/yolact released checkpoints (``yolact_base_54_800000.pth``, ``yolact_plus_resnet50_54_800000.pth``,
...) -> instaseg YOLACT / YOLACT++ state dicts.

The reference's state dict, from its module tree (``yolact.py``, ``backbone.py``, ``data/config.py``
of dbolya/yolact; checked against those files):

* ``backbone.conv1`` / ``backbone.bn1`` and ``backbone.layers.{0..3}.{j}.{conv1,bn1,conv2,bn2,conv3,
  bn3,downsample.0,downsample.1}``: torchvision-style bottlenecks (stride on ``conv2``) with
  ``nn.BatchNorm2d``, so every norm also has a ``num_batches_tracked`` buffer (dropped here).
  A DCNv2 block (``dcn_v2.DCN``) has ``conv2.weight``, ``conv2.bias`` and
  ``conv2.conv_offset_mask.{weight,bias}`` (27 channels: 18 offsets, dy/dx interleaved per tap,
  then 9 mask logits: the layout of ``instaseg.layers.deform``, so no reordering).
* ``fpn.lat_layers.{0,1,2}`` / ``fpn.pred_layers.{0,1,2}``, listed from the COARSEST level (index 0
  is C5/P5), and ``fpn.downsample_layers.{0,1}`` (P6, P7).
* ``proto_net.{0,2,4,8,10}`` (``make_net`` interleaves ReLUs and the 2x interpolation).
* ``prediction_layers.0.{upfeature.0,bbox_layer,conf_layer,mask_layer}`` (shared by all levels: the
  other prediction layers hold their parent in a list, outside the state dict).
* ``semantic_seg_conv`` (num_classes - 1 outputs) and, for YOLACT++, ``maskiou_net.maskiou_net.
  {0,2,4,6,8,10}`` (``FastMaskIoUNet``: five 3x3 stride-2 convs and a 1x1 to num_classes - 1).

The reference's class logits put background FIRST; ours put it LAST, so ``conf_layer`` rows are
permuted per anchor. Its DCN ``conv2.bias`` (zeroed at init, then trained: BatchNorm follows it)
has no counterpart in instaseg's bias-free backbone convs; it is folded into the following norm's
running mean, which is exact for an inference-mode (frozen) BatchNorm.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from torch import Tensor

from instaseg.config.presets import get_preset
from instaseg.config.schema import Config
from instaseg.errors import CheckpointError
from instaseg.weights.common import ConversionSummary, ConvertedWeights
from instaseg.weights.safe_pickle import load_weights_file
from instaseg.weights.torchvision import unwrap_state_dict

__all__ = ["convert_yolact_state_dict", "yolact_config_for", "read_yolact_file"]

_PROTO = {"0": "convs.0", "2": "convs.1", "4": "convs.2", "8": "post_conv", "10": "out_conv"}
_DCN_BIAS = re.compile(r"backbone\.layers\.(\d+)\.(\d+)\.conv2\.bias")


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


def _fold_dcn_biases(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """Fold each DCN ``conv2.bias`` into ``bn2.running_mean`` (BN(x + b) = BN'(x), mean' = mean - b).

    Returns the state without those biases and the number folded.
    """
    out = dict(state)
    folded = 0
    for name in [k for k in state if _DCN_BIAS.fullmatch(k)]:
        mean_key = name.replace("conv2.bias", "bn2.running_mean")
        if mean_key not in out:
            raise CheckpointError(f"{name} has no following {mean_key} to fold it into")
        bias = out.pop(name)
        out[mean_key] = out[mean_key] - bias.to(out[mean_key].dtype)
        folded += 1
    return out, folded


def convert_yolact_state_dict(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Reference state dict -> (our state dict, notes).

    ``num_batches_tracked`` buffers are dropped (instaseg's frozen norms have none), DCN biases are
    folded into the next norm (see the module docstring), class logits move background last.
    Raises :class:`CheckpointError` for a file that is not a YOLACT state dict.
    """
    try:
        num_anchors = state["prediction_layers.0.bbox_layer.weight"].shape[0] // 4
    except KeyError:
        raise CheckpointError("not a YOLACT checkpoint: no prediction_layers.0.bbox_layer.weight") from None
    num_fpn_inputs = len({k.split(".")[2] for k in state if k.startswith("fpn.lat_layers.")})
    state, folded = _fold_dcn_biases(state)
    ours, notes, dropped, counters = {}, [], [], 0
    for name, tensor in state.items():
        if name.endswith(".num_batches_tracked"):
            counters += 1
            continue
        new = _rename(name, num_fpn_inputs)
        if new is None:
            dropped.append(name)
            continue
        if new.startswith("prediction_head.conf_layer."):
            tensor = _background_last(tensor, num_anchors)
        ours[new] = tensor
    if counters:
        notes.append(f"dropped {counters} BatchNorm num_batches_tracked counters")
    if folded:
        notes.append(f"folded {folded} DCN conv biases into the following BatchNorm running means")
    if dropped:
        notes.append(f"dropped {len(dropped)} keys without a counterpart (e.g. {dropped[0]})")
    notes.append("class logits permuted: reference background first, instaseg background last")
    return ours, notes


def _input_size_from_name(name: str) -> int:
    # yolact_im400_* / yolact_im700_* hold R-101 weights identical in shape to yolact_base's; only
    # the file name tells the input size (and anchor sizes) they were trained for.
    match = re.search(r"im(400|700)", name)
    return int(match.group(1)) if match else 550


def yolact_config_for(state: dict[str, Tensor], file_name: str = "") -> Config:
    """The preset matching a reference state dict: R-50/R-101 (res4 depth), YOLACT or YOLACT++.

    ``file_name`` (e.g. ``yolact_im700_54_800000.pth``) picks the 400/700 px R-101 presets.
    """
    blocks = {k.split(".")[3] for k in state if k.startswith("backbone.layers.2.")}
    depth = {6: "r50", 23: "r101"}.get(len(blocks))
    if depth is None:
        raise CheckpointError(f"unsupported YOLACT backbone with {len(blocks)} res4 blocks (ResNet-50/101 only)")
    plus = any(k.startswith("maskiou_net.") for k in state)
    size = _input_size_from_name(Path(file_name).name)
    if plus or depth != "r101":
        size = 550  # the released 400/700 px models are YOLACT R-101 only
    config = get_preset(f"yolact_{'pp_' if plus else ''}{depth}_{size}")
    num_anchors = state["prediction_layers.0.bbox_layer.weight"].shape[0] // 4
    num_classes = state["prediction_layers.0.conf_layer.weight"].shape[0] // num_anchors - 1
    return replace(config, model=replace(config.model, num_classes=num_classes))


def read_yolact_file(src: str | Path) -> ConvertedWeights:
    """A dbolya/yolact ``.pth`` (read without running code) in instaseg's terms
    (``instaseg.hub.convert_yolact_file`` saves it)."""
    state = unwrap_state_dict(load_weights_file(src), str(src))
    config = yolact_config_for(state, str(src))
    ours, notes = convert_yolact_state_dict(state)
    summary = ConversionSummary(config.name, config.model.num_classes, len(ours), config.name, tuple(notes))
    return ConvertedWeights(ours, config, summary)
