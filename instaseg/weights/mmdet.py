"""MMDetection 2.x / 3.x checkpoints (Mask R-CNN, MS R-CNN, YOLACT) <-> instaseg weights.

Names, from open-mmlab/mmdetection ``mmdet/models`` (mmcv's ``ConvModule`` keeps its conv as ``.conv``):

* ``backbones/resnet.py``, ``resnext.py``: ``backbone.conv1``, ``backbone.bn1``,
  ``backbone.layer{1..4}.{i}.{conv1..3, bn1..3, downsample.0, downsample.1}``: torchvision's names,
  and ours. ``style='pytorch'`` puts a block's stride in its 3x3 conv, ``style='caffe'`` in its
  first 1x1: the tensors do not show which, the config does (``instaseg.weights.mmdet_meta``).
* ``necks/fpn.py``: ``neck.lateral_convs.{i}.conv``, ``neck.fpn_convs.{i}.conv``, the extra levels'
  stride-2 convs (``add_extra_convs``) continuing ``fpn_convs`` after the outputs.
* ``dense_heads/rpn_head.py``: ``rpn_head.rpn_conv``, ``rpn_cls`` (sigmoid: one logit per anchor),
  ``rpn_reg``; the anchor generator lists a location's anchors ratio-major (ratios h/w 0.5, 1, 2;
  one size, 8 x the stride), centred on the grid points, unrounded: Detectron2's anchors.
* ``roi_heads/bbox_heads/convfc_bbox_head.py`` (``Shared2FCBBoxHead``):
  ``roi_head.bbox_head.shared_fcs.{0,1}``, ``fc_cls`` (C + 1 rows, background LAST since
  MMDetection 2.0, as ours) and ``fc_reg`` (4C rows, class-major): renamed, not reordered.
* ``roi_heads/mask_heads/fcn_mask_head.py``: ``roi_head.mask_head.convs.{i}.conv``, ``upsample``
  (the 2x2 deconv), ``conv_logits``; ``maskiou_head.py``: ``roi_head.mask_iou_head.convs.{i}``,
  ``fcs.{0,1}``, ``fc_mask_iou``. Its input is ours: the RoI features concatenated (features
  first) with the 2x2-max-pooled sigmoid of the detected class's mask logits.
* ``dense_heads/yolact_head.py``: ``bbox_head.head_convs.0.conv``, ``conv_cls`` (A x (C + 1),
  softmax, background last per anchor: ours), ``conv_reg``, ``conv_coeff``;
  ``mask_head.protonet.{0,2,4,8,10}`` (a Sequential with ReLUs and the 2x interpolation between);
  ``segm_head.segm_conv`` (2.x) or ``mask_head.segm_branch.segm_conv`` (3.x).

MMDetection's YOLACT differs from the reference YOLACT in ways the config carries: its FPN has no
ReLU and computes P6 from C5 (``add_extra_convs='on_input'``), its anchors are not square and come
in the order w/h = 2, 1, 0.5, its boxes are clipped before Fast NMS, which keeps only scores above
the threshold (``model.conventions``). Its semantic-segmentation targets put class k in channel k - 1
(``segm_targets[gt_labels - 1]``), so that conv's channels are rolled by one into ours (the head
only trains; inference does not read it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from instaseg.backbones.resnet import RESNET_PRESETS
from instaseg.config.presets import PUBLISHER_DETECTIONS, get_preset
from instaseg.config.schema import (
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    YOLACT_MEAN_RGB,
    YOLACT_STD_RGB,
    Config,
    MaskIoUConfig,
    YolactConventions,
)
from instaseg.errors import CheckpointError
from instaseg.weights.mmdet_meta import MMDetMeta, Normalization, category_ids_for, read_mmdet_meta
from instaseg.weights.common import ConversionSummary, ConvertedWeights, rename_state_dict
from instaseg.weights.safe_pickle import load_weights_file
from instaseg.weights.torchvision import unwrap_state_dict

__all__ = [
    "MMDetLayout",
    "MMDetConversion",
    "STYLES",
    "detect_mmdet_layout",
    "resolve_style",
    "default_normalization",
    "mmdet_config",
    "mmdet_name_to_ours",
    "our_name_to_mmdet",
    "convert_mmdet_state_dict",
    "to_mmdet_state_dict",
    "convert_mmdet_checkpoint",
    "read_mmdet_file",
]

STYLES = ("pytorch", "caffe")
_DEPTH_FROM_BLOCKS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}
_NORM = r"(weight|bias|running_mean|running_var)"
_BACKBONE = re.compile(rf"backbone\.(conv1\.weight|bn1\.{_NORM}|layer[1-4]\.\d+\."
                       rf"(conv[123]\.weight|bn[123]\.{_NORM}|downsample\.0\.weight|downsample\.1\.{_NORM}))")
_PROTONET = {0: "convs.0", 2: "convs.1", 4: "convs.2", 8: "post_conv", 10: "out_conv"}
_SEGM_PREFIXES = ("segm_head.segm_conv.", "mask_head.segm_branch.segm_conv.")
_SEMANTIC = "semantic_head.conv."
# MMDetection's configs, for checkpoints whose meta has no config text: caffe-style (MSRA) weights
# take BGR minus the mean, std 1; pytorch-style ones RGB with ImageNet statistics, except the
# X-101-32x8d (Detectron2's converted weights: BGR, ImageNet's std in BGR order); YOLACT its own.
_CAFFE = Normalization("BGR", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0))
_PYTORCH = Normalization("RGB", IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)
_X101_32X8D = Normalization("BGR", (103.53, 116.28, 123.675), (57.375, 57.12, 58.395))
_YOLACT = Normalization("RGB", YOLACT_MEAN_RGB, YOLACT_STD_RGB)
# A published MMDetection file is named after its config (2.x: mask_rcnn_r50_caffe_fpn_1x_coco_...;
# 3.x: mask-rcnn_r50-caffe_fpn_1x_coco_...).
_PUBLISHED_NAME = re.compile(r"^(mask[-_]rcnn|ms[-_]rcnn|yolact)[-_]")
_CAFFE_NAME = re.compile(r"[-_]caffe[-_]")


# ---------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class MMDetLayout:
    """What an MMDetection checkpoint is, read from its keys and shapes."""

    arch: str  # "mask_rcnn", "ms_rcnn" or "yolact"
    backbone: str  # an instaseg backbone: resnet50, resnet101, resnext101_32x8d ...
    num_classes: int  # foreground classes
    class_agnostic_mask: bool = False  # R-CNN: one mask for every class
    num_prototypes: int = 32  # YOLACT
    segm_prefix: str = ""  # YOLACT: the semantic conv's prefix (2.x or 3.x), "" without one

    @property
    def short_backbone(self) -> str:
        """``r50``, ``r101``, ``x101_32x8d`` ... as in MMDetection's config names."""
        return re.sub(r"^resnext(\d+)", r"x\1", re.sub(r"^resnet(\d+)", r"r\1", self.backbone))

    @property
    def architecture(self) -> str:
        kind = {"mask_rcnn": "Mask R-CNN", "ms_rcnn": "MS R-CNN", "yolact": "YOLACT"}[self.arch]
        neck = "" if self.arch == "yolact" else "-FPN"
        backbone = re.sub(r"^([rx])(\d+)_?", lambda m: f"{m[1].upper()}-{m[2]}-", self.short_backbone).rstrip("-")
        return f"{kind} {backbone}{neck} (MMDetection)"


def _blocks(state: dict[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m[1] for k in state if (m := pattern.match(k))})


def _backbone_name(state: dict[str, Any]) -> str:
    """resnet50 / resnet101, or resnext{depth}_{groups}x{width}d when instaseg has that one."""
    if any(k.startswith("backbone.stem.") for k in state):
        raise CheckpointError("a deep-stem ResNet (ResNetV1d, backbone.stem.*): not supported")
    if any(".conv_offset" in k for k in state):
        raise CheckpointError("deformable convolutions (DCN) in the backbone: not supported")
    counts = tuple(_blocks(state, f"backbone.layer{s}.") for s in range(1, 5))
    if counts not in _DEPTH_FROM_BLOCKS:
        raise CheckpointError(f"unsupported backbone: blocks per stage {counts}; supported: ResNet/ResNeXt-50 "
                              "(3, 4, 6, 3) and -101 (3, 4, 23, 3)")
    depth = _DEPTH_FROM_BLOCKS[counts]
    conv2 = state.get("backbone.layer1.0.conv2.weight")
    if conv2 is None or len(conv2.shape) != 4:
        raise CheckpointError("no backbone.layer1.0.conv2.weight: not an MMDetection ResNet/ResNeXt")
    width, per_group = int(conv2.shape[0]), int(conv2.shape[1])
    if width == per_group:
        return f"resnet{depth}"
    name = f"resnext{depth}_{width // per_group}x{per_group}d"  # res2's 3x3: groups x width per group
    if name not in RESNET_PRESETS:
        known = ", ".join(sorted(n for n in RESNET_PRESETS if n.startswith("resnext")))
        raise CheckpointError(f"ResNeXt-{depth} {width // per_group}x{per_group}d: not an instaseg backbone "
                              f"(instaseg has {known})")
    return name


def _rows(state: dict[str, Any], key: str) -> int:
    if key not in state:
        raise CheckpointError(f"no {key} in the state dict")
    return int(state[key].shape[0])


def _rcnn_layout(state: dict[str, Any], backbone: str) -> MMDetLayout:
    if any(k.startswith("roi_head.bbox_head.0.") for k in state):
        raise CheckpointError("a multi-stage RoI head (Cascade R-CNN / HTC): not supported")
    if "roi_head.mask_head.conv_logits.weight" not in state:
        raise CheckpointError("no roi_head.mask_head.conv_logits: a detector without masks (Faster R-CNN?)")
    num_classes = _rows(state, "roi_head.bbox_head.fc_cls.weight") - 1
    reg = _rows(state, "roi_head.bbox_head.fc_reg.weight")
    if reg != 4 * num_classes:
        raise CheckpointError(f"roi_head.bbox_head.fc_reg has {reg} rows for {num_classes} classes; only "
                              "class-specific box regression (4 per class) is supported")
    masks = _rows(state, "roi_head.mask_head.conv_logits.weight")
    if masks not in (num_classes, 1):
        raise CheckpointError(f"roi_head.mask_head.conv_logits has {masks} rows for {num_classes} classes")
    scoring = any(k.startswith("roi_head.mask_iou_head.") for k in state)
    if scoring and _rows(state, "roi_head.mask_iou_head.fc_mask_iou.weight") != num_classes:
        raise CheckpointError("roi_head.mask_iou_head.fc_mask_iou does not have one row per class")
    return MMDetLayout("ms_rcnn" if scoring else "mask_rcnn", backbone, num_classes,
                       class_agnostic_mask=masks == 1 and num_classes != 1)


def _yolact_layout(state: dict[str, Any], backbone: str) -> MMDetLayout:
    if _blocks(state, "bbox_head.head_convs.") != 1:
        raise CheckpointError("YOLACT head with other than one shared conv (num_head_convs): not supported")
    anchors = _rows(state, "bbox_head.conv_reg.weight") // 4
    if anchors != 3:
        raise CheckpointError(f"YOLACT head with {anchors} anchors per location; instaseg's has 3")
    segm = next((p for p in _SEGM_PREFIXES if p + "weight" in state), "")
    classes_out = _rows(state, "bbox_head.conv_cls.weight") // anchors
    num_classes = _rows(state, segm + "weight") if segm else classes_out - 1
    if classes_out != num_classes + 1:
        raise CheckpointError(f"bbox_head.conv_cls has {classes_out} outputs per anchor for {num_classes} classes: "
                              "only softmax class logits (C + 1, background last) are supported")
    prototypes = _rows(state, "bbox_head.conv_coeff.weight") // anchors
    return MMDetLayout("yolact", backbone, num_classes, num_prototypes=prototypes, segm_prefix=segm)


def detect_mmdet_layout(state: dict[str, Any]) -> MMDetLayout:
    """Mask R-CNN / MS R-CNN / YOLACT, the backbone, num_classes; clear errors for the rest."""
    if "bbox_head.conv_coeff.weight" in state:
        return _yolact_layout(state, _backbone_name(state))
    if any(k.startswith(("bbox_head.fc_cls.", "bbox_head.shared_fcs.")) for k in state):
        raise CheckpointError("an MMDetection 1.x checkpoint (bbox_head.* without roi_head.): convert it with "
                              "MMDetection's tools/model_converters/upgrade_model_version.py first")
    if any(k.startswith("roi_head.") for k in state):
        return _rcnn_layout(state, _backbone_name(state))
    raise CheckpointError(f"not an MMDetection Mask R-CNN, MS R-CNN or YOLACT state dict (first keys: "
                          f"{sorted(state)[:4]}); expected roi_head.mask_head.* or bbox_head.conv_coeff.*")


# ----------------------------------------------------------------------------------------- names
def _head_renames(layout: MMDetLayout) -> tuple[tuple[str, str], ...]:
    """(MMDetection prefix, our prefix) of every tensor outside the ResNet."""
    if layout.arch == "yolact":
        return (
            *((f"neck.lateral_convs.{i}.conv.", f"neck.lateral_convs.{i}.") for i in range(3)),
            *((f"neck.fpn_convs.{i}.conv.", f"neck.output_convs.{i}.") for i in range(3)),
            *((f"neck.fpn_convs.{3 + i}.conv.", f"neck.extra_convs.{i}.") for i in range(2)),
            ("bbox_head.head_convs.0.conv.", "prediction_head.upfeature."),
            ("bbox_head.conv_cls.", "prediction_head.conf_layer."),
            ("bbox_head.conv_reg.", "prediction_head.bbox_layer."),
            ("bbox_head.conv_coeff.", "prediction_head.mask_layer."),
            *((f"mask_head.protonet.{i}.", f"protonet.{ours}.") for i, ours in _PROTONET.items()),
            *(((layout.segm_prefix, _SEMANTIC),) if layout.segm_prefix else ()),
        )
    return (
        *((f"neck.lateral_convs.{i}.conv.", f"neck.lateral_convs.{i}.") for i in range(4)),
        *((f"neck.fpn_convs.{i}.conv.", f"neck.output_convs.{i}.") for i in range(4)),
        ("rpn_head.rpn_conv.", "rpn_head.conv."),
        ("rpn_head.rpn_cls.", "rpn_head.objectness_logits."),
        ("rpn_head.rpn_reg.", "rpn_head.anchor_deltas."),
        *((f"roi_head.bbox_head.shared_fcs.{i}.", f"box_head.fcs.{i}.") for i in range(2)),
        ("roi_head.bbox_head.fc_cls.", "box_predictor.cls_score."),
        ("roi_head.bbox_head.fc_reg.", "box_predictor.bbox_pred."),
        *((f"roi_head.mask_head.convs.{i}.conv.", f"mask_head.convs.{i}.") for i in range(4)),
        ("roi_head.mask_head.upsample.", "mask_head.deconv."),
        ("roi_head.mask_head.conv_logits.", "mask_head.predictor."),
        *((f"roi_head.mask_iou_head.convs.{i}.", f"maskiou_head.convs.{i}.") for i in range(4)),
        ("roi_head.mask_iou_head.fcs.0.", "maskiou_head.fc1."),
        ("roi_head.mask_iou_head.fcs.1.", "maskiou_head.fc2."),
        ("roi_head.mask_iou_head.fc_mask_iou.", "maskiou_head.predictor."),
    )


def _rename(name: str, pairs: tuple[tuple[str, str], ...]) -> str | None:
    if _BACKBONE.fullmatch(name):  # the same names on both sides
        return name
    for source, target in pairs:
        if name.startswith(source) and name[len(source):] in ("weight", "bias"):
            return target + name[len(source):]
    return None


def mmdet_name_to_ours(name: str, layout: MMDetLayout) -> str | None:
    """Our name for MMDetection tensor ``name`` of a ``layout`` model, or None if it has none."""
    return _rename(name, _head_renames(layout))


def our_name_to_mmdet(name: str, layout: MMDetLayout) -> str | None:
    """The inverse of :func:`mmdet_name_to_ours`."""
    return _rename(name, tuple((ours, theirs) for theirs, ours in _head_renames(layout)))


def convert_mmdet_state_dict(state: dict[str, Tensor], layout: MMDetLayout) -> dict[str, Tensor]:
    """MMDetection state dict -> ours: renamed (``num_batches_tracked`` dropped), floats as float32,
    and the YOLACT semantic conv's channels rolled by one (channel k - 1 held class k)."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    ours = rename_state_dict(state, lambda n: mmdet_name_to_ours(n, layout), "MMDetection")
    ours = {k: (v.float() if v.is_floating_point() else v).detach() for k, v in ours.items()}
    for name in [k for k in ours if k.startswith(_SEMANTIC)]:
        ours[name] = ours[name].roll(1, dims=0)
    return ours


def to_mmdet_state_dict(our_state: dict[str, Tensor], layout: MMDetLayout) -> dict[str, Tensor]:
    """Our state dict of a ``layout`` model in MMDetection's names (the inverse of
    :func:`convert_mmdet_state_dict`, without the BatchNorm step counters)."""
    theirs = rename_state_dict(dict(our_state), lambda n: our_name_to_mmdet(n, layout), "instaseg")
    if layout.segm_prefix:
        for name in [k for k in theirs if k.startswith(layout.segm_prefix)]:
            theirs[name] = theirs[name].roll(-1, dims=0)
    return theirs


# ---------------------------------------------------------------------------------- conventions
def resolve_style(meta: MMDetMeta, style: str | None = None, file_name: str = "") -> tuple[str, str]:
    """The backbone style ("pytorch" or "caffe") and where it came from: the ``style`` argument,
    the config text in ``meta``, or a published MMDetection file name (``*_caffe_*``)."""
    if style is not None and style not in STYLES:
        raise CheckpointError(f"style {style!r}: use one of {STYLES}")
    from_meta = meta.style
    if style is not None and from_meta is not None and style != from_meta:
        raise CheckpointError(f"style {style!r} was given but the checkpoint's config says style={from_meta!r}")
    if style is not None:
        return style, "the style argument"
    if from_meta is not None:
        return from_meta, "the checkpoint's config"
    name = Path(file_name).name
    if _PUBLISHED_NAME.match(name):
        return ("caffe" if _CAFFE_NAME.search(name) else "pytorch"), f"the file name {name}"
    raise CheckpointError(
        "cannot tell a caffe-style backbone (stride in the 1x1 conv, BGR input) from a pytorch-style one "
        "(stride in the 3x3, RGB): the checkpoint's meta has no config text naming it and the file name is "
        "not an MMDetection config name. Give the style (instaseg convert --from mmdet --style pytorch|caffe).")


def default_normalization(layout: MMDetLayout, style: str) -> Normalization:
    """MMDetection's normalization for ``layout`` in ``style``, when the config text states none."""
    if layout.arch == "yolact":
        return _YOLACT
    if style == "caffe":
        return _CAFFE
    return _X101_32X8D if layout.backbone == "resnext101_32x8d" else _PYTORCH


def _rcnn_config(layout: MMDetLayout, caffe: bool) -> Config:
    base = get_preset("mask_rcnn_r50_fpn")
    m = base.model
    model = replace(
        m,
        num_classes=layout.num_classes,
        backbone=replace(m.backbone, name=layout.backbone, stride_in_1x1=caffe),
        # mmcv RoIAlign(aligned=True) with sampling_ratio=0 (adaptive), 7x7 boxes, 14x14 masks
        box_head=replace(m.box_head, aligned=True, sampling_ratio=0),
        # FCNMaskHead._do_paste_mask: grid_sample at pixel centres, mask_thr_binary 0.5 (>=)
        mask_head=replace(m.mask_head, paste="centres", class_agnostic=layout.class_agnostic_mask),
        maskiou=MaskIoUConfig() if layout.arch == "ms_rcnn" else None,
        # AnchorGenerator(scales=[8], ratios=[0.5, 1, 2], strides 4..64), center_offset 0, unrounded;
        # test_cfg: rpn nms_pre=1000 per level, max_per_img=1000, NMS 0.7; rcnn score_thr=0.05, NMS 0.5,
        # max_per_img=100
        rpn=replace(m.rpn, anchor_convention="detectron2", anchor_strides="fixed", pre_nms_topk_test=1000,
                    post_nms_topk_test=1000, nms_thresh=0.7),
        inference=replace(m.inference, score_thresh=0.05, nms_thresh=0.5, detections_per_image=PUBLISHER_DETECTIONS),
    )
    # Resize(img_scale=(1333, 800), keep_ratio=True) -> mmcv.rescale_size; Pad(size_divisor=32)
    inputs = replace(base.input, min_size_test=800, max_size_test=1333, size_divisibility=32,
                     resize_rounding="mmcv", resize_filter="bilinear")
    name = f"{layout.arch}_{layout.short_backbone}{'_caffe' if caffe else ''}_fpn_mmdet"
    return replace(base, name=name, model=model, input=inputs)


def _yolact_config(layout: MMDetLayout, caffe: bool) -> Config:
    base = get_preset("yolact_r101_550")
    m = base.model
    # AnchorGenerator(octave_base_scale=3, base_sizes=[8, 16, 32, 64, 128], ratios=[0.5, 1, 2] as
    # h/w, strides 550 / [69, 35, 18, 9, 5], centres at half a stride): sizes 24..384, w/h 2, 1, 0.5.
    head = replace(m.head, anchor_scales=((24.0,), (48.0,), (96.0,), (192.0,), (384.0,)),
                   aspect_ratios=(2.0, 1.0, 0.5), square_anchors=False, num_prototypes=layout.num_prototypes,
                   semantic_seg=bool(layout.segm_prefix))
    # YOLACTHead._get_bboxes_single decodes with max_shape (boxes clipped before Fast NMS);
    # fast_nms keeps scores > score_thr only; YOLACTProtonet.crop compares pixel indices.
    conventions = YolactConventions(box_clip="before_nms", crop="pixel_index", fast_nms_fill="none")
    # test_cfg: score_thr=0.05, iou_thr=0.5, top_k=200, max_per_img=100
    inference = replace(m.inference, nms="fast_nms", score_thresh=0.05, nms_thresh=0.5,
                        detections_per_image=PUBLISHER_DETECTIONS)
    model = replace(m, num_classes=layout.num_classes,
                    backbone=replace(m.backbone, name=layout.backbone, stride_in_1x1=caffe),
                    fpn=replace(m.fpn, extra_from="input", relu_outputs=False), head=head, conventions=conventions,
                    nms_top_k=200, inference=inference)
    name = f"yolact_{layout.short_backbone}{'_caffe' if caffe else ''}_550_mmdet"
    return replace(base, name=name, model=model)


def mmdet_config(layout: MMDetLayout, style: str, normalization: Normalization | None = None) -> Config:
    """The instaseg config for ``layout`` with MMDetection's inference conventions (see the notes of
    :func:`convert_mmdet_checkpoint` for the few it cannot carry)."""
    if style not in STYLES:
        raise CheckpointError(f"style {style!r}: use one of {STYLES}")
    caffe = style == "caffe"
    config = _yolact_config(layout, caffe) if layout.arch == "yolact" else _rcnn_config(layout, caffe)
    norm = normalization or default_normalization(layout, style)
    inputs = replace(config.input, channel_order=norm.channel_order, pixel_mean=norm.pixel_mean,
                     pixel_std=norm.pixel_std)
    return replace(config, input=inputs)


# ------------------------------------------------------------------------------------ conversion
@dataclass(frozen=True)
class MMDetConversion:
    """A converted MMDetection checkpoint: our state dict, its config, class names and notes."""

    state: dict[str, Tensor]
    config: Config
    layout: MMDetLayout
    classes: tuple[str, ...] | None = None
    notes: tuple[str, ...] = ()

    @property
    def categories(self) -> dict[str, list] | None:
        """``{"ids", "names"}`` for the instaseg checkpoint, when the meta named the classes."""
        if self.classes is None:
            return None
        return {"ids": category_ids_for(self.classes), "names": list(self.classes)}


# What instaseg runs differently from MMDetection, per architecture (none changes a tensor).
_NOT_REPRESENTED = {
    "common": (
        "MMDetection resizes the uint8 image with OpenCV's bilinear (fixed-point weights, uint8 result); "
        "instaseg interpolates the float image (pixels differ by about one grey level)",
        "MMDetection also clamps box deltas dw, dh from below at -log(1000/16); instaseg only from above "
        "(differs for boxes shrunk more than 60x)",
    ),
    "rcnn": ("float rounding only: anchors, the FPN level of a RoI and the boxes' rescaling to the image are "
             "computed in another order (differences near 1e-6)",),
    "ms_rcnn": ("mask scores: MMDetection multiplies the class score by the raw predicted MaskIoU; instaseg "
                "clamps it to [0, 1] first",),
    "yolact": (
        "float rounding only: anchors and the boxes' rescaling to the image are computed in another order "
        "(differences near 1e-6)",
        "candidates: MMDetection keeps the 1000 best anchors of each level (nms_pre) before Fast NMS; "
        "instaseg every anchor with a class score above the threshold",
        "masks: binarized at > 0.5 in MMDetection, >= 0.5 in instaseg",
    ),
}


def _notes(layout: MMDetLayout, meta: MMDetMeta, style_source: str, normalization: Normalization | None,
           classes: tuple[str, ...] | None) -> list[str]:
    notes = [f"written by {meta.version}"] if meta.version else []
    notes.append(f"backbone style from {style_source}")
    notes.append("normalization from the checkpoint's config" if normalization else
                 "normalization: MMDetection's usual one for this backbone and style (no config text states it)")
    if meta.classes is not None and classes is None:
        notes.append(f"meta lists {len(meta.classes)} classes for a {layout.num_classes}-class model: ignored")
    elif classes is not None:
        notes.append(f"class names from the meta ({classes[0]!r} ...)")
    if layout.segm_prefix:
        notes.append("semantic-segmentation conv (training only) rolled by one channel: MMDetection trained "
                     "class k into channel k - 1")
    rcnn = _NOT_REPRESENTED["rcnn"] if layout.arch != "yolact" else ()
    missing = _NOT_REPRESENTED["common"] + rcnn + _NOT_REPRESENTED.get(layout.arch, ())
    return notes + [f"not represented: {n}" for n in missing]


def convert_mmdet_checkpoint(payload: Any, style: str | None = None, file_name: str = "") -> MMDetConversion:
    """A loaded MMDetection file (``{"state_dict": ..., "meta": ...}`` or a bare state dict) -> our
    state dict, config, classes and notes. ``style`` ("pytorch"/"caffe") is needed only when neither
    the meta's config text nor a published ``file_name`` tells it (see :func:`resolve_style`)."""
    state = unwrap_state_dict(payload, file_name or "checkpoint")
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{file_name or 'checkpoint'}: expected tensors in the state dict")
    meta = read_mmdet_meta(payload.get("meta") if isinstance(payload, dict) else None)
    layout = detect_mmdet_layout(state)
    chosen, source = resolve_style(meta, style, file_name)
    normalization = meta.normalization
    config = mmdet_config(layout, chosen, normalization)
    classes = meta.classes if meta.classes is not None and len(meta.classes) == layout.num_classes else None
    notes = _notes(layout, meta, source, normalization, classes)
    return MMDetConversion(convert_mmdet_state_dict(state, layout), config, layout, classes, tuple(notes))


def read_mmdet_file(src: str | Path, style: str | None = None) -> ConvertedWeights:
    """An MMDetection 2.x/3.x Mask R-CNN, MS R-CNN or YOLACT ``.pth`` (read with ``weights_only=True``)
    in instaseg's terms, with the meta's class names (``instaseg.hub.convert_mmdet_file`` saves it)."""
    result = convert_mmdet_checkpoint(load_weights_file(src), style, str(src))
    summary = ConversionSummary(result.layout.architecture, result.layout.num_classes, len(result.state),
                                result.config.name, result.notes)
    return ConvertedWeights(result.state, result.config, summary, result.categories)
