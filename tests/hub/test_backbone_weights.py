"""ImageNet weights at the top floor: the builder assembles, ``model_from_config`` loads the file."""

from __future__ import annotations

import torch

from instaseg.detectors.build import build_from_config, resolve_config
from instaseg.heads.box_head import Res5Head
from instaseg.hub import model_from_config
from instaseg.weights.safe_pickle import load_weights_file

from tests.zoo._synthetic import torchvision_resnet18_file


def _c4_config(weights: str):
    # a C4 Mask R-CNN on a ResNet-18: res4 in the backbone, res5 as the RoI head
    return resolve_config("mask_rcnn_r50_c4", num_classes=2, overrides=[
        "model.backbone.name=resnet18", "model.backbone.stride_in_1x1=false", f"model.backbone.weights={weights}"])


def test_the_builder_reads_no_weights_file(tmp_path):
    model = build_from_config(_c4_config(str(tmp_path / "absent.pth")))  # not read, so not missed
    assert isinstance(model.box_head, Res5Head)


def test_imagenet_weights_fill_the_backbone_and_the_c4_res5_head(tmp_path):
    path = tmp_path / "resnet18.pth"
    path.write_bytes(torchvision_resnet18_file())
    published = load_weights_file(path)
    model = model_from_config(_c4_config(str(path)))
    backbone, res5 = model.backbone.state_dict(), model.box_head.res5.state_dict()
    checked = 0
    for name, value in published.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        ours = res5[name[len("layer4."):]] if name.startswith("layer4.") else backbone[name]
        assert torch.equal(ours, value.to(ours.dtype)), name
        checked += 1
    assert checked == sum(1 for k in published if not k.startswith("fc.") and not k.endswith("num_batches_tracked"))
    fresh = build_from_config(_c4_config(str(path)))  # the same modules, freshly initialised
    assert not torch.equal(fresh.box_head.res5.state_dict()["0.conv1.weight"], res5["0.conv1.weight"])
