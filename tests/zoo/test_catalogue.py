"""The catalogue table itself: every entry complete, pointing at its publisher, its check matching
its file name, and mapping onto a preset (or backbone) instaseg builds."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from instaseg.backbones.resnet import RESNET_PRESETS
from instaseg.config.presets import PRESETS
from instaseg.errors import ConfigError
from instaseg.zoo import CATALOGUE, get_entry, list_entries

HOSTS = {"torchvision": "download.pytorch.org", "Detectron2": "dl.fbaipublicfiles.com",
         "YOLACT (dbolya/yolact)": "huggingface.co", "MMDetection": "download.openmmlab.com",
         "Detectron2 (MSRA/FAIR Caffe2 ImageNet)": "dl.fbaipublicfiles.com"}
REQUIRED = ["maskrcnn_r50_fpn_coco_tv", "maskrcnn_r50_fpn_1x_coco_d2", "maskrcnn_r50_fpn_3x_coco_d2",
            "maskrcnn_r101_fpn_3x_coco_d2", "maskrcnn_x101_32x8d_fpn_3x_coco_d2", "maskrcnn_r50_c4_1x_coco_d2",
            "yolact_r50_coco", "yolact_r101_coco", "yolact_pp_r50_coco", "yolact_pp_r101_coco",
            "ms_rcnn_r50_fpn_coco_mmdet", "ms_rcnn_r101_fpn_coco_mmdet", "ms_rcnn_x101_64x4d_fpn_coco_mmdet",
            "resnet50_imagenet_tv", "resnet101_imagenet_tv", "resnext101_32x8d_imagenet_tv",
            "resnet50_imagenet_msra", "resnet101_imagenet_msra", "keypointrcnn_r50_fpn_coco_tv",
            "keypointrcnn_r50_fpn_1x_coco_d2", "keypointrcnn_r50_fpn_3x_coco_d2"]


def test_the_required_entries_are_there():
    assert set(REQUIRED) <= set(CATALOGUE)
    assert [e.name for e in list_entries()] == list(CATALOGUE)


@pytest.mark.parametrize("entry", list_entries(), ids=lambda e: e.name)
def test_entry_is_complete_and_consistent(entry):
    url = urlparse(entry.url)
    assert url.scheme == "https" and url.hostname == HOSTS[entry.publisher]
    assert url.path.rsplit("/", 1)[1] == entry.file_name  # the cache keeps the publisher's file name
    assert entry.license and entry.input_convention and entry.page
    if entry.hash_prefix:
        assert entry.hash_prefix in entry.file_name and all(c in "0123456789abcdef" for c in entry.hash_prefix)
    if entry.kind == "detector":
        assert entry.preset in PRESETS and entry.classes
        # a mask model states its mask AP, a keypoint model its keypoint AP (and builds a keypoint head)
        keypoints = getattr(PRESETS[entry.preset]().model, "keypoint_head", None) is not None
        assert (entry.keypoint_ap if keypoints else entry.mask_ap) is not None
        assert (entry.classes == "coco_person") == keypoints
    else:
        assert entry.backbone.backbone == entry.preset and entry.preset in RESNET_PRESETS


def test_publishers_checks_as_they_document_them():
    by_publisher = {}
    for entry in list_entries():
        by_publisher.setdefault(entry.publisher, set()).add(entry.hash_algorithm)
    assert by_publisher["torchvision"] == {"sha256"} and by_publisher["MMDetection"] == {"sha256"}
    assert by_publisher["Detectron2"] == {"md5"}
    assert by_publisher["YOLACT (dbolya/yolact)"] == {""}  # none published: said so
    assert "no checksum" in get_entry("yolact_r50_coco").integrity


def test_detectron2_imagenet_names_resolve_as_detectron2_does():
    # detectron2://ImageNetPretrained/MSRA/R-50.pkl -> https://dl.fbaipublicfiles.com/detectron2/ + path
    assert get_entry("resnet50_imagenet_msra").url == \
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    msra = get_entry("resnet50_imagenet_msra").backbone
    assert msra.stride_in_1x1 and msra.channel_order == "BGR" and msra.folded_norm


def test_unknown_names_suggest_close_ones():
    with pytest.raises(ConfigError, match="yolact_pp_r50_coco"):
        get_entry("yolact_pp_r50")


def test_readme_lists_every_entry():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert [e.name for e in list_entries() if f"`{e.name}`" not in readme] == []
