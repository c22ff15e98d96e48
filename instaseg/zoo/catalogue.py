"""The weights catalogue: one entry per file a publisher released, with what instaseg makes of it.

Every URL, file name, checksum and AP below is copied from the publisher's own source or docs:

* torchvision: ``torchvision/models/detection/mask_rcnn.py`` (``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``:
  box 37.9 / mask 34.6 on COCO val2017), ``torchvision/models/detection/keypoint_rcnn.py``
  (``KeypointRCNN_ResNet50_FPN_Weights.COCO_V1``: box 54.6 / keypoint 65.0 on COCO val2017 persons)
  and ``torchvision/models/resnet.py`` (``*_Weights.IMAGENET1K_V1``).
  File names end in the first 8 hex digits of the file's sha256 (what ``torch.hub`` checks).
* Detectron2: ``detectron2/model_zoo/model_zoo.py`` and ``MODEL_ZOO.md`` (COCO val2017 AP; "any model on
  this page contains its md5 prefix in its file name"; models under CC BY-SA 3.0). The ImageNet
  ``.pkl`` files (``detectron2://ImageNetPretrained/...``, resolved to ``https://dl.fbaipublicfiles.com/
  detectron2/`` by ``detectron2/checkpoint/catalog.py``) carry no checksum.
* YOLACT: dbolya/yolact ``README.md`` (mask mAP on COCO test-dev; MIT licence). The release files moved
  from Google Drive to Hugging Face (the README's links since September 2025); no checksum is published.
* MMDetection: ``configs/ms_rcnn/metafile.yml`` (COCO val2017 AP; Apache-2.0). File names end in the
  first 8 hex digits of the sha256 (MMDetection's ``publish_model`` tool).

Input conventions are stated as the publishers run the weights; the converters write them into the
instaseg config (``instaseg.weights``), so a converted model needs no further setting.
"""

from __future__ import annotations

from dataclasses import dataclass

from instaseg.errors import ConfigError

__all__ = ["BackboneConvention", "WeightsEntry", "CATALOGUE", "CONVERTERS", "get_entry", "list_entries"]

CONVERTERS = ("torchvision", "detectron2", "yolact", "mmdet", "instaseg", "backbone")


@dataclass(frozen=True)
class BackboneConvention:
    """What ImageNet backbone weights need from the model that loads them (``model.backbone.weights``)."""

    backbone: str  # the instaseg backbone they fit, e.g. "resnet50"
    stride_in_1x1: bool  # MSRA/Caffe2: stride in the first 1x1 conv; torchvision: in the 3x3
    channel_order: str  # "RGB" or "BGR"
    pixel_mean: tuple[float, float, float]  # 0-255 units, in channel_order
    pixel_std: tuple[float, float, float]
    folded_norm: bool = False  # norms folded into an affine (Caffe2): only FrozenBN reproduces them


@dataclass(frozen=True)
class WeightsEntry:
    """One published weights file.

    ``hash_algorithm``/``hash_prefix``: the integrity check the publisher provides (the leading hex
    digits of the file's sha256 or md5, as written in its file name); empty when it provides none,
    in which case ``size_bytes`` is the only check, when known.
    """

    name: str  # instaseg's short name: `instaseg weights fetch NAME`, `--weights NAME`
    publisher: str
    preset: str  # the instaseg preset the converted checkpoint is built from (detectors)
    url: str  # the publisher's official URL
    file_name: str  # the publisher's file name (the cache keeps it; a file dropped by hand must have it)
    page: str  # where the publisher lists the file
    license: str
    converter: str  # one of CONVERTERS; "backbone": ImageNet weights used as model.backbone.weights
    input_convention: str
    hash_algorithm: str = ""  # "sha256" or "md5"; "" when the publisher gives none
    hash_prefix: str = ""
    size_bytes: int | None = None
    box_ap: float | None = None  # the publisher's own COCO figures
    mask_ap: float | None = None
    keypoint_ap: float | None = None  # Keypoint R-CNN: COCO person keypoint AP
    ap_split: str = "COCO val2017"
    # "coco80" / "coco91" (torchvision's 90 ids) / "coco_person" (keypoint models: person, with COCO's
    # 17 keypoint names and skeleton): category ids and names to record
    classes: str = ""
    backbone: BackboneConvention | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.converter not in CONVERTERS:
            raise ValueError(f"{self.name}: converter {self.converter!r} is not one of {CONVERTERS}")
        if (self.converter == "backbone") != (self.backbone is not None):
            raise ValueError(f"{self.name}: backbone entries (and only they) carry a BackboneConvention")
        if bool(self.hash_algorithm) != bool(self.hash_prefix) or self.hash_algorithm not in ("", "sha256", "md5"):
            raise ValueError(f"{self.name}: hash_algorithm and hash_prefix go together (sha256 or md5)")

    @property
    def kind(self) -> str:
        """``"backbone"`` (ImageNet weights) or ``"detector"`` (a whole model)."""
        return "backbone" if self.converter == "backbone" else "detector"

    @property
    def integrity(self) -> str:
        """The check in words, for tables and messages."""
        if self.hash_prefix:
            return f"{self.hash_algorithm} starts with {self.hash_prefix}"
        if self.size_bytes:
            return f"size {self.size_bytes} bytes (the publisher gives no checksum)"
        return "none (the publisher gives no checksum or size)"


# --------------------------------------------------------------------------------------- conventions
_TV_INPUT = ("RGB in [0, 1] normalised with ImageNet mean/std; shortest side 800, longest 1333; "
             "stride in the 3x3 conv; FrozenBN with eps 0")
_D2_INPUT = ("BGR 0-255 minus (103.53, 116.28, 123.675), std 1; shortest side 800, longest 1333 "
             "(int(x + 0.5) sizes, Pillow bilinear); stride in the 1x1 conv (MSRA weights)")
_D2_X101_INPUT = ("BGR 0-255 minus (103.53, 116.28, 123.675), std (57.375, 57.12, 58.395); shortest side 800, "
                  "longest 1333; stride in the 3x3 conv (FAIR Caffe2 ResNeXt)")
_YOLACT_INPUT = ("resized to {size}x{size} (aspect not kept); RGB normalised with ImageNet mean/std "
                 "(YOLACT's MEANS/STD)")
_MMDET_CAFFE_INPUT = ("BGR 0-255 minus (103.53, 116.28, 123.675), std 1; shortest side 800, longest 1333; "
                      "caffe style (stride in the 1x1 conv)")
_MMDET_PYTORCH_INPUT = ("RGB 0-255 minus (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375); shortest side "
                        "800, longest 1333; pytorch style (stride in the 3x3 conv)")

_IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
_IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
_CAFFE_MEAN_BGR = (103.53, 116.28, 123.675)


def _torchvision_backbone(backbone: str) -> BackboneConvention:
    return BackboneConvention(backbone, stride_in_1x1=False, channel_order="RGB",
                              pixel_mean=_IMAGENET_MEAN_RGB, pixel_std=_IMAGENET_STD_RGB)


# ------------------------------------------------------------------------------------------ sources
_TV = "https://download.pytorch.org/models/"
_TV_LICENSE = "BSD-3-Clause (torchvision); its README: weights may carry their training data's terms"
_TV_DET_PAGE = "pytorch/vision torchvision/models/detection/mask_rcnn.py MaskRCNN_ResNet50_FPN_Weights.COCO_V1"
_TV_KEYPOINT_PAGE = ("pytorch/vision torchvision/models/detection/keypoint_rcnn.py "
                     "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1")
_TV_RESNET_PAGE = "pytorch/vision torchvision/models/resnet.py {}_Weights.IMAGENET1K_V1"
_D2 = "https://dl.fbaipublicfiles.com/detectron2/"
_D2_PAGE = "facebookresearch/detectron2 MODEL_ZOO.md, detectron2/model_zoo/model_zoo.py"
_D2_LICENSE = "CC BY-SA 3.0 (Detectron2 MODEL_ZOO.md)"
_YOLACT_PAGE = "dbolya/yolact README.md (Evaluation)"
_YOLACT_LICENSE = "MIT (dbolya/yolact)"
_YOLACT_NOTE = ("originally on Google Drive without stable direct links; the README now links these Hugging "
                "Face files. No checksum is published: the conversion checks every tensor's name and shape.")
_MMDET = "https://download.openmmlab.com/mmdetection/v2.0/ms_rcnn/"
_MMDET_PAGE = "open-mmlab/mmdetection configs/ms_rcnn/metafile.yml (README.md)"
_MMDET_LICENSE = "Apache-2.0 (MMDetection)"


def _d2_mask_rcnn(name: str, config: str, model_id: str, file_name: str, preset: str, box: float, mask: float,
                  convention: str = _D2_INPUT) -> WeightsEntry:
    return WeightsEntry(
        name=name, publisher="Detectron2", preset=preset,
        url=f"{_D2}COCO-InstanceSegmentation/{config}/{model_id}/{file_name}", file_name=file_name,
        page=f"{_D2_PAGE}: COCO-InstanceSegmentation/{config}", license=_D2_LICENSE, converter="detectron2",
        input_convention=convention, hash_algorithm="md5", hash_prefix=file_name[len("model_final_"):-len(".pkl")],
        box_ap=box, mask_ap=mask, classes="coco80",
    )


def _d2_keypoint_rcnn(name: str, config: str, model_id: str, file_name: str, box: float,
                      keypoint: float) -> WeightsEntry:
    return WeightsEntry(
        name=name, publisher="Detectron2", preset="keypoint_rcnn_r50_fpn",
        url=f"{_D2}COCO-Keypoints/{config}/{model_id}/{file_name}", file_name=file_name,
        page=f"{_D2_PAGE}: COCO-Keypoints/{config}", license=_D2_LICENSE, converter="detectron2",
        input_convention=_D2_INPUT, hash_algorithm="md5", hash_prefix=file_name[len("model_final_"):-len(".pkl")],
        box_ap=box, keypoint_ap=keypoint, classes="coco_person",
        notes="boxes and the 17 COCO keypoints of persons (no masks)",
    )


def _yolact(name: str, repo: str, file_name: str, preset: str, mask: float, size: int = 550) -> WeightsEntry:
    return WeightsEntry(
        name=name, publisher="YOLACT (dbolya/yolact)", preset=preset,
        url=f"https://huggingface.co/dbolya/{repo}/resolve/main/{file_name}?download=true", file_name=file_name,
        page=_YOLACT_PAGE, license=_YOLACT_LICENSE, converter="yolact",
        input_convention=_YOLACT_INPUT.format(size=size), mask_ap=mask, ap_split="COCO test-dev (mask mAP)",
        classes="coco80", notes=_YOLACT_NOTE,
    )


def _ms_rcnn(name: str, folder: str, file_name: str, preset: str, box: float, mask: float,
             convention: str) -> WeightsEntry:
    return WeightsEntry(
        name=name, publisher="MMDetection", preset=preset, url=f"{_MMDET}{folder}/{file_name}", file_name=file_name,
        page=f"{_MMDET_PAGE}: {folder}", license=_MMDET_LICENSE, converter="mmdet", input_convention=convention,
        hash_algorithm="sha256", hash_prefix=file_name.rsplit("-", 1)[1][: -len(".pth")], box_ap=box, mask_ap=mask,
        classes="coco80",
    )


def _tv_backbone(name: str, enum: str, file_name: str, backbone: str) -> WeightsEntry:
    return WeightsEntry(
        name=name, publisher="torchvision", preset=backbone, url=f"{_TV}{file_name}", file_name=file_name,
        page=_TV_RESNET_PAGE.format(enum), license=_TV_LICENSE, converter="backbone",
        input_convention="RGB normalised with ImageNet mean/std; stride in the 3x3 conv",
        hash_algorithm="sha256", hash_prefix=file_name.rsplit("-", 1)[1][: -len(".pth")], ap_split="",
        backbone=_torchvision_backbone(backbone),
    )


def _caffe2_backbone(name: str, path: str, backbone: str, convention: BackboneConvention, words: str,
                     notes: str = "") -> WeightsEntry:
    return WeightsEntry(
        name=name, publisher="Detectron2 (MSRA/FAIR Caffe2 ImageNet)", preset=backbone, url=f"{_D2}{path}",
        file_name=path.rsplit("/", 1)[1], page=f"{_D2_PAGE} (ImageNet Pretrained Models): detectron2://{path}",
        license=_D2_LICENSE, converter="backbone", input_convention=words, ap_split="", backbone=convention,
        notes=notes,
    )


_MSRA = "BGR 0-255 minus (103.53, 116.28, 123.675), std 1; stride in the 1x1 conv; norms folded (FrozenBN only)"


def _msra(backbone: str) -> BackboneConvention:
    return BackboneConvention(backbone, stride_in_1x1=True, channel_order="BGR", pixel_mean=_CAFFE_MEAN_BGR,
                              pixel_std=(1.0, 1.0, 1.0), folded_norm=True)


# ---------------------------------------------------------------------------------------- the table
_ENTRIES: tuple[WeightsEntry, ...] = (
    # torchvision: the v1 COCO Mask R-CNN
    WeightsEntry(
        name="maskrcnn_r50_fpn_coco_tv", publisher="torchvision", preset="mask_rcnn_r50_fpn_torchvision",
        url=f"{_TV}maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", file_name="maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
        page=_TV_DET_PAGE, license=_TV_LICENSE, converter="torchvision", input_convention=_TV_INPUT,
        hash_algorithm="sha256", hash_prefix="bf2d0c1e", box_ap=37.9, mask_ap=34.6, classes="coco91",
        notes="90 classes (COCO ids 1..90, 10 of them unused 'N/A'), as torchvision predicts them",
    ),
    # torchvision: the COCO Keypoint R-CNN (COCO_V1, not the early-epoch COCO_LEGACY)
    WeightsEntry(
        name="keypointrcnn_r50_fpn_coco_tv", publisher="torchvision", preset="keypoint_rcnn_r50_fpn_torchvision",
        url=f"{_TV}keypointrcnn_resnet50_fpn_coco-fc266e95.pth",
        file_name="keypointrcnn_resnet50_fpn_coco-fc266e95.pth",
        page=_TV_KEYPOINT_PAGE, license=_TV_LICENSE, converter="torchvision", input_convention=_TV_INPUT,
        hash_algorithm="sha256", hash_prefix="fc266e95", box_ap=54.6, keypoint_ap=65.0, classes="coco_person",
        notes="boxes and the 17 COCO keypoints of persons (no masks); keypoint scores are heatmap logits",
    ),
    # Detectron2 model zoo: COCO instance segmentation baselines with Mask R-CNN
    _d2_mask_rcnn("maskrcnn_r50_c4_1x_coco_d2", "mask_rcnn_R_50_C4_1x", "137259246", "model_final_9243eb.pkl",
                  "mask_rcnn_r50_c4", 36.8, 32.2),
    _d2_mask_rcnn("maskrcnn_r50_fpn_1x_coco_d2", "mask_rcnn_R_50_FPN_1x", "137260431", "model_final_a54504.pkl",
                  "mask_rcnn_r50_fpn", 38.6, 35.2),
    _d2_mask_rcnn("maskrcnn_r50_c4_3x_coco_d2", "mask_rcnn_R_50_C4_3x", "137849525", "model_final_4ce675.pkl",
                  "mask_rcnn_r50_c4", 39.8, 34.4),
    _d2_mask_rcnn("maskrcnn_r50_fpn_3x_coco_d2", "mask_rcnn_R_50_FPN_3x", "137849600", "model_final_f10217.pkl",
                  "mask_rcnn_r50_fpn", 41.0, 37.2),
    _d2_mask_rcnn("maskrcnn_r101_c4_3x_coco_d2", "mask_rcnn_R_101_C4_3x", "138363239", "model_final_a2914c.pkl",
                  "mask_rcnn_r101_c4", 42.6, 36.7),
    _d2_mask_rcnn("maskrcnn_r101_fpn_3x_coco_d2", "mask_rcnn_R_101_FPN_3x", "138205316", "model_final_a3ec72.pkl",
                  "mask_rcnn_r101_fpn", 42.9, 38.6),
    _d2_mask_rcnn("maskrcnn_x101_32x8d_fpn_3x_coco_d2", "mask_rcnn_X_101_32x8d_FPN_3x", "139653917",
                  "model_final_2d9806.pkl", "mask_rcnn_x101_32x8d_fpn", 44.3, 39.5, _D2_X101_INPUT),
    # Detectron2 model zoo: COCO person keypoint detection baselines with Keypoint R-CNN
    _d2_keypoint_rcnn("keypointrcnn_r50_fpn_1x_coco_d2", "keypoint_rcnn_R_50_FPN_1x", "137261548",
                      "model_final_04e291.pkl", 53.6, 64.0),
    _d2_keypoint_rcnn("keypointrcnn_r50_fpn_3x_coco_d2", "keypoint_rcnn_R_50_FPN_3x", "137849621",
                      "model_final_a6e10b.pkl", 55.4, 65.5),
    # YOLACT / YOLACT++ (dbolya/yolact)
    _yolact("yolact_r50_coco", "yolact-resnet50", "yolact_resnet50_54_800000.pth", "yolact_r50_550", 28.2),
    _yolact("yolact_r101_coco", "yolact-base", "yolact_base_54_800000.pth", "yolact_r101_550", 29.8),
    _yolact("yolact_r101_700_coco", "yolact-im700", "yolact_im700_54_800000.pth", "yolact_r101_700", 31.2, 700),
    _yolact("yolact_pp_r50_coco", "yolact-plus-resnet50", "yolact_plus_resnet50_54_800000.pth", "yolact_pp_r50_550",
            34.1),
    _yolact("yolact_pp_r101_coco", "yolact-plus-base", "yolact_plus_base_54_800000.pth", "yolact_pp_r101_550", 34.6),
    # Mask Scoring R-CNN (MMDetection model zoo)
    _ms_rcnn("ms_rcnn_r50_fpn_coco_mmdet", "ms_rcnn_r50_caffe_fpn_1x_coco",
             "ms_rcnn_r50_caffe_fpn_1x_coco_20200702_180848-61c9355e.pth", "ms_rcnn_r50_fpn", 38.2, 36.0,
             _MMDET_CAFFE_INPUT),
    _ms_rcnn("ms_rcnn_r101_fpn_coco_mmdet", "ms_rcnn_r101_caffe_fpn_1x_coco",
             "ms_rcnn_r101_caffe_fpn_1x_coco_bbox_mAP-0.404__segm_mAP-0.376_20200506_004755-b9b12a37.pth",
             "ms_rcnn_r101_fpn", 40.4, 37.6, _MMDET_CAFFE_INPUT),
    _ms_rcnn("ms_rcnn_x101_32x4d_fpn_coco_mmdet", "ms_rcnn_x101_32x4d_fpn_1x_coco",
             "ms_rcnn_x101_32x4d_fpn_1x_coco_20200206-81fd1740.pth", "ms_rcnn_x101_32x4d_fpn", 41.8, 38.7,
             _MMDET_PYTORCH_INPUT),
    _ms_rcnn("ms_rcnn_x101_64x4d_fpn_coco_mmdet", "ms_rcnn_x101_64x4d_fpn_1x_coco",
             "ms_rcnn_x101_64x4d_fpn_1x_coco_20200206-86ba88d2.pth", "ms_rcnn_x101_64x4d_fpn", 43.0, 39.5,
             _MMDET_PYTORCH_INPUT),
    # ImageNet backbones: torchvision (IMAGENET1K_V1) ...
    _tv_backbone("resnet18_imagenet_tv", "ResNet18", "resnet18-f37072fd.pth", "resnet18"),
    _tv_backbone("resnet50_imagenet_tv", "ResNet50", "resnet50-0676ba61.pth", "resnet50"),
    _tv_backbone("resnet101_imagenet_tv", "ResNet101", "resnet101-63fe2227.pth", "resnet101"),
    _tv_backbone("resnext101_32x8d_imagenet_tv", "ResNeXt101_32X8D", "resnext101_32x8d-8ba56ff5.pth",
                 "resnext101_32x8d"),
    # ... and the Caffe2 files Detectron2 trains from
    _caffe2_backbone("resnet50_imagenet_msra", "ImageNetPretrained/MSRA/R-50.pkl", "resnet50", _msra("resnet50"),
                     _MSRA),
    _caffe2_backbone("resnet101_imagenet_msra", "ImageNetPretrained/MSRA/R-101.pkl", "resnet101",
                     _msra("resnet101"), _MSRA),
    _caffe2_backbone(
        "resnext101_32x8d_imagenet_fair", "ImageNetPretrained/FAIR/X-101-32x8d.pkl", "resnext101_32x8d",
        BackboneConvention("resnext101_32x8d", stride_in_1x1=False, channel_order="BGR", pixel_mean=_CAFFE_MEAN_BGR,
                           pixel_std=(57.375, 57.12, 58.395), folded_norm=True),
        "BGR 0-255 minus (103.53, 116.28, 123.675), std (57.375, 57.12, 58.395); stride in the 3x3 conv; "
        "norms folded (FrozenBN only)",
        notes="the starting point of Detectron2's X101-FPN; read as Caffe2 blob names (res2_0_branch2a_w ...)",
    ),
)

CATALOGUE: dict[str, WeightsEntry] = {entry.name: entry for entry in _ENTRIES}


def list_entries() -> list[WeightsEntry]:
    """Every entry, in catalogue order (detectors by publisher, then ImageNet backbones)."""
    return list(CATALOGUE.values())


def get_entry(name: str) -> WeightsEntry:
    """The entry called ``name``; a :class:`ConfigError` naming close matches otherwise."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    import difflib

    close = difflib.get_close_matches(name, list(CATALOGUE), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"{name!r} is neither a file nor a catalogue name{hint} (`instaseg weights list` shows them)")
