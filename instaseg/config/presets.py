"""Named presets: plain functions returning a :class:`Config`; variants replace one level deep."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from instaseg.config.schema import (
    BackboneConfig,
    BoxHeadConfig,
    Config,
    FPNConfig,
    InferenceConfig,
    InputConfig,
    MaskHeadConfig,
    MaskIoUConfig,
    MaskRCNNConfig,
    RPNConfig,
    TrainConfig,
)
from instaseg.errors import ConfigError

__all__ = ["PRESETS", "get_preset", "list_presets"]


# --- Mask R-CNN (He et al. 2017), Detectron2's "1x" schedule: 90k iterations at 16 images ----------


def mask_rcnn_r50_fpn() -> Config:
    return Config(name="mask_rcnn_r50_fpn")


def mask_rcnn_r101_fpn() -> Config:
    base = mask_rcnn_r50_fpn()
    model = replace(base.model, backbone=replace(base.model.backbone, name="resnet101"))
    return replace(base, name="mask_rcnn_r101_fpn", model=model)


def mask_rcnn_x101_32x8d_fpn() -> Config:
    base = mask_rcnn_r50_fpn()
    model = replace(base.model, backbone=replace(base.model.backbone, name="resnext101_32x8d"))
    return replace(base, name="mask_rcnn_x101_32x8d_fpn", model=model)


def mask_rcnn_r50_c4() -> Config:
    """The C4 model: RPN and RoI pooling on res4 (stride 16), res5 as the shared RoI head."""
    model = MaskRCNNConfig(
        backbone=BackboneConfig(name="resnet50", out_features=("res4",)),
        fpn=None,
        rpn=RPNConfig(
            anchor_sizes=((32, 64, 128, 256, 512),),
            pre_nms_topk_train=12000,
            pre_nms_topk_test=6000,
            post_nms_topk_train=2000,
            post_nms_topk_test=1000,
        ),
        box_head=BoxHeadConfig(head="res5", pooler_resolution=14),
        mask_head=MaskHeadConfig(pooler_resolution=14, num_convs=0),
    )
    return Config(name="mask_rcnn_r50_c4", model=model)


def mask_rcnn_r101_c4() -> Config:
    base = mask_rcnn_r50_c4()
    model = replace(base.model, backbone=replace(base.model.backbone, name="resnet101"))
    return replace(base, name="mask_rcnn_r101_c4", model=model)


def mask_rcnn_r50_fpn_torchvision() -> Config:
    """torchvision's ``maskrcnn_resnet50_fpn`` (v1) inference conventions, for imported weights.

    Legacy RoIAlign (aligned=False, sampling ratio 2), rounded ratio-major anchors, smooth-L1
    beta 1/9 in the RPN, 2000/2000 train proposals, minimum box sizes 1e-3 / 1e-2, and its
    legacy mask paste (one-pixel padded mask, integer box, bilinear resize).
    """
    base = mask_rcnn_r50_fpn()
    model = replace(
        base.model,
        rpn=replace(
            base.model.rpn,
            anchor_convention="torchvision",
            post_nms_topk_train=2000,
            min_box_size=1e-3,
            smooth_l1_beta=1.0 / 9,
        ),
        box_head=replace(base.model.box_head, sampling_ratio=2, aligned=False, smooth_l1_beta=1.0 / 9),
        mask_head=replace(base.model.mask_head, paste="torchvision"),
        inference=replace(base.model.inference, min_box_size=1e-2),
    )
    return replace(base, name="mask_rcnn_r50_fpn_torchvision", model=model)


# --- small presets that train in minutes on a CPU (demo, tests, benchmarks) -------------------------


def mask_rcnn_r18_fpn_tiny() -> Config:
    """A narrow ResNet-18 FPN Mask R-CNN for 128 px images, trained from scratch.

    Sizing from measurements on a 2-core CPU: FPN 64, box head 256, mask head 4 x 64 at 14x14,
    128 RoIs per image and fewer proposals train at about 12 images/s; trainable BN because there
    are no pretrained statistics to freeze.
    """
    model = MaskRCNNConfig(
        num_classes=5,
        backbone=BackboneConfig(name="resnet18", norm="BN", freeze_at=0),
        fpn=FPNConfig(out_channels=64),
        rpn=RPNConfig(
            anchor_sizes=((16,), (32,), (64,), (128,), (256,)),
            pre_nms_topk_train=600,
            pre_nms_topk_test=300,
            post_nms_topk_train=300,
            post_nms_topk_test=150,
            batch_size_per_image=128,
        ),
        box_head=BoxHeadConfig(fc_dim=256, batch_size_per_image=128),
        mask_head=MaskHeadConfig(conv_dim=64, pooler_resolution=14),
        inference=InferenceConfig(detections_per_image=50),
    )
    inputs = InputConfig(min_size_train=(112, 128, 144), max_size_train=192, min_size_test=128, max_size_test=192)
    train = TrainConfig(
        lr=0.04,
        schedule="cosine",
        max_iter=3000,
        steps=(),
        warmup_iters=200,
        ims_per_batch=8,
        checkpoint_period=500,
        num_workers=1,
    )
    return Config(name="mask_rcnn_r18_fpn_tiny", model=model, input=inputs, train=train)


# --- Mask Scoring R-CNN (Huang et al. 2019): Mask R-CNN with a MaskIoU head ------------------------


def _with_maskiou(base: Config, name: str) -> Config:
    return replace(base, name=name, model=replace(base.model, maskiou=MaskIoUConfig()))


def ms_rcnn_r50_fpn() -> Config:
    return _with_maskiou(mask_rcnn_r50_fpn(), "ms_rcnn_r50_fpn")


def ms_rcnn_r101_fpn() -> Config:
    return _with_maskiou(mask_rcnn_r101_fpn(), "ms_rcnn_r101_fpn")


def ms_rcnn_x101_32x8d_fpn() -> Config:
    return _with_maskiou(mask_rcnn_x101_32x8d_fpn(), "ms_rcnn_x101_32x8d_fpn")


def ms_rcnn_r50_fpn_ablation() -> Config:
    """The paper's ablation setting: 600 px shortest side (max 1000), 18 epochs, LR / 10 at 14 and 17."""
    base = ms_rcnn_r50_fpn()
    inputs = replace(base.input, min_size_train=(600,), max_size_train=1000, min_size_test=600, max_size_test=1000)
    train = replace(base.train, max_epochs=18, step_epochs=(14, 17), gamma=0.1, momentum=0.9, optimizer="sgd")
    return replace(base, name="ms_rcnn_r50_fpn_ablation", input=inputs, train=train)


def ms_rcnn_r18_fpn_tiny() -> Config:
    base = mask_rcnn_r18_fpn_tiny()
    small_iou = MaskIoUConfig(conv_dim=64, fc_dim=256)
    return replace(base, name="ms_rcnn_r18_fpn_tiny", model=replace(base.model, maskiou=small_iou))


PRESETS: dict[str, Callable[[], Config]] = {
    "mask_rcnn_r50_fpn": mask_rcnn_r50_fpn,
    "mask_rcnn_r101_fpn": mask_rcnn_r101_fpn,
    "mask_rcnn_x101_32x8d_fpn": mask_rcnn_x101_32x8d_fpn,
    "mask_rcnn_r50_c4": mask_rcnn_r50_c4,
    "mask_rcnn_r101_c4": mask_rcnn_r101_c4,
    "mask_rcnn_r50_fpn_torchvision": mask_rcnn_r50_fpn_torchvision,
    "mask_rcnn_r18_fpn_tiny": mask_rcnn_r18_fpn_tiny,
    "ms_rcnn_r50_fpn": ms_rcnn_r50_fpn,
    "ms_rcnn_r101_fpn": ms_rcnn_r101_fpn,
    "ms_rcnn_x101_32x8d_fpn": ms_rcnn_x101_32x8d_fpn,
    "ms_rcnn_r50_fpn_ablation": ms_rcnn_r50_fpn_ablation,
    "ms_rcnn_r18_fpn_tiny": ms_rcnn_r18_fpn_tiny,
}


def list_presets() -> list[str]:
    """Names of every preset, sorted."""
    return sorted(PRESETS)


def get_preset(name: str) -> Config:
    """The :class:`Config` of preset ``name`` (a clear error lists the known names)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(list_presets())}") from None
