"""Detectron2 model-zoo Mask R-CNN weights (R-50/R-101 FPN and C4, X-101-32x8d FPN) <-> instaseg weights.

Detectron2 names (facebookresearch/detectron2: modeling/backbone/resnet.py, fpn.py,
proposal_generator/rpn.py, roi_heads/{roi_heads,box_head,fast_rcnn,mask_head}.py):

* ResNet: ``stem.conv1`` and ``res{2..5}.{i}.conv{1,2,3}`` / ``.shortcut``, each conv carrying its
  norm as ``<conv>.norm.*``; under ``backbone.bottom_up.`` for FPN models, ``backbone.`` for C4
  (whose res5 is the RoI head ``roi_heads.res5``);
* FPN: ``backbone.fpn_lateral{2..5}`` and ``backbone.fpn_output{2..5}``;
* RPN: ``proposal_generator.rpn_head.{conv,objectness_logits,anchor_deltas}``;
* RoI heads: ``roi_heads.box_head.fc{1,2}``, ``roi_heads.box_predictor.{cls_score,bbox_pred}``
  (C + 1 scores with background LAST and 4C deltas: exactly our layout), and
  ``roi_heads.mask_head.{mask_fcn1..4,deconv,predictor}``;
* Keypoint R-CNN (roi_heads/keypoint_head.py ``KRCNNConvDeconvUpsampleHead``):
  ``roi_heads.keypoint_head.conv_fcn{1..8}`` -> ``keypoint_head.convs.{0..7}`` and
  ``roi_heads.keypoint_head.score_lowres`` -> ``keypoint_head.score_lowres``, with or without the
  mask head (``COCO-Keypoints/keypoint_rcnn_R_50_FPN_*``: boxes and keypoints of one class).

So the conversion is a pure renaming: no tensor is reordered. The model-zoo ``.pkl`` (a pickled
``{"model": {name: ndarray}, "__author__": ...}``) is read with the restricted unpickler of
``instaseg.weights.safe_pickle``; ``.pth`` files with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from instaseg.config.presets import get_preset
from instaseg.config.schema import Config, KeypointHeadConfig
from instaseg.errors import CheckpointError
from instaseg.weights.common import ConversionSummary, ConvertedWeights, rename_state_dict
from instaseg.weights.safe_pickle import load_weights_file, numpy_state_to_tensors
from instaseg.weights.torchvision import INSTASEG_BN_EPS

__all__ = [
    "Detectron2Layout",
    "DETECTRON2_PIXEL_MEAN_BGR",
    "detect_detectron2_layout",
    "detectron2_config",
    "detectron2_name_to_ours",
    "our_name_to_detectron2",
    "block_name_to_ours",
    "Detectron2Conversion",
    "convert_detectron2_maskrcnn",
    "fill_missing_bn_stats",
    "to_detectron2_maskrcnn",
    "read_detectron2_file",
]

# MSRA R-50/R-101 ImageNet weights take BGR 0-255 images minus this mean, std 1 (Detectron2's
# default MODEL.PIXEL_MEAN / PIXEL_STD with INPUT.FORMAT "BGR").
DETECTRON2_PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
DETECTRON2_PIXEL_STD_BGR = (1.0, 1.0, 1.0)
# The FAIR Caffe2 ResNeXt the X-101-32x8d model starts from: the same mean, this std, and the stride
# in the 3x3 conv (configs/COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml:
# PIXEL_STD [57.375, 57.120, 58.395], STRIDE_IN_1X1 False).
DETECTRON2_X101_PIXEL_STD_BGR = (57.375, 57.120, 58.395)
# (depth, groups, width per group) of the ResNeXts in Detectron2's model zoo -> our backbone name
_RESNEXT = {(101, 32, 8): "resnext101_32x8d"}
_DEPTH_FROM_BLOCKS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}
_NORM_PARAM = r"(weight|bias|running_mean|running_var)"
# Same-name parts outside the ResNet (Detectron2 prefix, our prefix).
_PLAIN_RENAMES = (
    ("proposal_generator.rpn_head.conv.", "rpn_head.conv."),
    ("proposal_generator.rpn_head.objectness_logits.", "rpn_head.objectness_logits."),
    ("proposal_generator.rpn_head.anchor_deltas.", "rpn_head.anchor_deltas."),
    ("roi_heads.box_predictor.cls_score.", "box_predictor.cls_score."),
    ("roi_heads.box_predictor.bbox_pred.", "box_predictor.bbox_pred."),
    ("roi_heads.mask_head.deconv.", "mask_head.deconv."),
    ("roi_heads.mask_head.predictor.", "mask_head.predictor."),
    ("roi_heads.keypoint_head.score_lowres.", "keypoint_head.score_lowres."),
)


# ------------------------------------------------------------------------------- names, one by one
# Inside a ResNet block (or the stem): (Detectron2 name, torchvision/instaseg name); {i} is a conv
# index, {p} a norm parameter. One table serves both directions.
_BLOCK_NAMES = (
    ("conv{i}.weight", "conv{i}.weight"),
    ("conv{i}.norm.{p}", "bn{i}.{p}"),
    ("shortcut.weight", "downsample.0.weight"),
    ("shortcut.norm.{p}", "downsample.1.{p}"),
)


def _template_regex(template: str) -> str:
    escaped = re.escape(template)  # escapes the placeholders' braces too
    return escaped.replace(r"\{i\}", r"(?P<i>\d)").replace(r"\{p\}", f"(?P<p>{_NORM_PARAM})")


def _rename_block(rest: str, to_ours: bool) -> str | None:
    for d2, ours in _BLOCK_NAMES:
        source, target = (d2, ours) if to_ours else (ours, d2)
        if m := re.fullmatch(_template_regex(source), rest):
            return target.format(**m.groupdict())
    return None


def block_name_to_ours(rest: str) -> str | None:
    """Inside a ResNet block (or the stem): Detectron2 -> torchvision/instaseg naming.

    ``conv2.weight`` -> ``conv2.weight``, ``conv2.norm.bias`` -> ``bn2.bias``,
    ``shortcut.weight`` -> ``downsample.0.weight``, ``shortcut.norm.X`` -> ``downsample.1.X``.
    """
    return _rename_block(rest, to_ours=True)


def _block_name_to_d2(rest: str) -> str | None:
    return _rename_block(rest, to_ours=False)


def _prefixed(prefix: str, rest: str | None) -> str | None:
    return None if rest is None else prefix + rest


def detectron2_name_to_ours(name: str, fpn: bool) -> str | None:
    """Our name for Detectron2 tensor ``name`` of an FPN (``fpn=True``) or C4 model, or None."""
    body = "backbone.bottom_up." if fpn else "backbone."
    if name.startswith(body + "stem."):
        return _prefixed("backbone.", block_name_to_ours(name[len(body + "stem."):]))
    if m := re.fullmatch(re.escape(body) + r"res([2-5])\.(\d+)\.(.+)", name):
        return _prefixed(f"backbone.layer{int(m[1]) - 1}.{m[2]}.", block_name_to_ours(m[3]))
    if not fpn and (m := re.fullmatch(r"roi_heads\.res5\.(\d+)\.(.+)", name)):
        return _prefixed(f"box_head.res5.{m[1]}.", block_name_to_ours(m[2]))
    if fpn and (m := re.fullmatch(r"backbone\.fpn_(lateral|output)([2-5])\.(weight|bias)", name)):
        kind = "lateral_convs" if m[1] == "lateral" else "output_convs"
        return f"neck.{kind}.{int(m[2]) - 2}.{m[3]}"
    if m := re.fullmatch(r"roi_heads\.box_head\.fc([1-9])\.(weight|bias)", name):
        return f"box_head.fcs.{int(m[1]) - 1}.{m[2]}"
    if m := re.fullmatch(r"roi_heads\.mask_head\.mask_fcn([1-9])\.(weight|bias)", name):
        return f"mask_head.convs.{int(m[1]) - 1}.{m[2]}"
    if m := re.fullmatch(r"roi_heads\.keypoint_head\.conv_fcn(\d+)\.(weight|bias)", name):
        return f"keypoint_head.convs.{int(m[1]) - 1}.{m[2]}" if int(m[1]) >= 1 else None
    for old, new in _PLAIN_RENAMES:
        if name.startswith(old) and name[len(old):] in ("weight", "bias"):
            return new + name[len(old):]
    return None


def our_name_to_detectron2(name: str, fpn: bool) -> str | None:
    """The inverse of :func:`detectron2_name_to_ours`."""
    body = "backbone.bottom_up." if fpn else "backbone."
    if m := re.fullmatch(r"backbone\.layer([1-4])\.(\d+)\.(.+)", name):
        return _prefixed(f"{body}res{int(m[1]) + 1}.{m[2]}.", _block_name_to_d2(m[3]))
    if m := re.fullmatch(r"backbone\.(conv1\.weight|bn1\..+)", name):
        return _prefixed(f"{body}stem.", _block_name_to_d2(m[1]))
    if m := re.fullmatch(r"box_head\.res5\.(\d+)\.(.+)", name):
        return _prefixed(f"roi_heads.res5.{m[1]}.", _block_name_to_d2(m[2]))
    if m := re.fullmatch(r"neck\.(lateral|output)_convs\.(\d)\.(weight|bias)", name):
        return f"backbone.fpn_{m[1]}{int(m[2]) + 2}.{m[3]}"
    if m := re.fullmatch(r"box_head\.fcs\.(\d)\.(weight|bias)", name):
        return f"roi_heads.box_head.fc{int(m[1]) + 1}.{m[2]}"
    if m := re.fullmatch(r"mask_head\.convs\.(\d)\.(weight|bias)", name):
        return f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}"
    if m := re.fullmatch(r"keypoint_head\.convs\.(\d+)\.(weight|bias)", name):
        return f"roi_heads.keypoint_head.conv_fcn{int(m[1]) + 1}.{m[2]}"
    for old, new in _PLAIN_RENAMES:
        if name.startswith(new):
            return old + name[len(new):]
    return None


# ---------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Detectron2Layout:
    """What a Detectron2 R-CNN checkpoint is (Mask R-CNN, Keypoint R-CNN), read from its keys and shapes."""

    fpn: bool
    depth: int  # 50 or 101
    num_classes: int  # foreground classes (cls_score rows - 1)
    class_agnostic_mask: bool = False
    groups: int = 1  # ResNeXt: 32 groups of width 8 (X-101-32x8d)
    width_per_group: int = 64
    mask: bool = True  # a mask head (roi_heads.mask_head.*)
    num_keypoints: int = 0  # > 0: a keypoint head (roi_heads.keypoint_head.*) with that many maps
    keypoint_conv_dims: tuple[int, ...] = ()

    @property
    def resnext(self) -> bool:
        return self.groups > 1

    @property
    def preset(self) -> str:
        if self.num_keypoints:  # R-50-FPN only (detect_detectron2_layout refuses the others)
            return "keypoint_mask_rcnn_r50_fpn" if self.mask else "keypoint_rcnn_r50_fpn"
        if self.resnext:
            return f"mask_rcnn_x{self.depth}_{self.groups}x{self.width_per_group}d_fpn"
        return f"mask_rcnn_r{self.depth}_{'fpn' if self.fpn else 'c4'}"

    @property
    def architecture(self) -> str:
        backbone = f"X-{self.depth}-{self.groups}x{self.width_per_group}d" if self.resnext else f"R-{self.depth}"
        kind = ("Keypoint Mask R-CNN" if self.mask else "Keypoint R-CNN") if self.num_keypoints else "Mask R-CNN"
        return f"{kind} {backbone}-{'FPN' if self.fpn else 'C4'} (Detectron2)"


def _blocks(state: dict[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m[1] for k in state if (m := pattern.match(k))})


def detect_detectron2_layout(state: dict[str, Any]) -> Detectron2Layout:
    """FPN vs C4, R-50 vs R-101 (blocks per stage), num_classes; clear errors for the rest."""
    if "conv1_w" in state or any(k.startswith("res2_0_") for k in state):
        raise CheckpointError("Caffe2/Detectron1 names (res2_0_branch2a_w ...): not a Detectron2 "
                              "model-zoo detector. ImageNet backbones of this kind load as backbone weights.")
    if any("conv2_offset" in k for k in state):
        raise CheckpointError("deformable-conv Detectron2 checkpoints are not supported")
    fpn = any(k.startswith("backbone.bottom_up.res2.") for k in state)
    c4 = any(k.startswith("backbone.res2.") for k in state) and any(k.startswith("roi_heads.res5.") for k in state)
    if fpn == c4:
        raise CheckpointError("not a Detectron2 R-CNN ResNet checkpoint: found neither "
                              "backbone.bottom_up.res2.* (FPN) nor backbone.res2.* + roi_heads.res5.* (C4)")
    body = "backbone.bottom_up." if fpn else "backbone."
    counts = tuple(_blocks(state, f"{body}res{s}.") for s in (2, 3, 4)) + (
        _blocks(state, f"{body}res5.") if fpn else _blocks(state, "roi_heads.res5."),)
    if counts not in _DEPTH_FROM_BLOCKS:
        raise CheckpointError(f"unsupported ResNet: blocks per stage {counts}; supported: R-50 (3, 4, 6, 3), "
                              "R-101 (3, 4, 23, 3)")
    groups, width_per_group = _grouping(state.get(f"{body}res2.0.conv2.weight"))
    if groups > 1 and (not fpn or (_DEPTH_FROM_BLOCKS[counts], groups, width_per_group) not in _RESNEXT):
        raise CheckpointError(f"ResNeXt with {groups} groups of width {width_per_group} ({'FPN' if fpn else 'C4'}): "
                              "the supported ResNeXt is Detectron2's X-101-32x8d FPN")
    if "roi_heads.box_predictor.cls_score.weight" not in state:
        raise CheckpointError("no roi_heads.box_predictor.cls_score.weight: not a Detectron2 R-CNN checkpoint")
    num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1
    bbox_pred = state.get("roi_heads.box_predictor.bbox_pred.weight")
    if bbox_pred is not None and bbox_pred.shape[0] != 4 * num_classes:
        raise CheckpointError("class-agnostic box regression (CLS_AGNOSTIC_BBOX_REG) is not supported")
    mask_predictor = state.get("roi_heads.mask_head.predictor.weight")
    agnostic = mask_predictor is not None and mask_predictor.shape[0] == 1 and num_classes != 1
    num_keypoints, keypoint_dims = _keypoint_head(state)
    if num_keypoints and not (fpn and _DEPTH_FROM_BLOCKS[counts] == 50 and groups == 1):
        raise CheckpointError("Keypoint R-CNN: instaseg has the R-50-FPN presets only (keypoint_rcnn_r50_fpn)")
    return Detectron2Layout(fpn, _DEPTH_FROM_BLOCKS[counts], num_classes, agnostic, groups, width_per_group,
                            mask=mask_predictor is not None or not num_keypoints, num_keypoints=num_keypoints,
                            keypoint_conv_dims=keypoint_dims)


def _keypoint_head(state: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
    """(keypoint maps, output channels of conv_fcn1, 2, ...) of a keypoint head; (0, ()) without one."""
    score = state.get("roi_heads.keypoint_head.score_lowres.weight")
    if score is None:
        return 0, ()
    convs = {int(m[1]): v for k, v in state.items() if (m := re.fullmatch(r"roi_heads\.keypoint_head\.conv_fcn(\d+)"
                                                                            r"\.weight", k))}
    # ConvTranspose2d weights are (in, out, k, k): the keypoints are the second axis
    return int(score.shape[1]), tuple(int(convs[i].shape[0]) for i in sorted(convs))


def _grouping(conv2: Any) -> tuple[int, int]:
    """(groups, width per group) of res2's first 3x3 conv (out, in / groups, 3, 3); (1, 64) for a ResNet."""
    if conv2 is None or conv2.shape[0] == conv2.shape[1]:
        return 1, 64
    groups = int(conv2.shape[0]) // int(conv2.shape[1])
    return groups, int(conv2.shape[1])


def detectron2_config(layout: Detectron2Layout, pixel_mean: tuple[float, float, float] = DETECTRON2_PIXEL_MEAN_BGR,
                      pixel_std: tuple[float, float, float] | None = None) -> Config:
    """The preset for ``layout`` with Detectron2's conventions: BGR 0-255 input, stride in the 1x1
    (MSRA ResNets; the FAIR ResNeXt has it in the 3x3 and its own std), aligned RoIAlign with
    adaptive sampling, unrounded anchors, centre paste, and DefaultPredictor's resize (``int(x + 0.5)``
    sizes, Pillow's bilinear filter on the uint8 image). ``pixel_std`` None: the model's default."""
    if pixel_std is None:
        pixel_std = DETECTRON2_X101_PIXEL_STD_BGR if layout.resnext else DETECTRON2_PIXEL_STD_BGR
    base = get_preset(layout.preset)
    m = base.model
    model = replace(
        m,
        num_classes=layout.num_classes,
        backbone=replace(m.backbone, stride_in_1x1=not layout.resnext),
        rpn=replace(m.rpn, anchor_convention="detectron2"),
        box_head=replace(m.box_head, aligned=True, sampling_ratio=0),
        mask_head=None if m.mask_head is None else replace(m.mask_head, paste="centres",
                                                            class_agnostic=layout.class_agnostic_mask),
        keypoint_head=_keypoint_config(m.keypoint_head, layout),
        inference=replace(m.inference, detections_per_image=100),  # TEST.DETECTIONS_PER_IMAGE
    )
    # DefaultPredictor's ResizeShortestEdge: int(x + 0.5) sizes, Pillow's bilinear on the uint8 image
    inputs = replace(base.input, channel_order="BGR", pixel_mean=pixel_mean, pixel_std=pixel_std,
                     resize_rounding="round", resize_filter="pil_bilinear")
    return replace(base, name=f"{layout.preset}_detectron2", model=model, input=inputs)


def _keypoint_config(head: KeypointHeadConfig | None, layout: Detectron2Layout) -> KeypointHeadConfig | None:
    """Detectron2's ROI_KEYPOINT_HEAD (config/defaults.py): ROIAlignV2 (aligned, as its box pooler)
    with POOLER_SAMPLING_RATIO 0 (adaptive), 14 x 14, and the score its keypoint_rcnn_inference returns."""
    if head is None:
        return None
    return replace(head, num_keypoints=layout.num_keypoints, conv_dims=layout.keypoint_conv_dims, sampling_ratio=0,
                   pooler_resolution=14, score="detectron2")


# ------------------------------------------------------------------------------------ conversion
def _is_ignored(name: str) -> bool:
    # Step counters of trainable BN, and the cell anchors old checkpoints stored as buffers
    # (Detectron2 now rebuilds them from the config and ignores them too).
    return name.endswith("num_batches_tracked") or "anchor_generator.cell_anchors" in name


def _pixel_stats(state: dict[str, Tensor]) -> tuple[tuple[float, ...], tuple[float, ...] | None]:
    # Older checkpoints saved GeneralizedRCNN's pixel_mean/pixel_std buffers (3, 1, 1): trust them.
    # No std saved: None (the model's default, which differs for the ResNeXt).
    mean = state.pop("pixel_mean", None)
    std = state.pop("pixel_std", None)
    mean_t = DETECTRON2_PIXEL_MEAN_BGR if mean is None else tuple(float(v) for v in mean.flatten())
    std_t = None if std is None else tuple(float(v) for v in std.flatten())
    if len(mean_t) != 3 or (std_t is not None and len(std_t) != 3):
        raise CheckpointError("pixel_mean/pixel_std must have 3 values")
    return mean_t, std_t


def fill_missing_bn_stats(state: dict[str, Tensor], eps: float = INSTASEG_BN_EPS) -> int:
    """Give norms that have only ``weight``/``bias`` (Caffe2-style, affine already folded) the
    running stats that make our FrozenBN exactly ``x * weight + bias``: mean 0 and var ``1 - eps``
    (``rsqrt((1 - eps) + eps)`` is exactly 1 in float32; Detectron2 itself uses var 1, which scales
    by ``1 / sqrt(1 + eps)``). Works on our names; returns the number of norms filled."""
    filled = 0
    for name in [k for k in state if re.search(r"(^|\.)(bn\d|downsample\.1)\.weight$", k)]:
        stem = name[: -len("weight")]
        if stem + "running_mean" in state or stem + "running_var" in state:
            continue
        weight = state[name]
        state[stem + "running_mean"] = torch.zeros_like(weight)
        state[stem + "running_var"] = torch.ones_like(weight) - eps
        filled += 1
    return filled


@dataclass(frozen=True)
class Detectron2Conversion:
    """A converted Detectron2 checkpoint: our state dict, the config it loads into, and notes."""

    state: dict[str, Tensor]
    config: Config
    layout: Detectron2Layout
    notes: tuple[str, ...] = ()


def convert_detectron2_maskrcnn(state: dict[str, Any]) -> Detectron2Conversion:
    """Detectron2 Mask R-CNN or Keypoint R-CNN state dict (tensors or numpy arrays) -> our state dict and config.

    Every tensor is renamed (none reordered; Detectron2 also puts background last). Unknown keys
    raise :class:`CheckpointError`; ``num_batches_tracked`` and stored cell anchors are ignored;
    stored ``pixel_mean``/``pixel_std`` go into the config.
    """
    tensors = numpy_state_to_tensors({k: v for k, v in state.items() if not _is_ignored(k)})
    pixel_mean, pixel_std = _pixel_stats(tensors)
    layout = detect_detectron2_layout(tensors)
    def rename(name: str) -> str | None:  # a keypoint conv without its predictor has no counterpart
        if name.startswith("roi_heads.keypoint_head.") and not layout.num_keypoints:
            return None
        return detectron2_name_to_ours(name, layout.fpn)

    ours = rename_state_dict(tensors, rename, "Detectron2")
    ours = {k: v.float() if v.is_floating_point() else v for k, v in ours.items()}
    notes = []
    filled = fill_missing_bn_stats(ours)
    if filled:
        notes.append(f"{filled} norm layers had no running statistics: set to the identity (mean 0, var 1 - eps)")
    config = detectron2_config(layout, pixel_mean, pixel_std)
    if (pixel_mean, pixel_std) != (DETECTRON2_PIXEL_MEAN_BGR, None):
        notes.append(f"pixel mean {pixel_mean} / std {pixel_std} read from the checkpoint")
    return Detectron2Conversion(ours, config, layout, tuple(notes))


def to_detectron2_maskrcnn(our_state: dict[str, Tensor], fpn: bool) -> dict[str, Tensor]:
    """Our Mask R-CNN (R-50/101, FPN or C4) or Keypoint R-CNN state dict in Detectron2 names (for tests and export)."""
    return rename_state_dict(dict(our_state), lambda n: our_name_to_detectron2(n, fpn), "instaseg")


def _detectron2_state(payload: Any, source: str) -> dict[str, Any]:
    if isinstance(payload, dict) and "blobs" in payload:
        raise CheckpointError(f"{source}: a Caffe2/Detectron1 'blobs' file, not a Detectron2 model-zoo checkpoint")
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    if not isinstance(payload, dict) or not payload:
        raise CheckpointError(f"{source}: expected {{'model': {{name: array}}}} or a state dict")
    return payload


def read_detectron2_file(src: str | Path) -> ConvertedWeights:
    """A Detectron2 model-zoo Mask R-CNN or Keypoint R-CNN ``.pkl`` / ``.pth`` in instaseg's terms
    (``instaseg.hub.convert_detectron2_file`` saves it)."""
    state = _detectron2_state(load_weights_file(src), str(src))
    result = convert_detectron2_maskrcnn(state)
    summary = ConversionSummary(result.layout.architecture, result.layout.num_classes, len(result.state),
                                result.config.name, result.notes)
    return ConvertedWeights(result.state, result.config, summary)
