"""Config -> model. The only place where configuration meets components.

Modules are assembled and freshly initialised; nothing is read from disk. The ImageNet weights a
config names (``model.backbone.weights``), whole checkpoints and published weights are applied by the
top floor, ``instaseg.hub`` (``build_model``, ``model_from_config``, ``load_model``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from instaseg.backbones.resnet import ResNet, build_resnet
from instaseg.config.io import apply_overrides
from instaseg.config.presets import get_preset
from instaseg.config.schema import Config, MaskRCNNConfig, YolactConfig
from instaseg.detectors.mask_rcnn import MaskRCNN
from instaseg.detectors.yolact import Yolact
from instaseg.heads.box_head import BoxPredictor, FCBoxHead, Res5Head
from instaseg.heads.keypoint_head import KeypointHead
from instaseg.heads.mask_head import MaskFCNHead, MaskMLPHead
from instaseg.heads.maskiou_head import MaskIoUHead
from instaseg.heads.rpn import RPNHead
from instaseg.heads.mask_rescoring import MaskRescoringHead
from instaseg.heads.yolact_head import ProtoNet, SemanticSegHead, YolactPredictionHead
from instaseg.necks.fpn import rcnn_fpn, yolact_fpn
from instaseg.targets.anchors import AnchorGenerator

__all__ = ["build_from_config", "resolve_config"]


def _backbone(model: MaskRCNNConfig | YolactConfig, out_features: tuple[str, ...]) -> ResNet:
    return _resnet(model, out_features)


def _c4_res5(model: MaskRCNNConfig) -> nn.Sequential:
    """The res5 stage used as the C4 RoI head (ImageNet's ``layer4`` when ``instaseg.hub`` loads weights)."""
    return _resnet(replace(model, backbone=replace(model.backbone, freeze_at=0)), ("res5",)).layer4


def _resnet(model: MaskRCNNConfig | YolactConfig, out_features: tuple[str, ...]) -> ResNet:
    cfg = model.backbone
    return build_resnet(
        cfg.name,
        norm=cfg.norm,
        freeze_at=cfg.freeze_at,
        stride_in_1x1=cfg.stride_in_1x1,
        out_features=out_features,
        deform_stages=cfg.deform_stages,
        deform_interval=cfg.deform_interval,
    )


def _mask_outputs(model: MaskRCNNConfig) -> int:
    if model.mask_head.class_agnostic:
        return 1
    return model.num_classes + 1 if model.mask_head.loss == "softmax" else model.num_classes


def _mask_rcnn(config: Config) -> MaskRCNN:
    model = config.model
    if model.fpn is None:  # C4: RPN and RoI pooling on res4, res5 as the RoI head
        backbone = _backbone(model, ("res4",))
        neck = None
        shapes = backbone.output_shape()
        res5 = _c4_res5(model)
        res5_channels = backbone.output_shape()["res4"].channels * 2
        box_head: nn.Module = Res5Head(res5, res5_channels)
        box_features, mask_in = res5_channels, res5_channels
    else:
        backbone = _backbone(model, model.backbone.out_features)
        in_shapes = backbone.output_shape()
        neck = rcnn_fpn(
            [s.channels for s in in_shapes.values()],
            model.fpn.out_channels,
            in_strides=[s.stride for s in in_shapes.values()],
            extra=model.fpn.extra,
            num_extra=model.fpn.num_extra,
            extra_from=model.fpn.extra_from,
            relu_outputs=bool(model.fpn.relu_outputs),  # None: no ReLU, R-CNN's FPN
        )
        shapes = neck.output_shape()
        res = model.box_head.pooler_resolution
        box_head = FCBoxHead(model.fpn.out_channels, res, model.box_head.fc_dim, model.box_head.num_fc)
        box_features, mask_in = box_head.out_features, model.fpn.out_channels
    rpn = model.rpn
    levels = len(shapes)
    sizes = rpn.anchor_sizes if len(rpn.anchor_sizes) == levels else (rpn.anchor_sizes[0],) * levels
    anchors = AnchorGenerator(
        tuple(tuple(s) for s in sizes),
        (tuple(rpn.aspect_ratios),) * levels,
        tuple(s.stride for s in shapes.values()),
        convention=rpn.anchor_convention,
        stride_rule=rpn.anchor_strides,
    )
    num_anchors = anchors.num_anchors_per_location()
    if len(set(num_anchors)) != 1:
        raise ValueError(f"the shared RPN head needs the same number of anchors per level, got {num_anchors}")
    rpn_head = RPNHead(next(iter(shapes.values())).channels, num_anchors[0])
    mh, kh = model.mask_head, model.keypoint_head
    mask_head: nn.Module | None = None  # None: Keypoint R-CNN with boxes and keypoints only
    if mh is not None and mh.head == "mlp":  # a MaskHeadKind: "fcn" or "mlp", checked when the config was built
        mask_head = MaskMLPHead(mask_in, mh.pooler_resolution, _mask_outputs(model))
    elif mh is not None:
        mask_head = MaskFCNHead(mask_in, mh.conv_dim, mh.num_convs, _mask_outputs(model))
    maskiou_head = None  # Mask Scoring R-CNN: Mask R-CNN given one more part
    if model.maskiou is not None:
        maskiou_head = MaskIoUHead(mask_in, model.num_classes, mh.pooler_resolution, model.maskiou.conv_dim,
                                   model.maskiou.fc_dim)
    # Keypoint R-CNN: FPN only (the config refuses C4), pooling from the RoI levels as the other heads
    keypoint_head = None if kh is None else KeypointHead(mask_in, kh.num_keypoints, kh.conv_dims)
    return MaskRCNN(
        backbone=backbone,
        neck=neck,
        anchor_generator=anchors,
        rpn_head=rpn_head,
        box_head=box_head,
        box_predictor=BoxPredictor(box_features, model.num_classes),
        mask_head=mask_head,
        num_classes=model.num_classes,
        input_config=config.input,
        rpn_config=model.rpn,
        box_config=model.box_head,
        mask_config=model.mask_head,
        inference_config=model.inference,
        maskiou_head=maskiou_head,
        maskiou_loss_weight=model.maskiou.loss_weight if model.maskiou else 1.0,
        keypoint_head=keypoint_head,
        keypoint_config=kh,
    )


def _yolact(config: Config) -> Yolact:
    """YOLACT (YOLACT++ when ``model.rescoring`` is set): ResNet res3-res5, FPN P3-P7, shared head."""
    model = config.model
    backbone = _backbone(model, model.backbone.out_features)
    in_shapes = backbone.output_shape()
    # The reference FPN: bilinear upsampling, ReLU'd outputs, P6/P7 by stride-2 convs on P5/P6;
    # MMDetection's: no ReLU, P6 from C5 (fpn.relu_outputs=False, fpn.extra_from="input").
    relu_outputs = True if model.fpn.relu_outputs is None else model.fpn.relu_outputs
    neck = yolact_fpn([s.channels for s in in_shapes.values()], model.fpn.out_channels,
                      in_strides=[s.stride for s in in_shapes.values()], num_extra=model.fpn.num_extra,
                      extra_from=model.fpn.extra_from, relu_outputs=relu_outputs)
    head = model.head
    num_anchors = {len(scales) * len(head.aspect_ratios) for scales in head.anchor_scales}
    if len(num_anchors) != 1 or len(head.anchor_scales) != len(neck.output_shape()):
        raise ValueError("YOLACT needs one tuple of anchor scales per FPN level, all of the same length")
    channels = model.fpn.out_channels
    rescoring = model.rescoring
    return Yolact(
        backbone=backbone,
        neck=neck,
        protonet=ProtoNet(channels, head.proto_dim, head.num_prototypes, head.proto_upsample),
        prediction_head=YolactPredictionHead(channels, model.num_classes, num_anchors.pop(), head.num_prototypes,
                                             head.head_dim),
        num_classes=model.num_classes,
        input_config=config.input,
        head_config=head,
        loss_config=model.loss,
        inference_config=model.inference,
        semantic_head=SemanticSegHead(channels, model.num_classes) if head.semantic_seg else None,
        rescoring_head=MaskRescoringHead(model.num_classes, rescoring.channels) if rescoring else None,
        rescoring_loss_weight=rescoring.loss_weight if rescoring else 25.0,
        rescoring_min_area=rescoring.discard_mask_area if rescoring else 25.0,
        nms_top_k=model.nms_top_k,
        clip_boxes_before_nms=model.conventions.box_clip == "before_nms",
        crop_rule=model.conventions.crop,
        fill_below_threshold=model.conventions.fast_nms_fill == "top_k",
        clamp_rescoring_iou=model.conventions.rescoring_iou == "clamp",
    )


def build_from_config(config: Config) -> nn.Module:
    """The model a :class:`Config` describes, freshly initialised.

    ``model.backbone.weights`` is not read here: :func:`instaseg.hub.model_from_config` builds the
    model with this function and then loads the ImageNet weights it names.
    """
    if isinstance(config.model, MaskRCNNConfig):
        return _mask_rcnn(config)
    if isinstance(config.model, YolactConfig):
        return _yolact(config)
    raise TypeError(f"no builder for {type(config.model).__name__}")


def resolve_config(preset: str | Config, num_classes: int | None = None, overrides: list[str] | None = None,
                   **kwargs: Any) -> Config:
    """A preset (or config) with ``num_classes`` and ``--set`` style overrides applied."""
    config = get_preset(preset) if isinstance(preset, str) else preset
    if num_classes is not None:
        config = replace(config, model=replace(config.model, num_classes=num_classes))
    items = list(overrides or []) + [f"{key.replace('__', '.')}={value}" for key, value in kwargs.items()]
    return apply_overrides(config, items) if items else config
