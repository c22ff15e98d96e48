"""torchvision ``maskrcnn_resnet50_fpn`` (v1) weights <-> instaseg Mask R-CNN weights.

Key names: ``backbone.body.*`` is already our ResNet naming (ours is torchvision's); the FPN, RPN
and RoI heads are renamed (see ``_HEAD_RENAMES``). Classes: torchvision's predictors have
``C + 1`` outputs with background at index 0, so its label ``k`` (1..C) is our label ``k - 1``:
``cls_score`` row 0 moves to the end (ours has background LAST), ``bbox_pred`` rows 0:4 and
``mask_fcn_logits`` channel 0 (background, never used at inference) are dropped. For the COCO
checkpoint (91 outputs) our label ``k`` is torchvision's label ``k + 1``, which torchvision
sets to the COCO category id (its 91 include 11 unused "N/A" ids).

FrozenBatchNorm eps: our FrozenBatchNorm2d uses ``eps = 1e-5``; torchvision's published COCO
checkpoint runs with ``eps = 0`` (``maskrcnn_resnet50_fpn`` calls ``overwrite_eps(model, 0.0)``
for ``COCO_V1``). The converter folds the difference into each frozen BN's ``weight``
(``weight * sqrt((running_var + 1e-5) / (running_var + source_eps))``), so every per-channel
scale ``weight / sqrt(running_var + eps)`` is the one torchvision computes.

Keypoint R-CNN (``keypointrcnn_resnet50_fpn``): the same backbone, FPN, RPN and box head (COCO:
2 outputs, background + person, so one class), and instead of the mask head
``roi_heads.keypoint_head.{2 i}`` (a Sequential of conv, ReLU pairs) -> ``keypoint_head.convs.{i}``
and ``roi_heads.keypoint_predictor.kps_score_lowres`` -> ``keypoint_head.score_lowres`` (no class
axis: nothing reordered). Its COCO_V1 weights also run with FrozenBN eps 0
(``keypointrcnn_resnet50_fpn``: ``overwrite_eps(model, 0.0)``). :func:`read_torchvision_file` tells
the two layouts apart by the keypoint predictor's presence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from instaseg.config.presets import get_preset
from instaseg.config.schema import Config
from instaseg.errors import CheckpointError
from instaseg.weights.common import ConversionSummary, ConvertedWeights
from instaseg.weights.safe_pickle import load_weights_file

__all__ = [
    "ConversionSummary",
    "TORCHVISION_COCO_BN_EPS",
    "INSTASEG_BN_EPS",
    "TorchvisionLayout",
    "detect_torchvision_layout",
    "convert_torchvision_maskrcnn",
    "convert_torchvision_keypointrcnn",
    "to_torchvision_maskrcnn",
    "to_torchvision_keypointrcnn",
    "torchvision_config",
    "torchvision_keypoint_config",
    "read_torchvision_file",
    "unwrap_state_dict",
]

# The eps torchvision's COCO_V1 maskrcnn_resnet50_fpn runs its FrozenBatchNorm2d with
# (torchvision/models/detection/mask_rcnn.py: overwrite_eps(model, 0.0)).
TORCHVISION_COCO_BN_EPS = 0.0
# instaseg.layers.norm.FrozenBatchNorm2d's default eps, which every built model uses.
INSTASEG_BN_EPS = 1e-5

# (torchvision prefix, our prefix) for everything outside the ResNet body and the mask or keypoint head.
_BOX_RENAMES: tuple[tuple[str, str], ...] = (
    *((f"backbone.fpn.inner_blocks.{i}.0.", f"neck.lateral_convs.{i}.") for i in range(4)),
    *((f"backbone.fpn.layer_blocks.{i}.0.", f"neck.output_convs.{i}.") for i in range(4)),
    ("rpn.head.conv.0.0.", "rpn_head.conv."),
    ("rpn.head.cls_logits.", "rpn_head.objectness_logits."),
    ("rpn.head.bbox_pred.", "rpn_head.anchor_deltas."),
    ("roi_heads.box_head.fc6.", "box_head.fcs.0."),
    ("roi_heads.box_head.fc7.", "box_head.fcs.1."),
    ("roi_heads.box_predictor.cls_score.", "box_predictor.cls_score."),
    ("roi_heads.box_predictor.bbox_pred.", "box_predictor.bbox_pred."),
)
_HEAD_RENAMES: tuple[tuple[str, str], ...] = (  # Mask R-CNN
    *_BOX_RENAMES,
    *((f"roi_heads.mask_head.{i}.0.", f"mask_head.convs.{i}.") for i in range(4)),
    ("roi_heads.mask_predictor.conv5_mask.", "mask_head.deconv."),
    ("roi_heads.mask_predictor.mask_fcn_logits.", "mask_head.predictor."),
)
# Keypoint R-CNN: KeypointRCNNHeads is a Sequential of (Conv2d, ReLU) pairs, so conv i sits at 2 i.
_KEYPOINT_PREDICTOR = "roi_heads.keypoint_predictor.kps_score_lowres."
_KEYPOINT_CONV = re.compile(r"^roi_heads\.keypoint_head\.(\d+)\.(weight|bias)$")
_OUR_KEYPOINT_CONV = re.compile(r"^keypoint_head\.convs\.(\d+)\.(weight|bias)$")
# Names older torchvision versions saved (they upgrade them when loading): rpn.head.conv was a
# plain conv, the mask head convs were mask_fcn1..4. Whole names, so new names never match.
_LEGACY_NAMES: dict[str, str] = {
    **{f"rpn.head.conv.{p}": f"rpn.head.conv.0.0.{p}" for p in ("weight", "bias")},
    **{f"roi_heads.mask_head.mask_fcn{i + 1}.{p}": f"roi_heads.mask_head.{i}.0.{p}"
       for i in range(4) for p in ("weight", "bias")},
}
_BODY_PREFIX, _OUR_BACKBONE = "backbone.body.", "backbone."
_BN_WEIGHT = re.compile(r"^backbone\.(.*\.)?(bn\d|downsample\.1)\.weight$")


def unwrap_state_dict(payload: object, source: str = "checkpoint") -> dict[str, Tensor]:
    """The state dict inside a loaded file: the file itself or its ``"model"``/``"state_dict"``."""
    if isinstance(payload, dict):
        for key in ("model", "state_dict"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload or not all(isinstance(k, str) for k in payload):
        raise CheckpointError(f"{source}: expected a state dict (or a dict with 'model'/'state_dict')")
    return dict(payload)


def _rename(name: str, renames: tuple[tuple[str, str], ...]) -> str | None:
    for old, new in renames:
        if name.startswith(old):
            return new + name[len(old):]
    return None


def _bn_scale_factor(running_var: Tensor, from_eps: float, to_eps: float) -> Tensor:
    # weight / sqrt(var + from_eps) == (weight * factor) / sqrt(var + to_eps), computed in float64.
    var = running_var.double()
    return torch.sqrt((var + to_eps) / (var + from_eps))


def _refold_bn_eps(state: dict[str, Tensor], from_eps: float, to_eps: float) -> None:
    """Rescale every backbone FrozenBN weight in ``state`` (our names) from one eps to another."""
    if from_eps == to_eps:
        return
    for name in [k for k in state if _BN_WEIGHT.match(k)]:
        var = state.get(name[: -len("weight")] + "running_var")
        if var is None:  # left for the strict load to report as missing
            continue
        weight = state[name]
        state[name] = (weight.double() * _bn_scale_factor(var, from_eps, to_eps)).to(weight.dtype)


def _num_classes_from(state: dict[str, Tensor], key: str) -> int:
    if key not in state:
        raise CheckpointError(f"not a torchvision R-CNN state dict: no {key!r}")
    return int(state[key].shape[0]) - 1


@dataclass(frozen=True)
class TorchvisionLayout:
    """What a torchvision R-CNN state dict holds, read from its keys and shapes."""

    num_classes: int  # foreground classes (cls_score rows - 1)
    num_keypoints: int = 0  # 0: Mask R-CNN; > 0: Keypoint R-CNN with that many keypoint maps
    keypoint_conv_dims: tuple[int, ...] = ()  # output channels of the keypoint head's convs

    @property
    def architecture(self) -> str:
        if self.num_keypoints:
            return "Keypoint R-CNN R-50-FPN (torchvision)"
        return "Mask R-CNN R-50-FPN (torchvision v1)"


def _keypoint_conv_dims(state: dict[str, Tensor], pattern: re.Pattern) -> tuple[int, ...]:
    """Output channels of the keypoint convs, in order, from the weights ``pattern`` matches (group 1: index)."""
    weights = {int(m[1]): v for k, v in state.items() if (m := pattern.match(k)) and m[2] == "weight"}
    return tuple(int(weights[i].shape[0]) for i in sorted(weights))


def detect_torchvision_layout(state: dict[str, Tensor]) -> TorchvisionLayout:
    """Mask R-CNN (``maskrcnn_resnet50_fpn``) or Keypoint R-CNN (``keypointrcnn_resnet50_fpn``): the
    keypoint predictor's presence decides; ``num_keypoints`` is its output channels."""
    num_classes = _num_classes_from(state, "roi_heads.box_predictor.cls_score.weight")
    predictor = state.get(_KEYPOINT_PREDICTOR + "weight")
    if predictor is None:
        return TorchvisionLayout(num_classes)
    # ConvTranspose2d weights are (in, out, k, k): the keypoints are the second axis
    return TorchvisionLayout(num_classes, int(predictor.shape[1]), _keypoint_conv_dims(state, _KEYPOINT_CONV))


def _keypoint_name_to_ours(name: str) -> str | None:
    if name.startswith(_KEYPOINT_PREDICTOR):
        return "keypoint_head.score_lowres." + name[len(_KEYPOINT_PREDICTOR):]
    m = _KEYPOINT_CONV.match(name)
    if m is None or int(m[1]) % 2:  # odd indices are the ReLUs, which hold nothing
        return None
    return f"keypoint_head.convs.{int(m[1]) // 2}.{m[2]}"


def _keypoint_name_to_torchvision(name: str) -> str | None:
    if name.startswith("keypoint_head.score_lowres."):
        return _KEYPOINT_PREDICTOR + name[len("keypoint_head.score_lowres."):]
    m = _OUR_KEYPOINT_CONV.match(name)
    return None if m is None else f"roi_heads.keypoint_head.{2 * int(m[1])}.{m[2]}"


def _to_ours(state: dict[str, Tensor], renames: tuple[tuple[str, str], ...], keypoints: bool,
             source_bn_eps: float, what: str) -> dict[str, Tensor]:
    """torchvision names -> ours with the classes moved (background last, its deltas and mask dropped)."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state = {_LEGACY_NAMES.get(k, k): v for k, v in state.items()}
    ours: dict[str, Tensor] = {}
    unknown = []
    for name, value in state.items():
        if name.startswith(_BODY_PREFIX):
            new = _OUR_BACKBONE + name[len(_BODY_PREFIX):]
        else:
            new = _rename(name, renames) or (_keypoint_name_to_ours(name) if keypoints else None)
        if new is None:
            unknown.append(name)
            continue
        if new.startswith("box_predictor.cls_score."):
            value = torch.cat([value[1:], value[:1]])  # background row 0 -> last
        elif new.startswith("box_predictor.bbox_pred."):
            value = value[4:]  # drop the background's 4 deltas
        elif new.startswith("mask_head.predictor."):
            value = value[1:]  # drop the background mask channel
        ours[new] = value.detach()
    if unknown:
        raise CheckpointError(f"unknown torchvision keys (not {what}?): {unknown[:8]}")
    _refold_bn_eps(ours, source_bn_eps, INSTASEG_BN_EPS)
    return ours


def convert_torchvision_maskrcnn(
    state: dict[str, Tensor], source_bn_eps: float = TORCHVISION_COCO_BN_EPS
) -> tuple[dict[str, Tensor], int]:
    """torchvision ``maskrcnn_resnet50_fpn`` state dict -> (our state dict, num_classes).

    ``num_classes`` (foreground) is ``cls_score`` rows - 1, read from the dict, so fine-tuned
    checkpoints keep their own count. ``num_batches_tracked`` entries are ignored; any other key
    this converter does not know raises :class:`CheckpointError` (nothing is dropped silently).
    Renamed tensors share storage with ``state`` (no copy of the ~170 MB of weights).
    ``source_bn_eps`` is the eps the source model's FrozenBatchNorm2d ran with: 0.0 for the
    published COCO weights, 1e-5 (torchvision's default) for a model built without them.
    """
    num_classes = _num_classes_from(state, "roi_heads.box_predictor.cls_score.weight")
    return _to_ours(state, _HEAD_RENAMES, False, source_bn_eps, "maskrcnn_resnet50_fpn v1"), num_classes


def convert_torchvision_keypointrcnn(
    state: dict[str, Tensor], source_bn_eps: float = TORCHVISION_COCO_BN_EPS
) -> tuple[dict[str, Tensor], TorchvisionLayout]:
    """torchvision ``keypointrcnn_resnet50_fpn`` state dict -> (our state dict, its layout).

    As :func:`convert_torchvision_maskrcnn` for the shared parts; the keypoint head is renamed
    (module docstring). ``layout.num_keypoints`` and ``keypoint_conv_dims`` are read from the dict.
    """
    layout = detect_torchvision_layout(state)
    if not layout.num_keypoints:
        raise CheckpointError(f"not a torchvision Keypoint R-CNN state dict: no {_KEYPOINT_PREDICTOR}weight")
    return _to_ours(state, _BOX_RENAMES, True, source_bn_eps, "keypointrcnn_resnet50_fpn"), layout


def _to_torchvision(our_state: dict[str, Tensor], num_classes: int, renames: tuple[tuple[str, str], ...],
                    target_bn_eps: float, what: str) -> dict[str, Tensor]:
    inverse = tuple((new, old) for old, new in renames)
    state = {k: v.detach() for k, v in our_state.items()}
    _refold_bn_eps(state, INSTASEG_BN_EPS, target_bn_eps)
    rows = int(state["box_predictor.cls_score.weight"].shape[0])
    if rows != num_classes + 1:
        raise CheckpointError(f"cls_score has {rows} rows, expected num_classes + 1 = {num_classes + 1}")
    theirs: dict[str, Tensor] = {}
    for name, value in state.items():
        old = _rename(name, inverse) or _keypoint_name_to_torchvision(name)
        if old is None:
            if not name.startswith(_OUR_BACKBONE):
                raise CheckpointError(f"{name}: no torchvision counterpart (not a {what} model?)")
            old = _BODY_PREFIX + name[len(_OUR_BACKBONE):]
        if name.startswith("box_predictor.cls_score."):
            value = torch.cat([value[-1:], value[:-1]])
        elif name.startswith("box_predictor.bbox_pred."):
            value = torch.cat([value.new_zeros((4, *value.shape[1:])), value])
        elif name.startswith("mask_head.predictor."):
            value = torch.cat([value.new_zeros((1, *value.shape[1:])), value])
        theirs[old] = value
    return theirs


def to_torchvision_maskrcnn(
    our_state: dict[str, Tensor], num_classes: int, target_bn_eps: float = TORCHVISION_COCO_BN_EPS
) -> dict[str, Tensor]:
    """Our ``mask_rcnn_r50_fpn*`` state dict -> torchvision ``maskrcnn_resnet50_fpn`` state dict.

    The inverse of :func:`convert_torchvision_maskrcnn`; the background's box deltas and mask
    channel, which our model does not have, are written as zeros (torchvision never reads them
    at inference: it drops class 0 before decoding boxes and picking masks).
    """
    if any(k.startswith("keypoint_head.") for k in our_state):
        raise CheckpointError("keypoint_head.*: a Keypoint R-CNN, see to_torchvision_keypointrcnn")
    return _to_torchvision(our_state, num_classes, _HEAD_RENAMES, target_bn_eps, "mask_rcnn_r50_fpn")


def to_torchvision_keypointrcnn(
    our_state: dict[str, Tensor], num_classes: int, target_bn_eps: float = TORCHVISION_COCO_BN_EPS
) -> dict[str, Tensor]:
    """Our ``keypoint_rcnn_r50_fpn*`` state dict -> torchvision ``keypointrcnn_resnet50_fpn`` state
    dict: the inverse of :func:`convert_torchvision_keypointrcnn` (background deltas as zeros)."""
    return _to_torchvision(our_state, num_classes, _BOX_RENAMES, target_bn_eps, "keypoint_rcnn_r50_fpn")


def torchvision_config(num_classes: int) -> Config:
    """The ``mask_rcnn_r50_fpn_torchvision`` preset (torchvision's inference conventions)."""
    base = get_preset("mask_rcnn_r50_fpn_torchvision")
    return replace(base, model=replace(base.model, num_classes=num_classes))


def torchvision_keypoint_config(num_classes: int, num_keypoints: int,
                                conv_dims: tuple[int, ...] = (512,) * 8) -> Config:
    """The ``keypoint_rcnn_r50_fpn_torchvision`` preset (torchvision's conventions) for a file's counts."""
    base = get_preset("keypoint_rcnn_r50_fpn_torchvision")
    head = replace(base.model.keypoint_head, num_keypoints=num_keypoints, conv_dims=conv_dims)
    return replace(base, model=replace(base.model, num_classes=num_classes, keypoint_head=head))


def read_torchvision_file(src: str | Path, source_bn_eps: float = TORCHVISION_COCO_BN_EPS) -> ConvertedWeights:
    """A torchvision Mask R-CNN or Keypoint R-CNN file (a state dict, or ``{"model"|"state_dict": ...}``,
    read with ``weights_only=True``) in instaseg's terms; ``instaseg.hub.convert_torchvision_file`` saves it."""
    state = unwrap_state_dict(load_weights_file(src), str(src))
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{src}: expected tensors in the state dict")
    layout = detect_torchvision_layout(state)
    if layout.num_keypoints:
        ours, _ = convert_torchvision_keypointrcnn(state, source_bn_eps)
        config = torchvision_keypoint_config(layout.num_classes, layout.num_keypoints, layout.keypoint_conv_dims)
    else:
        ours, _ = convert_torchvision_maskrcnn(state, source_bn_eps)
        config = torchvision_config(layout.num_classes)
    notes = ["our label k = torchvision label k + 1"]
    if layout.num_keypoints:
        notes.append(f"{layout.num_keypoints} keypoints, scored by the heatmap logit at the peak")
    if source_bn_eps != INSTASEG_BN_EPS:
        notes.append(f"FrozenBN eps {source_bn_eps:g} folded into the BN weights (ours run with {INSTASEG_BN_EPS:g})")
    summary = ConversionSummary(layout.architecture, layout.num_classes, len(ours), config.name, tuple(notes))
    return ConvertedWeights(ours, config, summary)
