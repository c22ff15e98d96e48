"""The configuration schema: frozen dataclasses, one per part of a detector or of training.

Components below ``instaseg.detectors`` never read these: ``instaseg.detectors.build`` turns a config
into modules that take plain typed arguments (the detectors themselves still keep a few config parts,
e.g. ``inference_config``). A config is changed with ``dataclasses.replace`` (presets) or with
``--set a.b=c`` overrides (``instaseg.config.io``), which are checked against these types.

Every choice between named behaviours (a "mode": the NMS kind, the resize rounding, the optimizer
...) is a ``Literal`` type alias defined once below; :func:`mode_choices` gives its values. A part
checks its modes when it is built (``__post_init__``: a preset, ``dataclasses.replace``, ``--set``,
a YAML file or a checkpoint's dict alike), so an unknown value is refused there, with the key, the
value and the allowed values named, and never reaches a model. The components keep their own
checks for their plain arguments; ``tests/config`` checks that both lists agree.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from instaseg.errors import ConfigError

__all__ = [
    "ChannelOrder",
    "ResizeRounding",
    "ResizeFilter",
    "BackboneName",
    "NormName",
    "StageName",
    "FPNExtra",
    "FPNExtraFrom",
    "AnchorConvention",
    "AnchorStrides",
    "BoxHeadKind",
    "PoolerType",
    "MaskHeadKind",
    "MaskLoss",
    "MaskPaste",
    "NmsMode",
    "SoftNmsMethod",
    "BoxClip",
    "CropRule",
    "FastNmsFill",
    "RescoringIoU",
    "OptimizerName",
    "ScheduleName",
    "Precision",
    "AugmentationName",
    "KeypointLossNormalization",
    "KeypointScore",
    "mode_choices",
    "mode_error",
    "BackboneConfig",
    "FPNConfig",
    "InputConfig",
    "RPNConfig",
    "BoxHeadConfig",
    "MaskHeadConfig",
    "MaskIoUConfig",
    "KeypointHeadConfig",
    "InferenceConfig",
    "MaskRCNNConfig",
    "YolactHeadConfig",
    "YolactLossConfig",
    "MaskRescoringConfig",
    "YolactConventions",
    "YolactConfig",
    "TrainConfig",
    "Config",
]


# --- modes: every named choice, once ---------------------------------------------------------------
ChannelOrder = Literal["RGB", "BGR"]
ResizeRounding = Literal["floor", "round", "mmcv"]  # instaseg.structures.image_list.RESIZE_ROUNDINGS
ResizeFilter = Literal["bilinear", "pil_bilinear"]  # instaseg.structures.image_list.RESIZE_FILTERS
BackboneName = Literal[  # instaseg.backbones.resnet.RESNET_PRESETS
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x4d", "resnext101_32x8d", "resnext101_64x4d",
]
NormName = Literal["FrozenBN", "BN", "SyncBN", "GN", ""]  # instaseg.layers.norm.NORM_NAMES ("": none)
StageName = Literal["stem", "res2", "res3", "res4", "res5"]  # ResNet outputs (instaseg.backbones.resnet)
FPNExtra = Literal["maxpool", "convs", "none"]
FPNExtraFrom = Literal["output", "input"]
AnchorConvention = Literal["detectron2", "torchvision"]
AnchorStrides = Literal["fixed", "padded_size"]
BoxHeadKind = Literal["fc", "res5"]
PoolerType = Literal["align", "pool"]
MaskHeadKind = Literal["fcn", "mlp"]
MaskLoss = Literal["sigmoid", "softmax"]
MaskPaste = Literal["centres", "torchvision"]
NmsMode = Literal["nms", "soft_nms", "fast_nms"]  # fast_nms: YOLACT only
SoftNmsMethod = Literal["linear", "gaussian"]
BoxClip = Literal["after_nms", "before_nms"]
CropRule = Literal["pixel_index", "pixel_centre"]
FastNmsFill = Literal["top_k", "none"]
RescoringIoU = Literal["raw", "clamp"]
OptimizerName = Literal["sgd", "adamw"]
ScheduleName = Literal["step", "cosine"]
Precision = Literal["float32", "bf16", "fp16"]
AugmentationName = Literal["rcnn", "yolact"]
KeypointLossNormalization = Literal["visible", "fixed"]  # instaseg.losses.keypoints.KEYPOINT_LOSS_NORMALIZATIONS
KeypointScore = Literal["logit", "detectron2"]  # instaseg.ops.keypoints.KEYPOINT_SCORES


def mode_choices(mode: object) -> tuple[str, ...]:
    """The values a mode alias allows: ``mode_choices(NmsMode) == ("nms", "soft_nms", "fast_nms")``."""
    if typing.get_origin(mode) is not Literal:
        raise TypeError(f"not a Literal mode alias: {mode!r}")
    return typing.get_args(mode)


def mode_error(key: str, value: object, choices: tuple[str, ...]) -> str:
    """The message refusing ``value`` for the mode ``key``: names the key, the value and the choices."""
    return f"{key}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}"


def _mode_of(hint: object) -> tuple[tuple[str, ...], bool] | None:
    """``(allowed values, is a list)`` of a ``Literal`` or ``tuple[Literal, ...]`` type, else None."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint), False
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        element = _mode_of(args[0])
        return (element[0], True) if element and not element[1] else None
    return None


@functools.cache
def _mode_fields(cls: type) -> tuple[tuple[str, tuple[str, ...], bool], ...]:
    """``(field name, allowed values, is a list)`` of every mode field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    modes = ((f.name, _mode_of(hints[f.name])) for f in dataclasses.fields(cls))
    return tuple((name, *mode) for name, mode in modes if mode is not None)


def _check_modes(part: object) -> None:
    """Refuse a config part whose mode fields hold a value their ``Literal`` type does not allow."""
    for name, choices, is_list in _mode_fields(type(part)):
        values = getattr(part, name)
        for index, value in enumerate(values if is_list else (values,)):
            if not isinstance(value, str) or value not in choices:
                key = f"{part.KEY}.{name}[{index}]" if is_list else f"{part.KEY}.{name}"
                raise ConfigError(mode_error(key, value, choices))


IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)  # ImageNet statistics in 0-255 units, RGB
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class InputConfig:
    """How images enter the model. Images are RGB floats in [0, 255] (uint8 is converted).

    ``pixel_mean``/``pixel_std`` are in 0-255 units and in ``channel_order`` (weights trained on
    BGR Caffe2 inputs fail silently on RGB, so the order is part of the config, not the code).
    """

    KEY: ClassVar[str] = "input"  # where this part sits in a Config (error messages)
    min_size_train: tuple[int, ...] = (800,)  # shortest side; several values = multi-scale training
    max_size_train: int = 1333
    min_size_test: int = 800
    max_size_test: int = 1333
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN_RGB
    pixel_std: tuple[float, float, float] = IMAGENET_STD_RGB
    channel_order: ChannelOrder = "RGB"  # "RGB" or "BGR": the order the backbone weights expect
    size_divisibility: int = 32  # pad so every FPN level lines up
    square: int = 0  # > 0: resize to square x square ignoring aspect (YOLACT); 0: shortest side
    # Publishers' test-time resize (instaseg.structures.image_list): "floor" = torchvision's size
    # rule (floor(side * scale)), "round" = Detectron2's ResizeShortestEdge (int(x + 0.5)),
    # "mmcv" = MMDetection's keep-ratio Resize (one factor, each side int(side * factor + 0.5));
    # "bilinear" = float interpolation, "pil_bilinear" = Detectron2's uint8 Pillow resize.
    resize_rounding: ResizeRounding = "floor"
    resize_filter: ResizeFilter = "bilinear"

    def __post_init__(self) -> None:
        _check_modes(self)


@dataclass(frozen=True)
class BackboneConfig:
    KEY: ClassVar[str] = "model.backbone"  # where this part sits in a Config (error messages)
    name: BackboneName = "resnet50"  # resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x4d/32x8d/64x4d
    norm: NormName = "FrozenBN"  # FrozenBN, BN, SyncBN, GN
    freeze_at: int = 2  # 0 nothing, 1 stem, 2 stem + res2, ... (Detectron2's FREEZE_AT)
    stride_in_1x1: bool = False  # True for MSRA/Caffe2 weights, False for torchvision weights
    out_features: tuple[StageName, ...] = ("res2", "res3", "res4", "res5")
    deform_stages: tuple[bool, bool, bool, bool] = (False, False, False, False)  # res2..res5
    deform_interval: int = 1  # DCN in every k-th block of a deformable stage
    weights: str = ""  # optional ImageNet weights file (torchvision or MSRA layout)

    def __post_init__(self) -> None:
        _check_modes(self)


@dataclass(frozen=True)
class FPNConfig:
    KEY: ClassVar[str] = "model.fpn"  # where this part sits in a Config (error messages)
    out_channels: int = 256
    # "maxpool": P6 by subsampling P5 (R-CNN); "convs": strided convs (YOLACT, which refuses the others)
    extra: FPNExtra = "maxpool"
    num_extra: int = 1
    # With extra="convs": the first extra conv reads P5 ("output", the YOLACT reference) or C5
    # ("input", MMDetection's add_extra_convs='on_input', as in its YOLACT configs).
    extra_from: FPNExtraFrom = "output"
    # ReLU on the pyramid outputs before the extra levels; None: the detector's own default
    # (YOLACT: True, as the reference; Mask R-CNN: False). MMDetection's YOLACT FPN has none.
    relu_outputs: bool | None = None

    def __post_init__(self) -> None:
        _check_modes(self)


@dataclass(frozen=True)
class RPNConfig:
    KEY: ClassVar[str] = "model.rpn"  # where this part sits in a Config (error messages)
    anchor_sizes: tuple[tuple[float, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_convention: AnchorConvention = "detectron2"  # "torchvision" rounds cell anchors and orders ratio-major
    # "fixed": each level's nominal stride (4, 8, ..., 64); "padded_size": padded image size //
    # feature size per axis, as torchvision computes it (P6 of an odd-sized P5 gets 61 or 62)
    anchor_strides: AnchorStrides = "fixed"
    pre_nms_topk_train: int = 2000  # per FPN level
    pre_nms_topk_test: int = 1000
    post_nms_topk_train: int = 1000  # per image
    post_nms_topk_test: int = 1000
    nms_thresh: float = 0.7
    min_box_size: float = 0.0
    iou_thresholds: tuple[float, float] = (0.3, 0.7)  # negative below the first, positive from the second
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    smooth_l1_beta: float = 0.0  # 0 = L1 (Detectron2); torchvision uses 1/9
    loss_weight: float = 1.0

    def __post_init__(self) -> None:
        _check_modes(self)


@dataclass(frozen=True)
class BoxHeadConfig:
    KEY: ClassVar[str] = "model.box_head"  # where this part sits in a Config (error messages)
    head: BoxHeadKind = "fc"  # "fc": 2 x FC on FPN RoIs; "res5": the C4 head (res5 on 14x14 RoIs)
    pooler_resolution: int = 7
    sampling_ratio: int = 0  # <= 0: adaptive
    aligned: bool = True  # False is the legacy RoIAlign torchvision-trained weights expect
    pooler_type: PoolerType = "align"  # "align" or "pool" (RoIPool, for the paper's ablation)
    fc_dim: int = 1024
    num_fc: int = 2
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    iou_threshold: float = 0.5  # foreground at IoU >= 0.5 with a ground-truth box
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 0.0
    append_gt_boxes: bool = True  # training adds the ground-truth boxes to the proposals

    def __post_init__(self) -> None:
        _check_modes(self)


@dataclass(frozen=True)
class MaskHeadConfig:
    KEY: ClassVar[str] = "model.mask_head"  # where this part sits in a Config (error messages)
    head: MaskHeadKind = "fcn"  # "fcn": 4 x conv3x3 + deconv; "mlp": the paper's MLP ablation
    pooler_resolution: int = 14
    num_convs: int = 4
    conv_dim: int = 256
    loss: MaskLoss = "sigmoid"  # "sigmoid": per-class BCE (the paper); "softmax": multinomial ablation
    class_agnostic: bool = False
    loss_weight: float = 1.0
    max_rois_per_image: int = 0  # > 0: train the mask branch on at most this many positives per image
    paste: MaskPaste = "centres"  # "centres": bilinear at pixel centres; "torchvision": its legacy paste

    def __post_init__(self) -> None:
        _check_modes(self)


@dataclass(frozen=True)
class MaskIoUConfig:
    """Mask Scoring R-CNN's MaskIoU head (Huang et al. 2019)."""

    conv_dim: int = 256
    fc_dim: int = 1024
    loss_weight: float = 1.0


@dataclass(frozen=True)
class KeypointHeadConfig:
    """Keypoint R-CNN's keypoint head (the Mask R-CNN paper's human pose task); defaults are the
    paper's, Detectron2's and torchvision's (COCO persons). ``MaskRCNNConfig.keypoint_head`` set:
    Keypoint R-CNN (FPN models only, as both peers).
    """

    KEY: ClassVar[str] = "model.keypoint_head"  # where this part sits in a Config (error messages)
    num_keypoints: int = 17
    pooler_resolution: int = 14  # RoIAlign output; the head upsamples it 4x (deconv x2, bilinear x2)
    sampling_ratio: int = 0  # <= 0: adaptive (Detectron2); torchvision's weights expect 2
    conv_dims: tuple[int, ...] = (512,) * 8
    heatmap_size: int = 56  # m of the m x m keypoint maps: 4 x pooler_resolution
    # "visible": summed loss / valid keypoints in the batch (Detectron2's default, torchvision's mean);
    # "fixed": / (images x K x RoIs per image x positive fraction) (Detectron2's other choice, with loss_weight 4)
    loss_normalization: KeypointLossNormalization = "visible"
    loss_weight: float = 1.0
    # keypoint score at inference: "logit" at the peak (torchvision), "detectron2" (its pred_keypoints score)
    score: KeypointScore = "logit"

    def __post_init__(self) -> None:
        _check_modes(self)
        if self.heatmap_size != 4 * self.pooler_resolution:
            raise ConfigError(f"{self.KEY}.heatmap_size: the head makes 4 x pooler_resolution = "
                              f"{4 * self.pooler_resolution}, got {self.heatmap_size}")
        if self.num_keypoints < 1 or not self.conv_dims or min(self.conv_dims) < 1:
            raise ConfigError(f"{self.KEY}: need num_keypoints >= 1 and positive conv_dims, "
                              f"got {self.num_keypoints} and {self.conv_dims}")


@dataclass(frozen=True)
class InferenceConfig:
    KEY: ClassVar[str] = "model.inference"  # where this part sits in a Config (error messages)
    score_thresh: float = 0.05
    nms: NmsMode = "nms"  # "nms", "soft_nms", or "fast_nms" (YOLACT)
    nms_thresh: float = 0.5
    soft_nms_method: SoftNmsMethod = "linear"  # "linear" or "gaussian"
    soft_nms_sigma: float = 0.5
    detections_per_image: int = 100
    min_box_size: float = 0.0
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        _check_modes(self)


@dataclass(frozen=True)
class MaskRCNNConfig:
    KEY: ClassVar[str] = "model"  # where this part sits in a Config (error messages)
    arch: Literal["mask_rcnn"] = "mask_rcnn"  # discriminates the model configs in YAML / dicts; do not change
    num_classes: int = 80  # foreground classes only: the one place this number is set
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig | None = field(default_factory=FPNConfig)  # None: C4 model
    rpn: RPNConfig = field(default_factory=RPNConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    mask_head: MaskHeadConfig | None = field(default_factory=MaskHeadConfig)  # None: no mask branch
    maskiou: MaskIoUConfig | None = None  # set: Mask Scoring R-CNN
    keypoint_head: KeypointHeadConfig | None = None  # set: Keypoint R-CNN (the paper's human pose task)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        _check_modes(self)
        if self.inference.nms == "fast_nms":  # per-class NMS over the box head's class-specific boxes
            raise ConfigError(mode_error("model.inference.nms", self.inference.nms, ("nms", "soft_nms"))
                              + " (fast_nms is YOLACT's)")
        if self.mask_head is None and self.maskiou is not None:
            raise ConfigError("model.maskiou: the MaskIoU head scores masks, but model.mask_head is none")
        if self.mask_head is None and self.keypoint_head is None:
            raise ConfigError("model.mask_head: a model needs a mask or a keypoint branch (set one of "
                              "model.mask_head, model.keypoint_head)")
        if self.keypoint_head is not None and self.fpn is None:
            raise ConfigError("model.keypoint_head: Keypoint R-CNN needs an FPN model (model.fpn), as Detectron2 "
                              "and torchvision build it")


# --- YOLACT / YOLACT++ (Bolya et al. 2019, 2020); numbers from dbolya/yolact data/config.py ---------

# ImageNet statistics as YOLACT writes them (BGR MEANS/STD in data/config.py), here in RGB order:
# its FastBaseTransform normalizes the BGR image, then reorders it to RGB for the ResNet backbone.
YOLACT_MEAN_RGB = (123.68, 116.78, 103.94)
YOLACT_STD_RGB = (58.40, 57.12, 57.38)


@dataclass(frozen=True)
class YolactHeadConfig:
    """ProtoNet, the shared prediction head and the anchors (priors) it predicts from."""

    num_prototypes: int = 32  # k in the paper
    proto_dim: int = 256  # channels of the ProtoNet's hidden convs
    proto_upsample: int = 2  # ProtoNet's upsampling of P3: 2 = stride-4 prototypes (138x138 at 550)
    head_dim: int = 256  # channels of the prediction head's shared "upfeature" conv
    # Pixel sizes per level P3..P7 (YOLACT: 24..384, one per level; YOLACT++: 3 per octave).
    anchor_scales: tuple[tuple[float, ...], ...] = ((24.0,), (48.0,), (96.0,), (192.0,), (384.0,))
    aspect_ratios: tuple[float, ...] = (1.0, 0.5, 2.0)
    square_anchors: bool = True  # YOLACT v1's 'use_square_anchors' bug, kept for its weights
    semantic_seg: bool = True  # the auxiliary semantic segmentation conv on P3 (training only)


@dataclass(frozen=True)
class YolactLossConfig:
    pos_iou: float = 0.5  # positive from IoU 0.5 ('positive_iou_threshold')
    neg_iou: float = 0.4  # negative below 0.4, ignored in between
    crowd_iou: float = 0.7  # non-positives covered > 0.7 by a crowd box are ignored
    neg_pos_ratio: int = 3  # OHEM 3:1
    masks_to_train: int = 100  # at most this many positives per image in the mask loss
    conf_weight: float = 1.0  # conf_alpha
    box_weight: float = 1.5  # bbox_alpha
    mask_weight: float = 6.125  # mask_alpha = 0.4 / 256 * 140 * 140
    semantic_weight: float = 1.0  # semantic_segmentation_alpha


@dataclass(frozen=True)
class MaskRescoringConfig:
    """YOLACT++'s fast mask re-scoring network (FastMaskIoUNet)."""

    channels: tuple[int, ...] = (8, 16, 32, 64, 128)  # 3x3 stride-2 convs, then 1x1 to classes
    loss_weight: float = 25.0  # maskiou_alpha
    discard_mask_area: float = 25.0  # skip ground truths under 5x5 prototype pixels ('discard_mask_area')


@dataclass(frozen=True)
class YolactConventions:
    """How YOLACT turns head outputs into detections (and crops masks in training).

    The defaults are dbolya/yolact's rules, which its released weights were trained and evaluated
    with (``layers/functions/detection.py::Detect``, ``layers/box_utils.py::crop``,
    ``layers/output_utils.py::postprocess``); converted weights need them to give the publisher's
    detections. The tiny presets keep instaseg's own rules (the second value of each field).
    """

    KEY: ClassVar[str] = "model.conventions"  # where this part sits in a Config (error messages)
    # "after_nms": decoded boxes enter Fast NMS and the mask crop as they are, and are clipped to
    # the image only in the results (yolact's Detect, then postprocess's sanitize_coordinates);
    # "before_nms": clipped to the input first, so boxes past the edges overlap as clipped.
    box_clip: BoxClip = "after_nms"
    # Which prototype pixels a box (in prototype pixels, grown by 1 on every side) keeps:
    # "pixel_index": column x when x1 - 1 <= x < x2 + 1, with x1 <= x2 put in order (yolact's crop
    # with sanitize_coordinates(padding=1, cast=False)); "pixel_centre": when its centre x + 0.5 is.
    crop: CropRule = "pixel_index"
    # "top_k": each class's top_k candidates (boxes whose best class score passes score_thresh)
    # enter Fast NMS whatever their score in that class, and every survivor counts, so entries at
    # or below score_thresh fill the detections up to detections_per_image (yolact's fast_nms,
    # second_threshold=False); "none": only entries above score_thresh. Fast NMS only.
    fast_nms_fill: FastNmsFill = "top_k"
    # YOLACT++ mask score = class score x predicted IoU, the IoU "raw" (yolact: >= 0 from the
    # head's last ReLU, unbounded above) or "clamp"ed to [0, 1].
    rescoring_iou: RescoringIoU = "raw"

    def __post_init__(self) -> None:
        _check_modes(self)


@dataclass(frozen=True)
class YolactConfig:
    KEY: ClassVar[str] = "model"  # where this part sits in a Config (error messages)
    arch: Literal["yolact"] = "yolact"  # discriminates the model configs in YAML / dicts; do not change
    num_classes: int = 80
    backbone: BackboneConfig = field(
        default_factory=lambda: BackboneConfig(name="resnet101", freeze_at=0, out_features=("res3", "res4", "res5"))
    )
    fpn: FPNConfig = field(default_factory=lambda: FPNConfig(extra="convs", num_extra=2))
    head: YolactHeadConfig = field(default_factory=YolactHeadConfig)
    loss: YolactLossConfig = field(default_factory=YolactLossConfig)
    rescoring: MaskRescoringConfig | None = None  # set: YOLACT++
    nms_top_k: int = 200  # per class, before Fast NMS
    inference: InferenceConfig = field(default_factory=lambda: InferenceConfig(nms="fast_nms"))
    conventions: YolactConventions = field(default_factory=YolactConventions)  # the publisher's by default

    def __post_init__(self) -> None:
        _check_modes(self)
        # YOLACT's FPN always makes its extra levels (P6, P7) with strided convs: another kind
        # would be ignored by the builder, so it is refused here rather than silently dropped.
        if self.fpn.extra != "convs":
            raise ConfigError(mode_error("model.fpn.extra", self.fpn.extra, ("convs",))
                              + " (YOLACT's P6/P7 are strided convs)")


@dataclass(frozen=True)
class TrainConfig:
    KEY: ClassVar[str] = "train"  # where this part sits in a Config (error messages)
    optimizer: OptimizerName = "sgd"  # "sgd" or "adamw"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: ScheduleName = "step"  # "step" or "cosine"
    max_iter: int = 90000
    steps: tuple[int, ...] = (60000, 80000)  # LR x gamma at each (iterations)
    max_epochs: int = 0  # > 0: max_iter and steps are derived from epochs and the dataset size
    step_epochs: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    ims_per_batch: int = 16
    accumulate: int = 1  # gradient accumulation steps per optimizer step
    clip_grad_norm: float = 0.0  # 0 disables clipping
    # "bf16": the forward under bfloat16 autocast (CPU or GPU; float32 weights, losses and optimizer);
    # "fp16": float16 autocast with loss scaling (GPU only)
    precision: Precision = "float32"
    # torch.compile the backbone, neck and dense heads (instaseg.engine.compile); falls back to eager,
    # with a message, when compilation fails
    compile: bool = False
    flip_prob: float = 0.5
    augmentation: AugmentationName = "rcnn"  # "rcnn": resize + flip; "yolact": SSD-style photometric/expand/crop
    num_workers: int = 2
    checkpoint_period: int = 5000
    keep_last: int = 3
    eval_period: int = 0  # 0: evaluate only at the end
    plots: bool = True  # the run folder's pictures (results.png, PR curves ...: instaseg.engine.run_report)
    max_bad_steps: int = 5  # stop (with a checkpoint) after this many non-finite losses in a row
    seed: int = 0

    def __post_init__(self) -> None:
        _check_modes(self)


@dataclass(frozen=True)
class Config:
    """Everything needed to build, train and run one model."""

    name: str = "mask_rcnn_r50_fpn"
    model: MaskRCNNConfig | YolactConfig = field(default_factory=MaskRCNNConfig)
    input: InputConfig = field(default_factory=InputConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
