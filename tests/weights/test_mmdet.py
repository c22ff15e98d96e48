"""MMDetection converter against synthetic state dicts with MMDetection's exact key names and shapes.

``mmdet_shapes`` writes MMDetection's state dicts out from its module tree (open-mmlab/mmdetection
``mmdet/models``), not from the converter's table:

* ``backbones/resnet.py`` / ``resnext.py``: ``conv1``, ``bn1`` (``build_norm_layer(..., postfix=1)``),
  ``layer{1..4}`` of Bottlenecks ``conv1/bn1/conv2/bn2/conv3/bn3`` with ``downsample = Sequential(conv,
  norm)`` on the first block; ``nn.BatchNorm2d`` (so ``num_batches_tracked``); a ResNeXt's 3x3 width is
  ``floor(planes * base_width / 64) * groups``, its weight ``(width, width / groups, 3, 3)``;
* ``necks/fpn.py``: ``lateral_convs`` / ``fpn_convs`` of ``ConvModule`` (``.conv``), YOLACT's
  ``start_level=1, add_extra_convs='on_input', num_outs=5``: fpn_convs.3 reads C5 (2048 channels);
* ``dense_heads/rpn_head.py``: ``rpn_conv`` 3x3, ``rpn_cls`` (A x 1, sigmoid), ``rpn_reg`` (A x 4);
* ``roi_heads/bbox_heads/convfc_bbox_head.py`` ``Shared2FCBBoxHead``: ``shared_fcs.{0,1}``, ``fc_cls``
  (C + 1), ``fc_reg`` (4C); ``mask_heads/fcn_mask_head.py``: ``convs.{0..3}.conv``, ``upsample``
  (ConvTranspose2d: (in, out, 2, 2)), ``conv_logits``; ``mask_heads/maskiou_head.py``: ``convs.{0..3}``
  (the first with 257 inputs, the last stride 2), ``fcs.{0,1}`` (256 * 7 * 7 -> 1024), ``fc_mask_iou``;
* ``dense_heads/yolact_head.py``: ``head_convs.0.conv``, ``conv_cls`` (A (C + 1)), ``conv_reg``,
  ``conv_coeff`` (A x 32), all 3x3; ``YOLACTProtonet.protonet`` (Sequential: conv, ReLU, ... the
  interpolation at index 6: convs at 0, 2, 4, 8, 10); ``YOLACTSegmHead.segm_conv`` (2.x) /
  ``SegmentationModule.segm_conv`` under ``mask_head.segm_branch`` (3.x).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from instaseg.cli.main import main as cli_main
from instaseg.detectors.build import build_from_config
from instaseg.engine.checkpoint import checkpoint_categories, load_checkpoint
from instaseg.errors import CheckpointError
from instaseg.heads.maskiou_head import MaskIoUHead
from instaseg.structures.boxes import box_iou
from instaseg.weights.mmdet import (
    convert_mmdet_checkpoint,
    convert_mmdet_state_dict,
    detect_mmdet_layout,
    mmdet_config,
    to_mmdet_state_dict,
)
from instaseg.data.coco_categories import coco_categories
from instaseg.weights.mmdet_meta import Normalization, category_ids_for, read_mmdet_meta

NORM = ("weight", "bias", "running_mean", "running_var")
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


# ------------------------------------------------------------------------------ MMDetection's keys
def _resnet(shapes: dict, depth: int, groups: int, base_width: int) -> None:
    def bn(name: str, channels: int) -> None:
        shapes.update({f"{name}.{p}": (channels,) for p in NORM})
        shapes[f"{name}.num_batches_tracked"] = ()

    shapes["backbone.conv1.weight"] = (64, 3, 7, 7)
    bn("backbone.bn1", 64)
    inplanes = 64
    for stage, blocks in enumerate(BLOCKS[depth]):
        planes = 64 * 2**stage
        width = planes if groups == 1 else math.floor(planes * base_width / 64) * groups
        for i in range(blocks):
            block = f"backbone.layer{stage + 1}.{i}"
            for conv, shape in (("1", (width, inplanes, 1, 1)), ("2", (width, width // groups, 3, 3)),
                                ("3", (4 * planes, width, 1, 1))):
                shapes[f"{block}.conv{conv}.weight"] = shape
                bn(f"{block}.bn{conv}", shape[0])
            if i == 0:
                shapes[f"{block}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                bn(f"{block}.downsample.1", 4 * planes)
            inplanes = 4 * planes


def _layer(shapes: dict, name: str, shape: tuple[int, ...], transposed: bool = False) -> None:
    shapes[f"{name}.weight"] = shape
    shapes[f"{name}.bias"] = (shape[1] if transposed else shape[0],)


def mmdet_shapes(arch: str, num_classes: int, depth: int = 50, groups: int = 1, base_width: int = 4,
                 version: int = 2) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an MMDetection Mask R-CNN / MS R-CNN (FPN) or YOLACT state dict."""
    shapes: dict[str, tuple[int, ...]] = {}
    _resnet(shapes, depth, groups, base_width)
    if arch == "yolact":
        for i, c in enumerate((512, 1024, 2048)):
            _layer(shapes, f"neck.lateral_convs.{i}.conv", (256, c, 1, 1))
            _layer(shapes, f"neck.fpn_convs.{i}.conv", (256, 256, 3, 3))
        _layer(shapes, "neck.fpn_convs.3.conv", (256, 2048, 3, 3))  # 'on_input': from C5
        _layer(shapes, "neck.fpn_convs.4.conv", (256, 256, 3, 3))
        _layer(shapes, "bbox_head.head_convs.0.conv", (256, 256, 3, 3))
        _layer(shapes, "bbox_head.conv_cls", (3 * (num_classes + 1), 256, 3, 3))
        _layer(shapes, "bbox_head.conv_reg", (3 * 4, 256, 3, 3))
        _layer(shapes, "bbox_head.conv_coeff", (3 * 32, 256, 3, 3))
        for index, out in ((0, 256), (2, 256), (4, 256), (8, 256), (10, 32)):
            _layer(shapes, f"mask_head.protonet.{index}", (out, 256, 1 if index == 10 else 3, 1 if index == 10 else 3))
        segm = "segm_head.segm_conv" if version == 2 else "mask_head.segm_branch.segm_conv"
        _layer(shapes, segm, (num_classes, 256, 1, 1))
        return shapes
    for i, c in enumerate((256, 512, 1024, 2048)):
        _layer(shapes, f"neck.lateral_convs.{i}.conv", (256, c, 1, 1))
        _layer(shapes, f"neck.fpn_convs.{i}.conv", (256, 256, 3, 3))
    _layer(shapes, "rpn_head.rpn_conv", (256, 256, 3, 3))
    _layer(shapes, "rpn_head.rpn_cls", (3, 256, 1, 1))
    _layer(shapes, "rpn_head.rpn_reg", (12, 256, 1, 1))
    _layer(shapes, "roi_head.bbox_head.shared_fcs.0", (1024, 256 * 7 * 7))
    _layer(shapes, "roi_head.bbox_head.shared_fcs.1", (1024, 1024))
    _layer(shapes, "roi_head.bbox_head.fc_cls", (num_classes + 1, 1024))
    _layer(shapes, "roi_head.bbox_head.fc_reg", (4 * num_classes, 1024))
    for i in range(4):
        _layer(shapes, f"roi_head.mask_head.convs.{i}.conv", (256, 256, 3, 3))
    _layer(shapes, "roi_head.mask_head.upsample", (256, 256, 2, 2), transposed=True)
    _layer(shapes, "roi_head.mask_head.conv_logits", (num_classes, 256, 1, 1))
    if arch == "ms_rcnn":
        for i in range(4):
            _layer(shapes, f"roi_head.mask_iou_head.convs.{i}", (256, 257 if i == 0 else 256, 3, 3))
        _layer(shapes, "roi_head.mask_iou_head.fcs.0", (1024, 256 * 7 * 7))
        _layer(shapes, "roi_head.mask_iou_head.fcs.1", (1024, 1024))
        _layer(shapes, "roi_head.mask_iou_head.fc_mask_iou", (num_classes, 1024))
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    state = {}
    for index, (name, shape) in enumerate(shapes.items()):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(index)
        else:
            state[name] = torch.rand(shape) + index  # distinct ranges: a misplaced tensor cannot pass
    return state


def meta_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


_PROTONET = {"0": "convs.0", "2": "convs.1", "4": "convs.2", "8": "post_conv", "10": "out_conv"}
_TABLE = [
    (r"(backbone\..+)", lambda m: m[1]),
    (r"neck\.lateral_convs\.(\d)\.conv\.(\w+)", lambda m: f"neck.lateral_convs.{m[1]}.{m[2]}"),
    (r"neck\.fpn_convs\.(\d)\.conv\.(\w+)", lambda m: f"neck.output_convs.{m[1]}.{m[2]}"),
    (r"rpn_head\.rpn_(conv|cls|reg)\.(\w+)",
     lambda m: f"rpn_head.{dict(conv='conv', cls='objectness_logits', reg='anchor_deltas')[m[1]]}.{m[2]}"),
    (r"roi_head\.bbox_head\.shared_fcs\.(\d)\.(\w+)", lambda m: f"box_head.fcs.{m[1]}.{m[2]}"),
    (r"roi_head\.bbox_head\.fc_(cls|reg)\.(\w+)",
     lambda m: f"box_predictor.{'cls_score' if m[1] == 'cls' else 'bbox_pred'}.{m[2]}"),
    (r"roi_head\.mask_head\.convs\.(\d)\.conv\.(\w+)", lambda m: f"mask_head.convs.{m[1]}.{m[2]}"),
    (r"roi_head\.mask_head\.upsample\.(\w+)", lambda m: f"mask_head.deconv.{m[1]}"),
    (r"roi_head\.mask_head\.conv_logits\.(\w+)", lambda m: f"mask_head.predictor.{m[1]}"),
    (r"roi_head\.mask_iou_head\.convs\.(\d)\.(\w+)", lambda m: f"maskiou_head.convs.{m[1]}.{m[2]}"),
    (r"roi_head\.mask_iou_head\.fcs\.(\d)\.(\w+)", lambda m: f"maskiou_head.fc{int(m[1]) + 1}.{m[2]}"),
    (r"roi_head\.mask_iou_head\.fc_mask_iou\.(\w+)", lambda m: f"maskiou_head.predictor.{m[1]}"),
    (r"bbox_head\.head_convs\.0\.conv\.(\w+)", lambda m: f"prediction_head.upfeature.{m[1]}"),
    (r"bbox_head\.conv_(cls|reg|coeff)\.(\w+)",
     lambda m: f"prediction_head.{dict(cls='conf_layer', reg='bbox_layer', coeff='mask_layer')[m[1]]}.{m[2]}"),
    (r"mask_head\.protonet\.(\d+)\.(\w+)", lambda m: f"protonet.{_PROTONET[m[1]]}.{m[2]}"),
    (r"(segm_head|mask_head\.segm_branch)\.segm_conv\.(\w+)", lambda m: f"semantic_head.conv.{m[2]}"),
]


def expected_our_name(name: str, yolact: bool = False) -> str:
    """Our name of an MMDetection tensor, written independently of the converter."""
    if yolact and (m := re.fullmatch(r"neck\.fpn_convs\.([34])\.conv\.(\w+)", name)):  # P6, P7 after P3-P5
        return f"neck.extra_convs.{int(m[1]) - 3}.{m[2]}"
    for pattern, build in _TABLE:
        if m := re.fullmatch(pattern, name):
            return build(m)
    raise AssertionError(name)


def model_shapes(config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def pytorch_meta(extra: str = "") -> dict:
    """An MMDetection 2.x meta as its runner saves it: pretty_text of the config, CLASSES."""
    text = ("model = dict(\n    type='MaskRCNN',\n    backbone=dict(\n        type='ResNet',\n"
            "        depth=50,\n        norm_eval=True,\n        style='pytorch'),\n"
            "    rpn_head=dict(bbox_coder=dict(target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0])))\n"
            "img_norm_cfg = dict(\n    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)\n"
            "test_pipeline = [dict(type='Normalize', mean=[123.675, 116.28, 103.53],\n"
            "        std=[58.395, 57.12, 57.375], to_rgb=True)]\n" + extra)
    return {"mmdet_version": "2.25.0", "config": text, "CLASSES": ("cat", "dog", "bird")}


CAFFE_TEXT = ("model = dict(backbone=dict(type='ResNet', depth=50, norm_cfg=dict(type='BN', requires_grad=False),"
              " style='caffe'))\nimg_norm_cfg = dict(\n    mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], "
              "to_rgb=False)\n")
# MMDetection 3.x: the normalization lives in the data preprocessor, the classes in dataset_meta;
# MMEngine's dumps sort a dict's arguments and put one value a line
V3_SORTED_TEXT = ("model = dict(\n    backbone=dict(\n        depth=50,\n        out_indices=(\n            0,\n"
                  "            1,\n        ),\n        style='caffe',\n        type='ResNet'),\n"
                  "    data_preprocessor=dict(\n        bgr_to_rgb=False,\n        mean=[\n            103.53,\n"
                  "            116.28,\n            123.675,\n        ],\n        pad_size_divisor=32,\n"
                  "        std=[\n            1.0,\n            1.0,\n            1.0,\n        ],\n"
                  "        type='DetDataPreprocessor'))\n")
V3_YOLACT_TEXT = ("model = dict(\n    type='YOLACT',\n    data_preprocessor=dict(\n        type='DetDataPreprocessor',"
                  "\n        mean=[123.68, 116.78, 103.94],\n        std=[58.4, 57.12, 57.38],\n        bgr_to_rgb=True,"
                  "\n        pad_mask=True),\n    backbone=dict(type='ResNet', depth=50, style='pytorch'))\n"
                  "train_pipeline = [dict(type='Expand', mean=[123.68, 116.78, 103.94], to_rgb=True, "
                  "ratio_range=(1, 4))]\n")


@pytest.fixture(scope="module")
def mask_rcnn() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return random_state(mmdet_shapes("mask_rcnn", 3))


@pytest.fixture(scope="module")
def ms_rcnn() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return random_state(mmdet_shapes("ms_rcnn", 2))


@pytest.fixture(scope="module")
def yolact() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return random_state(mmdet_shapes("yolact", 3))


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("fixture, arch, preset", [("mask_rcnn", "mask_rcnn", "mask_rcnn_r50_fpn_mmdet"),
                                                   ("ms_rcnn", "ms_rcnn", "ms_rcnn_r50_fpn_mmdet"),
                                                   ("yolact", "yolact", "yolact_r50_550_mmdet")])
def test_every_tensor_lands_where_it_should(fixture: str, arch: str, preset: str, request) -> None:
    state = request.getfixturevalue(fixture)
    result = convert_mmdet_checkpoint({"state_dict": state, "meta": pytorch_meta()})
    assert (result.layout.arch, result.layout.backbone) == (arch, "resnet50")
    assert result.config.name == preset and result.config.model.num_classes == result.layout.num_classes
    # nothing missing, nothing unused: exactly the built model's keys and shapes
    assert {k: tuple(v.shape) for k, v in result.state.items()} == model_shapes(result.config)
    for name, value in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        ours = result.state[expected_our_name(name, yolact=arch == "yolact")]
        if "segm_conv" in name:  # MMDetection trained class k into channel k - 1
            ours = ours.roll(-1, dims=0)
        assert torch.equal(ours, value), name


def test_class_rows_keep_their_order(mask_rcnn, yolact) -> None:
    """MMDetection 2.x/3.x put background LAST, as instaseg: the predictors are renamed, not permuted;
    only YOLACT's semantic conv (training only) moves, by one channel."""
    ours = convert_mmdet_checkpoint({"state_dict": mask_rcnn, "meta": pytorch_meta()}).state
    assert torch.equal(ours["box_predictor.cls_score.weight"][-1], mask_rcnn["roi_head.bbox_head.fc_cls.weight"][-1])
    assert torch.equal(ours["box_predictor.bbox_pred.weight"][4:8], mask_rcnn["roi_head.bbox_head.fc_reg.weight"][4:8])
    assert torch.equal(ours["mask_head.predictor.weight"], mask_rcnn["roi_head.mask_head.conv_logits.weight"])
    ours = convert_mmdet_checkpoint({"state_dict": yolact, "meta": pytorch_meta()}).state
    # anchor a, class c at row a * (C + 1) + c in both; background at a * (C + 1) + C
    assert torch.equal(ours["prediction_head.conf_layer.weight"], yolact["bbox_head.conv_cls.weight"])
    segm = yolact["segm_head.segm_conv.weight"]
    assert torch.equal(ours["semantic_head.conv.weight"][1], segm[0])
    assert torch.equal(ours["semantic_head.conv.weight"][0], segm[-1])


@pytest.mark.parametrize("arch, depth, groups, width, backbone", [
    ("mask_rcnn", 101, 1, 4, "resnet101"), ("ms_rcnn", 101, 32, 8, "resnext101_32x8d"),
    ("ms_rcnn", 101, 32, 4, "resnext101_32x4d"), ("ms_rcnn", 101, 64, 4, "resnext101_64x4d"),
    ("yolact", 101, 1, 4, "resnet101")])
def test_other_depths_and_widths(arch: str, depth: int, groups: int, width: int, backbone: str) -> None:
    state = meta_state(mmdet_shapes(arch, 4, depth, groups, width))
    layout = detect_mmdet_layout(state)
    assert (layout.arch, layout.backbone, layout.num_classes) == (arch, backbone, 4)
    config = mmdet_config(layout, "pytorch")
    assert config.model.backbone.name == backbone
    ours = convert_mmdet_state_dict(state, layout)
    assert {k: tuple(v.shape) for k, v in ours.items()} == model_shapes(config)


def test_resnext_widths_instaseg_lacks_are_named() -> None:
    state = meta_state(mmdet_shapes("mask_rcnn", 80, 50, 32, 8))
    with pytest.raises(CheckpointError, match=r"ResNeXt-50 32x8d: not an instaseg backbone \(instaseg has resnext1"):
        detect_mmdet_layout(state)


@pytest.mark.parametrize("fixture, version", [("mask_rcnn", 2), ("ms_rcnn", 2), ("yolact", 2), ("yolact", 3)])
def test_round_trip_is_exact(fixture: str, version: int, request) -> None:
    state = request.getfixturevalue(fixture)
    if version == 3:
        state = {k.replace("segm_head.", "mask_head.segm_branch."): v for k, v in state.items()}
    layout = detect_mmdet_layout(state)
    assert layout.segm_prefix == ("mask_head.segm_branch.segm_conv." if version == 3 else
                                  "segm_head.segm_conv." if fixture == "yolact" else "")
    back = to_mmdet_state_dict(convert_mmdet_state_dict(state, layout), layout)
    expected = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert set(back) == set(expected) and all(torch.equal(back[k], expected[k]) for k in expected)


def test_config_carries_mmdetections_rcnn_conventions(ms_rcnn) -> None:
    config = convert_mmdet_checkpoint({"state_dict": ms_rcnn, "meta": pytorch_meta()}).config
    model, inputs = config.model, config.input
    assert not model.backbone.stride_in_1x1 and model.maskiou is not None
    assert (model.rpn.anchor_convention, model.rpn.anchor_strides) == ("detectron2", "fixed")
    assert model.rpn.anchor_sizes == ((32,), (64,), (128,), (256,), (512,))  # scales [8] x strides 4..64
    assert model.box_head.aligned and model.box_head.sampling_ratio == 0
    assert model.box_head.box_weights == (10.0, 10.0, 5.0, 5.0)  # target_stds [0.1, 0.1, 0.2, 0.2]
    assert model.mask_head.paste == "centres" and model.inference.mask_threshold == 0.5
    assert (model.rpn.pre_nms_topk_test, model.rpn.post_nms_topk_test, model.rpn.nms_thresh) == (1000, 1000, 0.7)
    assert (model.inference.score_thresh, model.inference.nms_thresh, model.inference.detections_per_image) == (
        0.05, 0.5, 100)
    assert (inputs.channel_order, inputs.pixel_mean, inputs.pixel_std) == (
        "RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    assert (inputs.min_size_test, inputs.max_size_test, inputs.size_divisibility) == (800, 1333, 32)
    assert (inputs.resize_rounding, inputs.resize_filter) == ("mmcv", "bilinear")
    caffe = convert_mmdet_checkpoint({"state_dict": ms_rcnn, "meta": {"config": CAFFE_TEXT}}).config
    assert caffe.name == "ms_rcnn_r50_caffe_fpn_mmdet" and caffe.model.backbone.stride_in_1x1
    assert (caffe.input.channel_order, caffe.input.pixel_mean, caffe.input.pixel_std) == (
        "BGR", (103.53, 116.28, 123.675), (1.0, 1.0, 1.0))
    model = build_from_config(caffe)
    assert model.backbone.layer2[0].conv1.stride == (2, 2) and model.backbone.layer2[0].conv2.stride == (1, 1)


def test_config_carries_mmdetections_yolact_conventions(yolact) -> None:
    v3 = {k.replace("segm_head.", "mask_head.segm_branch."): v for k, v in yolact.items()}
    meta = {"cfg": V3_YOLACT_TEXT, "dataset_meta": {"classes": ("a", "b", "c"), "palette": [(1, 2, 3)] * 3},
            "mmengine_version": "0.7.0"}
    result = convert_mmdet_checkpoint({"state_dict": v3, "meta": meta})
    config = result.config
    assert config.name == "yolact_r50_550_mmdet" and result.classes == ("a", "b", "c")
    head, fpn = config.model.head, config.model.fpn
    assert (fpn.extra_from, fpn.relu_outputs) == ("input", False)
    assert head.aspect_ratios == (2.0, 1.0, 0.5) and not head.square_anchors  # w/h; MMDetection's h/w 0.5, 1, 2
    assert head.anchor_scales == ((24.0,), (48.0,), (96.0,), (192.0,), (384.0,))  # 3 x base sizes 8..128
    assert (config.input.channel_order, config.input.pixel_mean, config.input.pixel_std, config.input.square) == (
        "RGB", (123.68, 116.78, 103.94), (58.4, 57.12, 57.38), 550)
    inf = config.model.inference
    assert (inf.nms, inf.score_thresh, inf.nms_thresh, inf.detections_per_image, config.model.nms_top_k) == (
        "fast_nms", 0.05, 0.5, 100, 200)
    conventions = config.model.conventions  # clipped before Fast NMS, no fill, crop by pixel index
    assert (conventions.box_clip, conventions.fast_nms_fill, conventions.crop) == ("before_nms", "none", "pixel_index")
    assert any("MMEngine 0.7.0" in n for n in result.notes) and any("nms_pre" in n for n in result.notes)


def _mmdet_grid_anchors(base_size: float, scales: list[float], ratios: list[float], stride: tuple[float, float],
                        feature: tuple[int, int], center: tuple[float, float] | None = None) -> torch.Tensor:
    """mmdet/core/anchor/anchor_generator.py ``gen_single_level_base_anchors`` + ``single_level_grid_
    anchors``: h_ratios = sqrt(ratios), ws = (w * w_ratios[:, None] * scales[None, :]).view(-1)
    (ratio-major), centred at ``center`` (default 0, the grid point), shifted by arange(W) * stride."""
    ratios_t, scales_t = torch.tensor(ratios), torch.tensor(scales)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    ws = (base_size * w_ratios[:, None] * scales_t[None, :]).view(-1)
    hs = (base_size * h_ratios[:, None] * scales_t[None, :]).view(-1)
    cx, cy = center or (0.0, 0.0)
    base = torch.stack([cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs], dim=-1)
    shift_x = torch.arange(0, feature[1]) * stride[0]
    shift_y = torch.arange(0, feature[0]) * stride[1]
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], dim=-1)
    return (base[None, :, :] + shifts[:, None, :]).view(-1, 4)


def test_anchors_are_mmdetections(mask_rcnn, yolact) -> None:
    """The channel a of rpn_cls / conv_cls scores MMDetection's anchor a: same boxes, same order."""
    config = convert_mmdet_checkpoint({"state_dict": mask_rcnn, "meta": pytorch_meta()}).config
    generator = build_from_config(config).anchor_generator
    features = [(25, 34), (13, 17), (7, 9), (4, 5), (2, 3)]
    ours = generator(features, image_size=(800, 1088))
    for level, (stride, size) in enumerate(zip((4, 8, 16, 32, 64), features)):
        theirs = _mmdet_grid_anchors(stride, [8.0], [0.5, 1.0, 2.0], (stride, stride), size)
        torch.testing.assert_close(ours[level].float(), theirs, rtol=0, atol=1e-4)
    config = convert_mmdet_checkpoint({"state_dict": yolact, "meta": pytorch_meta()}).config
    model = build_from_config(config)
    sizes = [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]
    ours = model._anchors([torch.empty(1, 1, *s) for s in sizes], 550)
    theirs = torch.cat([
        _mmdet_grid_anchors(base, [3.0], [0.5, 1.0, 2.0], (550.0 / s, 550.0 / s), (s, s), (550 * 0.5 / s,) * 2)
        for base, (s, _) in zip((8, 16, 32, 64, 128), sizes)])
    torch.testing.assert_close(ours.float(), theirs, rtol=0, atol=1e-3)


def test_maskiou_head_sees_mmdetections_input(ms_rcnn) -> None:
    """mask_heads/maskiou_head.py: cat(mask_feat, MaxPool2d(2, 2)(mask_pred.sigmoid()[:, None])),
    4 convs + ReLU, 2 fcs + ReLU, fc_mask_iou; given the detected class's mask logits."""
    small = {k: (v - v.mean()) * 0.01 for k, v in ms_rcnn.items() if k.startswith("roi_head.mask_iou_head.")}
    state = {**ms_rcnn, **small}
    ours = convert_mmdet_checkpoint({"state_dict": state, "meta": pytorch_meta()}).state
    head = MaskIoUHead(256, num_classes=2)  # as the builder makes it for ms_rcnn_r50_fpn_mmdet
    head.load_state_dict({k[len("maskiou_head."):]: v for k, v in ours.items() if k.startswith("maskiou_head.")})
    features, logits = torch.randn(5, 256, 14, 14), torch.randn(5, 28, 28)
    p = "roi_head.mask_iou_head."
    x = torch.cat([features, F.max_pool2d(logits.sigmoid()[:, None], 2, 2)], dim=1)
    for i in range(4):
        x = F.relu(F.conv2d(x, state[f"{p}convs.{i}.weight"], state[f"{p}convs.{i}.bias"], stride=2 if i == 3 else 1,
                            padding=1))
    x = F.relu(F.linear(x.flatten(1), state[f"{p}fcs.0.weight"], state[f"{p}fcs.0.bias"]))
    x = F.relu(F.linear(x, state[f"{p}fcs.1.weight"], state[f"{p}fcs.1.bias"]))
    expected = F.linear(x, state[f"{p}fc_mask_iou.weight"], state[f"{p}fc_mask_iou.bias"])
    torch.testing.assert_close(head(features, logits.sigmoid()), expected)


def test_meta_config_text() -> None:
    meta = read_mmdet_meta(pytorch_meta())
    assert (meta.style, meta.classes, meta.version) == ("pytorch", ("cat", "dog", "bird"), "MMDetection 2.25.0")
    assert meta.normalization.channel_order == "RGB"
    caffe = read_mmdet_meta({"config": CAFFE_TEXT})
    assert caffe.style == "caffe" and caffe.normalization.pixel_mean == (103.53, 116.28, 123.675)
    assert caffe.normalization.channel_order == "BGR" and caffe.classes is None
    v3 = read_mmdet_meta({"cfg": V3_YOLACT_TEXT})  # Expand(mean=...) has no std: not a normalization
    assert v3.normalization.pixel_std == (58.4, 57.12, 57.38) and v3.normalization.channel_order == "RGB"
    dump = read_mmdet_meta({"cfg": V3_SORTED_TEXT})
    assert dump.style == "caffe" and dump.normalization == Normalization("BGR", (103.53, 116.28, 123.675),
                                                                          (1.0, 1.0, 1.0))
    unflagged = read_mmdet_meta({"cfg": V3_SORTED_TEXT.replace("bgr_to_rgb=False,", "")})
    assert unflagged.normalization.channel_order == "BGR"  # DetDataPreprocessor's default
    normalize = read_mmdet_meta({"config": "p = [dict(type='Normalize', mean=[1, 2, 3], std=[4, 5, 6])]"})
    assert normalize.normalization == Normalization("RGB", (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))  # to_rgb=True
    # MMDetection's X-101-32x8d configs: pytorch style, BGR input, std in BGR order
    x101 = read_mmdet_meta({"config": "backbone=dict(type='ResNeXt', groups=32, base_width=8, style='pytorch')\n"
                                      "preprocess_cfg = dict(mean=[103.53, 116.28, 123.675], "
                                      "std=[57.375, 57.12, 58.395], to_rgb=False, pad_size_divisor=32)"})
    assert (x101.style, x101.normalization.channel_order) == ("pytorch", "BGR")
    assert read_mmdet_meta(None).style is None and read_mmdet_meta({"config": 3}).config_text == ""
    with pytest.raises(CheckpointError, match="2 different image normalizations"):
        _ = read_mmdet_meta(pytorch_meta("n = dict(mean=[1.0, 2.0, 3.0], std=[1.0, 1.0, 1.0], to_rgb=False)")
                            ).normalization
    with pytest.raises(CheckpointError, match="backbone style"):
        _ = read_mmdet_meta({"config": "style='pytorch'\nstyle='caffe'"}).style


def test_category_ids() -> None:
    ids, names = coco_categories("coco80")  # MMDetection's CocoDataset.CLASSES are these names
    assert category_ids_for(tuple(names)) == ids and ids[11] == 13 and ids[-1] == 90
    assert category_ids_for(("a", "b")) == [1, 2]


def test_style_without_config_text(mask_rcnn) -> None:
    bare = {"state_dict": mask_rcnn, "meta": {"CLASSES": ("a", "b", "c")}}
    with pytest.raises(CheckpointError, match="cannot tell a caffe-style backbone.*--style"):
        convert_mmdet_checkpoint(bare, file_name="/tmp/model.pth")
    caffe = convert_mmdet_checkpoint(bare, file_name="mask_rcnn_r50_caffe_fpn_1x_coco_bbox_mAP-0.38.pth")
    assert caffe.config.model.backbone.stride_in_1x1 and caffe.config.input.channel_order == "BGR"
    assert any("file name" in n for n in caffe.notes) and any("for this backbone and style" in n for n in caffe.notes)
    given = convert_mmdet_checkpoint(bare, style="pytorch", file_name="model.pth").config
    assert not given.model.backbone.stride_in_1x1 and given.input.pixel_std == (58.395, 57.12, 57.375)
    with pytest.raises(CheckpointError, match="config says style='pytorch'"):
        convert_mmdet_checkpoint({"state_dict": mask_rcnn, "meta": pytorch_meta()}, style="caffe")
    x101 = detect_mmdet_layout(meta_state(mmdet_shapes("mask_rcnn", 3, 101, 32, 8)))
    assert mmdet_config(x101, "pytorch").input.pixel_std == (57.375, 57.12, 58.395)  # its configs' BGR std


def test_unknown_layouts_are_clear_errors(mask_rcnn, yolact) -> None:
    def fails(state: dict, match: str) -> None:
        with pytest.raises(CheckpointError, match=match):
            convert_mmdet_checkpoint({"state_dict": state}, style="pytorch")

    fails({k: v for k, v in mask_rcnn.items() if ".mask_head." not in k}, "without masks")
    fails({k.replace("roi_head.bbox_head.", "roi_head.bbox_head.0."): v for k, v in mask_rcnn.items()}, "Cascade")
    fails({k.replace("roi_head.", ""): v for k, v in mask_rcnn.items()}, "1.x checkpoint")
    fails({**mask_rcnn, "backbone.layer2.0.conv2.conv_offset.weight": torch.zeros(18, 128, 3, 3)}, "DCN")
    fails({**mask_rcnn, "roi_head.mask_head.convs.4.conv.weight": torch.zeros(1)}, "no counterpart")
    fails({**mask_rcnn, "roi_head.bbox_head.fc_reg.weight": torch.zeros(4, 1024)}, "class-specific box regression")
    fails({k: v for k, v in mask_rcnn.items() if not k.startswith("backbone.layer3.5.")}, "blocks per stage")
    fails({**yolact, "bbox_head.conv_cls.weight": torch.zeros(9, 256, 3, 3)}, "only softmax class logits")
    fails({"model.weight": torch.zeros(1)}, "not an MMDetection Mask R-CNN")
    with pytest.raises(CheckpointError, match="expected tensors"):
        convert_mmdet_checkpoint({"state_dict": {"a": 1}})


def test_pth_with_meta_through_the_cli(tmp_path: Path, ms_rcnn, capsys) -> None:
    src, dst = tmp_path / "ms_rcnn_r50_caffe_fpn_1x_coco_20200702-0b4de1d9.pth", tmp_path / "ms.pt"
    meta = {"mmdet_version": "2.1.0", "config": CAFFE_TEXT, "CLASSES": ("cat", "dog"), "epoch": 12,
            "hook_msgs": {"last_ckpt": "work_dirs/epoch_12.pth"}}
    torch.save({"state_dict": ms_rcnn, "meta": meta}, src)
    assert cli_main(["convert", "--from", "mmdet", str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "MS R-CNN R-50-FPN (MMDetection)" in printed and "num_classes: 2" in printed
    assert f"converted:   {sum(not k.endswith('num_batches_tracked') for k in ms_rcnn)} tensors" in printed
    assert "style from the checkpoint's config" in printed and "not represented: mask scores" in printed
    payload = load_checkpoint(dst)  # the converter loaded the tensors strictly into the built model
    assert payload["config"]["name"] == "ms_rcnn_r50_caffe_fpn_mmdet"
    assert payload["config"]["input"]["channel_order"] == "BGR"
    assert checkpoint_categories(payload, 2) == ([1, 2], ["cat", "dog"])
    loaded = payload["model"]
    for name in ("backbone.layer3.5.bn2.running_var", "neck.fpn_convs.2.conv.weight", "rpn_head.rpn_cls.bias",
                 "roi_head.mask_iou_head.fcs.1.weight", "roi_head.bbox_head.fc_cls.bias"):
        assert torch.equal(loaded[expected_our_name(name)], ms_rcnn[name]), name
    # --style reaches the converter (here contradicting the config text), and only for mmdet
    assert cli_main(["convert", "--from", "mmdet", "--style", "pytorch", str(src), str(tmp_path / "p.pt")]) == 2
    assert "config says style='caffe'" in capsys.readouterr().err
    assert cli_main(["convert", "--from", "yolact", "--style", "caffe", str(src), str(tmp_path / "p.pt")]) == 2
    assert "--style applies to --from mmdet only" in capsys.readouterr().err
    # without a config text nor a published name, the style must be given
    torch.save({"state_dict": ms_rcnn, "meta": {"CLASSES": ("cat", "dog")}}, tmp_path / "model.pth")
    assert cli_main(["convert", "--from", "mmdet", str(tmp_path / "model.pth"), str(tmp_path / "p.pt")]) == 2
    assert "--style pytorch|caffe" in capsys.readouterr().err
    assert not (tmp_path / "p.pt").exists()


# ------------------------------------------- YOLACT detections against MMDetection's inference path
def _sensible_state(shapes: dict[str, tuple[int, ...]], background_bias: float) -> dict[str, torch.Tensor]:
    """Weights that keep activations in range (fan-in scaled convs, near-identity BatchNorms)."""
    state = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(0)
        elif name.endswith("running_var"):
            state[name] = 1 + 0.1 * torch.rand(shape)
        elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
            state[name] = 1 + 0.1 * torch.randn(shape)
        elif len(shape) > 1:
            state[name] = torch.randn(shape) / math.sqrt(math.prod(shape[1:]))
        else:
            state[name] = 0.1 * torch.randn(shape)
    classes = state["bbox_head.conv_cls.bias"].view(3, -1)
    classes[:, -1] += background_bias  # few confident anchors, as a trained model has
    return state


def _mmdet_yolact_detections(w: dict[str, torch.Tensor], c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor,
                             size: int = 550, nms_pre: int = 1000) -> dict[str, torch.Tensor]:
    """MMDetection 2.x YOLACT.simple_test on backbone features, one image, no rescaling, written from
    necks/fpn.py, dense_heads/yolact_head.py (YOLACTHead._get_bboxes_single, YOLACTProtonet.forward,
    crop, get_seg_masks), core/post_processing/bbox_nms.py fast_nms, DeltaXYWHBBoxCoder.decode."""
    def conv(x, name, stride=1):
        weight = w[f"{name}.weight"]
        return F.conv2d(x, weight, w[f"{name}.bias"], stride=stride, padding=weight.shape[-1] // 2)

    laterals = [conv(c, f"neck.lateral_convs.{i}.conv") for i, c in enumerate((c3, c4, c5))]
    for i in (2, 1):  # upsample_cfg=dict(mode='bilinear'): align_corners defaults to False
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="bilinear")
    outs = [conv(lat, f"neck.fpn_convs.{i}.conv") for i, lat in enumerate(laterals)]
    outs.append(conv(c5, "neck.fpn_convs.3.conv", stride=2))  # add_extra_convs='on_input'
    outs.append(conv(outs[-1], "neck.fpn_convs.4.conv", stride=2))  # relu_before_extra_convs=False
    boxes, scores, coeffs = [], [], []
    for level, (p, base) in enumerate(zip(outs, (8, 16, 32, 64, 128))):
        x = F.relu(conv(p, "bbox_head.head_convs.0.conv"))
        cls = conv(x, "bbox_head.conv_cls")[0].permute(1, 2, 0).reshape(-1, w["bbox_head.conv_cls.bias"].numel() // 3)
        reg = conv(x, "bbox_head.conv_reg")[0].permute(1, 2, 0).reshape(-1, 4)
        coeff = conv(x, "bbox_head.conv_coeff")[0].tanh().permute(1, 2, 0).reshape(-1, 32)
        s = p.shape[-1]
        anchors = _mmdet_grid_anchors(base, [3.0], [0.5, 1.0, 2.0], (size / s, size / s), (s, s), (size * 0.5 / s,) * 2)
        prob = cls.softmax(-1)
        if 0 < nms_pre < prob.shape[0]:
            top = prob[:, :-1].max(dim=1).values.topk(nms_pre).indices
            anchors, reg, prob, coeff = anchors[top], reg[top], prob[top], coeff[top]
        deltas = reg * torch.tensor([0.1, 0.1, 0.2, 0.2])  # target_stds
        centre = (anchors[:, :2] + anchors[:, 2:]) * 0.5
        extent = anchors[:, 2:] - anchors[:, :2]
        xy = centre + extent * deltas[:, :2]
        wh = extent * deltas[:, 2:].clamp(min=-abs(math.log(16 / 1000)), max=abs(math.log(16 / 1000))).exp()
        boxes.append(torch.cat([xy - wh * 0.5, xy + wh * 0.5], dim=1).clamp(min=0, max=size))
        scores.append(prob)
        coeffs.append(coeff)
    boxes, scores, coeffs = torch.cat(boxes), torch.cat(scores), torch.cat(coeffs)
    # fast_nms(score_thr=0.05, iou_thr=0.5, top_k=200, max_num=100)
    class_scores, index = scores[:, :-1].t().sort(1, descending=True)
    class_scores, index = class_scores[:, :200], index[:, :200]
    iou = torch.stack([box_iou(boxes[i], boxes[i]) for i in index]).triu(diagonal=1)
    keep = (iou.max(dim=1).values <= 0.5) & (class_scores > 0.05)
    labels = torch.arange(scores.shape[1] - 1)[:, None].expand_as(keep)[keep]
    kept_scores, order = class_scores[keep].sort(0, descending=True)
    picked = index[keep][order[:100]]
    result = {"boxes": boxes[picked], "scores": kept_scores[:100], "labels": labels[order[:100]]}
    # YOLACTProtonet: protonet on P3, sigmoid(prototypes @ coeffs), crop(padding=1), upsample, > 0.5
    x = outs[0]
    for index_ in (0, 2, 4):
        x = F.relu(conv(x, f"mask_head.protonet.{index_}"))
    x = F.relu(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
    x = F.relu(conv(F.relu(conv(x, "mask_head.protonet.8")), "mask_head.protonet.10"))
    prototypes = x[0].permute(1, 2, 0)
    masks = torch.sigmoid(prototypes @ coeffs[picked].t())  # (h, w, n)
    h, w_ = masks.shape[:2]
    rel = result["boxes"] / size
    x1, x2 = (rel[:, 0] * w_ - 1).clamp(min=0), (rel[:, 2] * w_ + 1).clamp(max=w_)  # sanitize_coordinates
    y1, y2 = (rel[:, 1] * h - 1).clamp(min=0), (rel[:, 3] * h + 1).clamp(max=h)
    cols, rows = torch.arange(w_, dtype=x1.dtype)[None, :, None], torch.arange(h, dtype=x1.dtype)[:, None, None]
    crop = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
    masks = (masks * crop).permute(2, 0, 1)
    result["masks"] = F.interpolate(masks[None], (size, size), mode="bilinear", align_corners=False)[0] > 0.5
    return result


def test_yolact_detections_are_mmdetections() -> None:
    """An image through the converted model and through MMDetection's YOLACT inference, re-written
    here on the same backbone features: the same boxes, scores, labels and masks.

    At 128 px to keep the test fast: MMDetection's config spells its anchors for 550 (strides 550 /
    [69, 35, 18, 9, 5], centres half a stride in), the same rule as 128 / [16, 8, 4, 2, 1] here;
    ``test_anchors_are_mmdetections`` checks them at 550. Its nms_pre=1000 per level (not
    represented in instaseg) has nothing to cut at this size: P3 holds 768 anchors.
    """
    torch.manual_seed(5)
    state = _sensible_state(mmdet_shapes("yolact", 3), background_bias=3.0)
    result = convert_mmdet_checkpoint({"state_dict": state, "meta": {"config": V3_YOLACT_TEXT}})
    size = 128
    config = replace(result.config, input=replace(result.config.input, square=size, min_size_test=size,
                                                  max_size_test=size))
    model = build_from_config(config).eval()
    model.load_state_dict(result.state)
    image = torch.rand(3, size, size) * 255
    features = {}
    model.backbone.register_forward_hook(lambda module, args, output: features.update(output))
    with torch.no_grad():
        ours = model.predict([image])[0]  # one forward: the backbone's features are shared with the re-write
        theirs = _mmdet_yolact_detections(state, features["res3"], features["res4"], features["res5"], size)
    assert 20 <= len(ours) <= 100 and len(set(ours.labels.tolist())) > 1, ours.labels
    torch.testing.assert_close(ours.boxes, theirs["boxes"], rtol=0, atol=1e-3)
    torch.testing.assert_close(ours.scores, theirs["scores"], rtol=0, atol=1e-5)
    assert torch.equal(ours.labels, theirs["labels"])
    assert torch.equal(ours.masks, theirs["masks"])
