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
    KeypointHeadConfig,
    MaskHeadConfig,
    MaskIoUConfig,
    MaskRCNNConfig,
    MaskRescoringConfig,
    RPNConfig,
    TrainConfig,
    YOLACT_MEAN_RGB,
    YOLACT_STD_RGB,
    YolactConfig,
    YolactConventions,
    YolactHeadConfig,
)
from instaseg.config.budget import with_max_detections
from instaseg.errors import ConfigError

__all__ = ["PRESETS", "get_preset", "list_presets"]


# --- Mask R-CNN (He et al. 2017), Detectron2's "1x" schedule: 90k iterations at 16 images ----------


# instaseg's own presets let this many objects per image through every cap (RPN proposals, Fast
# NMS candidates, detections; instaseg.config.budget), so that crowded data (cells, crowds, parts)
# is not clipped unless asked. Presets that carry a publisher's conventions keep its caps (100).
CROWD_DETECTIONS = 300
PUBLISHER_DETECTIONS = 100


def mask_rcnn_r50_fpn() -> Config:
    return with_max_detections(Config(name="mask_rcnn_r50_fpn"), CROWD_DETECTIONS)


def _with_backbone(base: Config, name: str, backbone: str) -> Config:
    """``base`` under another name with another backbone (the variants of one architecture)."""
    return replace(base, name=name, model=replace(base.model, backbone=replace(base.model.backbone, name=backbone)))


def mask_rcnn_r101_fpn() -> Config:
    return _with_backbone(mask_rcnn_r50_fpn(), "mask_rcnn_r101_fpn", "resnet101")


def mask_rcnn_x101_32x8d_fpn() -> Config:
    return _with_backbone(mask_rcnn_r50_fpn(), "mask_rcnn_x101_32x8d_fpn", "resnext101_32x8d")


def mask_rcnn_x101_32x4d_fpn() -> Config:
    return _with_backbone(mask_rcnn_r50_fpn(), "mask_rcnn_x101_32x4d_fpn", "resnext101_32x4d")


def mask_rcnn_x101_64x4d_fpn() -> Config:
    return _with_backbone(mask_rcnn_r50_fpn(), "mask_rcnn_x101_64x4d_fpn", "resnext101_64x4d")


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
    return with_max_detections(Config(name="mask_rcnn_r50_c4", model=model), CROWD_DETECTIONS)


def mask_rcnn_r101_c4() -> Config:
    return _with_backbone(mask_rcnn_r50_c4(), "mask_rcnn_r101_c4", "resnet101")


def mask_rcnn_r50_fpn_torchvision() -> Config:
    """torchvision's ``maskrcnn_resnet50_fpn`` (v1) inference conventions, for imported weights.

    Legacy RoIAlign (aligned=False, sampling ratio 2), rounded ratio-major anchors whose grid
    step is the padded image size // feature size (P6: 61/62 for an odd P5), smooth-L1 beta 1/9 in
    the RPN, 2000/2000 train proposals, minimum box sizes 1e-3 / 1e-2, and its legacy mask paste
    (one-pixel padded mask, integer box, bilinear resize). Its resize is instaseg's default
    (``floor(side * scale)`` of the float image, bilinear).
    """
    base = mask_rcnn_r50_fpn()
    model = replace(
        base.model,
        rpn=replace(
            base.model.rpn,
            anchor_convention="torchvision",
            anchor_strides="padded_size",
            post_nms_topk_train=2000,
            min_box_size=1e-3,
            smooth_l1_beta=1.0 / 9,
        ),
        box_head=replace(base.model.box_head, sampling_ratio=2, aligned=False, smooth_l1_beta=1.0 / 9),
        mask_head=replace(base.model.mask_head, paste="torchvision"),
        inference=replace(base.model.inference, min_box_size=1e-2, detections_per_image=PUBLISHER_DETECTIONS),
    )
    return replace(base, name="mask_rcnn_r50_fpn_torchvision", model=model)


# --- small presets that train in minutes on a CPU (demo, tests, benchmarks) -------------------------


def mask_rcnn_r18_fpn_tiny() -> Config:
    """A narrow ResNet-18 FPN Mask R-CNN for 128 px images, trained from scratch (the demo's model).

    Sizing and recipe from measurements on a 2-core CPU (``instaseg demo``, 1400-2000 iterations on
    the synthetic set): FPN 64, box head 256 with 64 RoIs per image, mask head 4 x 64 at 14x14
    trained on at most 8 positives per image (they are mostly near-duplicates of a few objects;
    -15% step time), trainable BN (no pretrained statistics to freeze). AdamW at 1e-3 learned much
    faster from scratch than SGD (segm AP 0.48 vs 0.33 after 1400 iterations; 2e-3 and weight
    decay 0.05 were no better). Testing at 144 px (the top of the training scales) gave +2 to +4.5
    segm AP over 128 px: objects are small and the mask features come from the stride-4 level.
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
        box_head=BoxHeadConfig(fc_dim=256, batch_size_per_image=64),
        mask_head=MaskHeadConfig(conv_dim=64, pooler_resolution=14, max_rois_per_image=8),
        # Masks trained this briefly are soft at their borders: binarizing at 0.4 instead of 0.5 gave
        # +1.5 segm AP on each of three checkpoints (0.3 and 0.6 were worse).
        inference=InferenceConfig(mask_threshold=0.4),
    )
    inputs = InputConfig(min_size_train=(112, 128, 144), max_size_train=216, min_size_test=144, max_size_test=216)
    train = TrainConfig(
        optimizer="adamw",
        lr=1e-3,
        schedule="cosine",
        max_iter=3000,
        steps=(),
        warmup_iters=100,
        ims_per_batch=4,
        checkpoint_period=500,
        num_workers=1,
    )
    return with_max_detections(Config(name="mask_rcnn_r18_fpn_tiny", model=model, input=inputs, train=train),
                               CROWD_DETECTIONS)


# --- Mask Scoring R-CNN (Huang et al. 2019): Mask R-CNN with a MaskIoU head ------------------------


def _with_maskiou(base: Config, name: str) -> Config:
    return replace(base, name=name, model=replace(base.model, maskiou=MaskIoUConfig()))


def ms_rcnn_r50_fpn() -> Config:
    return _with_maskiou(mask_rcnn_r50_fpn(), "ms_rcnn_r50_fpn")


def ms_rcnn_r101_fpn() -> Config:
    return _with_maskiou(mask_rcnn_r101_fpn(), "ms_rcnn_r101_fpn")


def ms_rcnn_x101_32x8d_fpn() -> Config:
    return _with_maskiou(mask_rcnn_x101_32x8d_fpn(), "ms_rcnn_x101_32x8d_fpn")


def ms_rcnn_x101_32x4d_fpn() -> Config:
    """MMDetection's published X-101-32x4d MS R-CNN (pytorch style: stride in the 3x3, RGB ImageNet statistics)."""
    return _with_maskiou(mask_rcnn_x101_32x4d_fpn(), "ms_rcnn_x101_32x4d_fpn")


def ms_rcnn_x101_64x4d_fpn() -> Config:
    """MMDetection's published X-101-64x4d MS R-CNN (pytorch style)."""
    return _with_maskiou(mask_rcnn_x101_64x4d_fpn(), "ms_rcnn_x101_64x4d_fpn")


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


# --- Keypoint R-CNN (the Mask R-CNN paper's human pose task, Sec. 5) ---------------------------------


def keypoint_rcnn_r50_fpn() -> Config:
    """Boxes and keypoints (no mask branch) of one class, COCO persons' 17 keypoints by default.

    Detectron2's ``keypoint_rcnn_R_50_FPN_1x`` (configs/COCO-Keypoints/Base-Keypoint-RCNN-FPN.yaml):
    1500 proposals per image in training (more positives for the keypoint head), training sizes
    640-800, the box head's smooth-L1 beta 0.5 ("keypoint AP degrades ... when using plain L1
    loss"), the paper's keypoint head.
    """
    base = mask_rcnn_r50_fpn()
    model = replace(base.model, num_classes=1, mask_head=None, keypoint_head=KeypointHeadConfig(),
                    rpn=replace(base.model.rpn, post_nms_topk_train=1500),
                    box_head=replace(base.model.box_head, smooth_l1_beta=0.5))
    inputs = replace(base.input, min_size_train=(640, 672, 704, 736, 768, 800))
    return replace(base, name="keypoint_rcnn_r50_fpn", model=model, input=inputs)


def keypoint_mask_rcnn_r50_fpn() -> Config:
    """:func:`keypoint_rcnn_r50_fpn` with the mask branch too: boxes, masks and keypoints."""
    base = keypoint_rcnn_r50_fpn()
    return replace(base, name="keypoint_mask_rcnn_r50_fpn", model=replace(base.model, mask_head=MaskHeadConfig()))


def keypoint_rcnn_r50_fpn_torchvision() -> Config:
    """torchvision's ``keypointrcnn_resnet50_fpn`` inference conventions, for imported weights: those
    of :func:`mask_rcnn_r50_fpn_torchvision`, no mask branch, the keypoint pooler's sampling ratio 2,
    keypoint scores as the peak logit."""
    base = mask_rcnn_r50_fpn_torchvision()
    model = replace(base.model, num_classes=1, mask_head=None,
                    keypoint_head=KeypointHeadConfig(sampling_ratio=2, score="logit"))
    inputs = replace(base.input, min_size_train=(640, 672, 704, 736, 768, 800))
    return replace(base, name="keypoint_rcnn_r50_fpn_torchvision", model=model, input=inputs)


def keypoint_rcnn_r18_fpn_tiny() -> Config:
    """The tiny Mask R-CNN's recipe with a narrow keypoint head instead of the mask head, for the
    synthetic stick figures (``instaseg data synth --keypoints``: 13 joints) on a CPU."""
    base = mask_rcnn_r18_fpn_tiny()
    head = KeypointHeadConfig(num_keypoints=13, conv_dims=(128,) * 4)
    model = replace(base.model, num_classes=1, mask_head=None, keypoint_head=head)
    return replace(base, name="keypoint_rcnn_r18_fpn_tiny", model=model)


# --- YOLACT (Bolya et al. 2019) and YOLACT++ (Bolya et al. 2020), dbolya/yolact data/config.py -----

_YOLACT_BASE_SCALES = (24.0, 48.0, 96.0, 192.0, 384.0)


def _yolact_scales(size: int, per_octave: int) -> tuple[tuple[float, ...], ...]:
    # The reference's im400/im700 configs scale the 550 px anchor sizes with the input size.
    return tuple(
        tuple(base * size / 550 * 2.0 ** (j / per_octave) for j in range(per_octave)) for base in _YOLACT_BASE_SCALES
    )


def _yolact_input(size: int) -> InputConfig:
    # YOLACT's FastBaseTransform: (BGR - MEANS) / STD, then reordered to RGB for the ResNet.
    return InputConfig(min_size_train=(size,), max_size_train=size, min_size_test=size, max_size_test=size,
                       pixel_mean=YOLACT_MEAN_RGB, pixel_std=YOLACT_STD_RGB, channel_order="RGB",
                       size_divisibility=1, square=size)


def _yolact_train() -> TrainConfig:
    # yolact_base_config: LR 1e-3 (warmup from 1e-4 over 500 iterations), momentum 0.9, weight decay
    # 5e-4, batch 8, 800k iterations with LR / 10 at 280k, 600k, 700k, 750k; SSD augmentation.
    return TrainConfig(lr=1e-3, momentum=0.9, weight_decay=5e-4, max_iter=800000,
                       steps=(280000, 600000, 700000, 750000), warmup_iters=500, warmup_factor=0.1,
                       ims_per_batch=8, augmentation="yolact")


def yolact_r101_550() -> Config:
    """YOLACT-550 on ResNet-101 (yolact_base_config): square anchors, one scale per level."""
    model = YolactConfig(head=YolactHeadConfig(anchor_scales=_yolact_scales(550, 1), square_anchors=True))
    return Config(name="yolact_r101_550", model=model, input=_yolact_input(550), train=_yolact_train())


def yolact_r50_550() -> Config:
    return _with_backbone(yolact_r101_550(), "yolact_r50_550", "resnet50")


def yolact_r101_400() -> Config:
    base = yolact_r101_550()
    model = replace(base.model, head=replace(base.model.head, anchor_scales=_yolact_scales(400, 1)))
    return replace(base, name="yolact_r101_400", model=model, input=_yolact_input(400))


def yolact_r101_700() -> Config:
    base = yolact_r101_550()
    model = replace(base.model, head=replace(base.model.head, anchor_scales=_yolact_scales(700, 1)))
    return replace(base, name="yolact_r101_700", model=model, input=_yolact_input(700))


def yolact_pp_r101_550() -> Config:
    """YOLACT++ R-101: DCNv2 in every third block of res3-res5, 3 anchor scales per octave, re-scoring."""
    base = yolact_r101_550()
    backbone = replace(base.model.backbone, deform_stages=(False, True, True, True), deform_interval=3)
    head = replace(base.model.head, anchor_scales=_yolact_scales(550, 3), square_anchors=False)
    model = replace(base.model, backbone=backbone, head=head, rescoring=MaskRescoringConfig())
    return replace(base, name="yolact_pp_r101_550", model=model)


def yolact_pp_r50_550() -> Config:
    """YOLACT++ R-50: DCNv2 in every block of res3-res5 (the reference's yolact_plus_resnet50 config)."""
    base = yolact_pp_r101_550()
    backbone = replace(base.model.backbone, name="resnet50", deform_interval=1)
    return replace(base, name="yolact_pp_r50_550", model=replace(base.model, backbone=backbone))


# instaseg's own post-processing, kept by the tiny presets (their demo and ablation figures were
# measured with it): boxes clipped before Fast NMS, crop by pixel centres, only entries above the
# score threshold, re-scoring IoU clamped to [0, 1]. The 550/400/700 presets, which converted
# weights map to, keep YolactConventions' defaults: dbolya/yolact's own rules.
_INSTASEG_CONVENTIONS = YolactConventions(box_clip="before_nms", crop="pixel_centre", fast_nms_fill="none",
                                          rescoring_iou="clamp")


def yolact_r18_tiny() -> Config:
    """A narrow ResNet-18 YOLACT for 128 px images, trained from scratch on a CPU (demo, tests)."""
    head = YolactHeadConfig(num_prototypes=16, proto_dim=64, head_dim=64,
                            anchor_scales=((12.0,), (24.0,), (48.0,), (96.0,), (192.0,)))
    model = YolactConfig(num_classes=5, backbone=BackboneConfig(name="resnet18", norm="BN", freeze_at=0,
                                                                out_features=("res3", "res4", "res5")),
                         fpn=FPNConfig(out_channels=64, extra="convs", num_extra=2), head=head,
                         # Binarizing at 0.4: +1.9 segm AP (YOLACT++ +1.0) over 0.5 on a held-out synthetic set
                         # (0.3 and 0.2 were worse); masks trained this briefly are soft at their borders.
                         inference=InferenceConfig(nms="fast_nms", mask_threshold=0.4),
                         conventions=_INSTASEG_CONVENTIONS)
    # Recipe measured on the synthetic set (240 train images, batch 8, 400 iterations, val AP bbox/segm):
    # SGD 5e-3 with SSD augmentation 0.3 box AP; AdamW 1e-3 with it 1.8/0.5; AdamW 1e-3 with resize + flip
    # only 5.7/3.4 (2e-3: 7.5/4.1). SSD's zoom-out (up to 4x) shrinks objects already ~10-40 px at 128 px
    # below the smallest anchor, so the tiny model trains on resize + flip. It needs data: 1500
    # iterations on 240 images memorise them (val 11.7/8.5), on 1200 images reach 26.1/14.3. Initial
    # gradient norms are in the hundreds (OHEM sums over positives): clipping at 10 as well.
    train = TrainConfig(optimizer="adamw", lr=1e-3, schedule="cosine", max_iter=1500, steps=(), warmup_iters=100,
                        weight_decay=1e-4, clip_grad_norm=10.0,
                        ims_per_batch=8, checkpoint_period=500, num_workers=1, augmentation="rcnn")
    return with_max_detections(Config(name="yolact_r18_tiny", model=model, input=_yolact_input(128), train=train),
                               CROWD_DETECTIONS)


def yolact_pp_r18_tiny() -> Config:
    """The tiny YOLACT++: re-scoring head, 3 anchor scales per octave, DCNv2 in res5 only (CPU cost)."""
    base = yolact_r18_tiny()
    scales = tuple(tuple(s[0] * 2.0 ** (j / 3) for j in range(3)) for s in base.model.head.anchor_scales)
    model = replace(
        base.model,
        backbone=replace(base.model.backbone, deform_stages=(False, False, False, True), deform_interval=1),
        head=replace(base.model.head, anchor_scales=scales, square_anchors=False),
        rescoring=MaskRescoringConfig(channels=(8, 16, 32, 64, 64)),
    )
    return replace(base, name="yolact_pp_r18_tiny", model=model)


PRESETS: dict[str, Callable[[], Config]] = {
    "mask_rcnn_r50_fpn": mask_rcnn_r50_fpn,
    "mask_rcnn_r101_fpn": mask_rcnn_r101_fpn,
    "mask_rcnn_x101_32x4d_fpn": mask_rcnn_x101_32x4d_fpn,
    "mask_rcnn_x101_32x8d_fpn": mask_rcnn_x101_32x8d_fpn,
    "mask_rcnn_x101_64x4d_fpn": mask_rcnn_x101_64x4d_fpn,
    "mask_rcnn_r50_c4": mask_rcnn_r50_c4,
    "mask_rcnn_r101_c4": mask_rcnn_r101_c4,
    "mask_rcnn_r50_fpn_torchvision": mask_rcnn_r50_fpn_torchvision,
    "mask_rcnn_r18_fpn_tiny": mask_rcnn_r18_fpn_tiny,
    "ms_rcnn_r50_fpn": ms_rcnn_r50_fpn,
    "ms_rcnn_r101_fpn": ms_rcnn_r101_fpn,
    "ms_rcnn_x101_32x4d_fpn": ms_rcnn_x101_32x4d_fpn,
    "ms_rcnn_x101_32x8d_fpn": ms_rcnn_x101_32x8d_fpn,
    "ms_rcnn_x101_64x4d_fpn": ms_rcnn_x101_64x4d_fpn,
    "ms_rcnn_r50_fpn_ablation": ms_rcnn_r50_fpn_ablation,
    "ms_rcnn_r18_fpn_tiny": ms_rcnn_r18_fpn_tiny,
    "keypoint_rcnn_r50_fpn": keypoint_rcnn_r50_fpn,
    "keypoint_mask_rcnn_r50_fpn": keypoint_mask_rcnn_r50_fpn,
    "keypoint_rcnn_r50_fpn_torchvision": keypoint_rcnn_r50_fpn_torchvision,
    "keypoint_rcnn_r18_fpn_tiny": keypoint_rcnn_r18_fpn_tiny,
    "yolact_r50_550": yolact_r50_550,
    "yolact_r101_550": yolact_r101_550,
    "yolact_r101_400": yolact_r101_400,
    "yolact_r101_700": yolact_r101_700,
    "yolact_pp_r50_550": yolact_pp_r50_550,
    "yolact_pp_r101_550": yolact_pp_r101_550,
    "yolact_r18_tiny": yolact_r18_tiny,
    "yolact_pp_r18_tiny": yolact_pp_r18_tiny,
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
