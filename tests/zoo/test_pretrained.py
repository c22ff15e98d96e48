"""From a name to weights: resolution rules, the conversion cache, ImageNet backbones by name and the
conventions they select, and build_model(preset, weights=...)."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

import instaseg
import instaseg.hub.pretrained as pretrained
from instaseg.config.presets import get_preset
from instaseg.detectors.build import resolve_config
from instaseg.engine.checkpoint import load_checkpoint
from instaseg.errors import CheckpointError, ConfigError
from instaseg.hub import config_for_weights, model_from_config, resolve_checkpoint
from instaseg.weights.safe_pickle import load_weights_file
from instaseg.weights.torchvision import ConversionSummary
from instaseg.zoo import CATALOGUE, apply_backbone_conventions, converted_path, weights_dir

from tests.zoo._server import closed_port_url
from tests.zoo._synthetic import tiny_checkpoint_file, torchvision_resnet18_file


def test_names_paths_and_mistakes(tmp_path, home):
    path = tmp_path / "model.pt"
    path.write_bytes(tiny_checkpoint_file())
    assert resolve_checkpoint(str(path)) == path
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        resolve_checkpoint(str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="did you mean maskrcnn_r50_fpn_3x_coco_d2"):
        resolve_checkpoint("maskrcnn_r50_fpn_3x_coco_d3")
    with pytest.raises(ConfigError, match="model.backbone.weights=resnet50_imagenet_tv"):
        resolve_checkpoint("resnet50_imagenet_tv")


def _fake_converter(calls):
    """Stands in for a publisher's converter: writes a tiny instaseg checkpoint, counts the calls."""
    def convert(entry, src, dst):
        calls.append(src.read_bytes())
        dst.write_bytes(tiny_checkpoint_file(num_classes=80))
        return ConversionSummary("tiny", 80, 1, "yolact_r18_tiny")
    return convert


def test_conversion_runs_once_and_again_for_a_newer_file(publish, server, monkeypatch):
    calls = []
    monkeypatch.setattr(pretrained, "_convert", _fake_converter(calls))
    entry = publish("yolact_r50_coco", b"first release")
    path = resolve_checkpoint(entry.name, verbose=False)
    assert path == converted_path(entry) and calls == [b"first release"]
    assert load_checkpoint(path)["categories"]["names"][:2] == ["person", "bicycle"]
    monkeypatch.setenv("INSTASEG_WEIGHTS_MIRROR", closed_port_url())
    assert resolve_checkpoint(entry.name, verbose=False) == path and len(calls) == 1  # cached
    source = weights_dir() / entry.file_name
    source.write_bytes(b"dropped in by hand")
    later = path.stat().st_mtime_ns + 10**9
    os.utime(source, ns=(later, later))
    resolve_checkpoint(entry.name, verbose=False)
    assert calls[-1] == b"dropped in by hand"


def test_a_failed_conversion_leaves_no_converted_file(publish, server, monkeypatch):
    def broken(entry, src, dst):
        dst.write_bytes(b"half written")
        raise CheckpointError("not a YOLACT checkpoint")

    monkeypatch.setattr(pretrained, "_convert", broken)
    entry = publish("yolact_r50_coco", b"something else")
    with pytest.raises(CheckpointError, match="not a YOLACT"):
        resolve_checkpoint(entry.name, verbose=False)
    assert sorted(p.name for p in weights_dir().iterdir()) == [entry.file_name]


def test_mmdet_without_its_converter_says_so(publish, server, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("instaseg.weights.mmdet") is not None:
        pytest.skip("instaseg.weights.mmdet is present")
    entry = publish("ms_rcnn_r50_fpn_coco_mmdet", b"an mmdet file")
    with pytest.raises(CheckpointError, match="needs instaseg.weights.mmdet"):
        resolve_checkpoint(entry.name, verbose=False)


def test_config_for_weights_keeps_the_publishers_conventions():
    d2 = replace(get_preset("mask_rcnn_r50_fpn"), name="mask_rcnn_r50_fpn_detectron2")
    assert config_for_weights(d2, None) is d2
    assert config_for_weights(d2, "mask_rcnn_r50_fpn") is d2  # the preset it was derived from
    with pytest.raises(ConfigError, match="leave the preset out"):
        config_for_weights(d2, "ms_rcnn_r50_fpn")
    # another name, the same tensors (MMDetection's caffe-style MS R-CNN): the weights' config
    mmdet = replace(get_preset("ms_rcnn_r50_fpn"), name="ms_rcnn_r50_caffe_fpn_mmdet")
    assert config_for_weights(mmdet, "ms_rcnn_r50_fpn") is mmdet
    with pytest.raises(ConfigError, match="does not build"):
        config_for_weights(mmdet, "ms_rcnn_r101_fpn")


# ------------------------------------------------------------------------ ImageNet backbones by name
def test_msra_weights_select_their_conventions():
    config = resolve_config("mask_rcnn_r50_fpn", overrides=["model.backbone.weights=resnet50_imagenet_msra"])
    adjusted, notes = apply_backbone_conventions(config)
    assert adjusted.model.backbone.stride_in_1x1 and adjusted.input.channel_order == "BGR"
    assert adjusted.input.pixel_mean == (103.53, 116.28, 123.675) and adjusted.input.pixel_std == (1.0, 1.0, 1.0)
    assert len(notes) == 2
    tv = resolve_config("mask_rcnn_r50_fpn", overrides=["model.backbone.weights=resnet50_imagenet_tv"])
    assert apply_backbone_conventions(tv) == (tv, [])  # the preset is already what they need
    # The builder refuses a config that does not fit, before anything is fetched.
    with pytest.raises(ConfigError, match="stride_in_1x1=True"):
        model_from_config(config)


@pytest.mark.parametrize("preset, weights, message", [
    ("mask_rcnn_r101_fpn", "resnet50_imagenet_tv", "holds resnet50 weights"),
    ("mask_rcnn_r18_fpn_tiny", "resnet50_imagenet_msra", "holds resnet50 weights"),
    ("yolact_r18_tiny", "maskrcnn_r50_fpn_3x_coco_d2", "whole mask_rcnn_r50_fpn model"),
])
def test_backbone_weights_that_cannot_fit_fail_clearly(preset, weights, message):
    config = resolve_config(preset, overrides=[f"model.backbone.weights={weights}"])
    with pytest.raises(ConfigError, match=message):
        apply_backbone_conventions(config)


def test_caffe2_weights_need_frozen_bn():
    config = resolve_config("mask_rcnn_r50_fpn", overrides=["model.backbone.weights=resnet50_imagenet_msra",
                                                            "model.backbone.norm=BN"])
    with pytest.raises(ConfigError, match="only fit FrozenBN"):
        apply_backbone_conventions(config)


def test_imagenet_weights_by_name_are_fetched_and_loaded(publish, server):
    entry = publish("resnet18_imagenet_tv", torchvision_resnet18_file())
    model = instaseg.build_model("mask_rcnn_r18_fpn_tiny", num_classes=3,
                                 model__backbone__weights="resnet18_imagenet_tv")
    published = load_weights_file(weights_dir() / entry.file_name)
    ours = model.backbone.state_dict()
    for name, value in published.items():
        if not name.startswith("fc."):
            assert torch.equal(ours[name], value), name
    assert server.requests[entry.file_name] == 1


def test_a_whole_instaseg_checkpoint_as_backbone_weights_gives_its_backbone(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(tiny_checkpoint_file("mask_rcnn_r18_fpn_tiny", num_classes=5, seed=7))
    model = instaseg.build_model("mask_rcnn_r18_fpn_tiny", num_classes=2, model__backbone__weights=str(path))
    saved = load_checkpoint(path)["model"]
    for name, value in model.backbone.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(value, saved["backbone." + name]), name


def test_a_whole_detector_of_another_codebase_as_backbone_weights_names_the_way(tmp_path):
    from tests.zoo._synthetic import scaled_state

    path = tmp_path / "maskrcnn.pth"
    torch.save(scaled_state({"backbone.body.conv1.weight": (64, 3, 7, 7), "rpn.head.conv.0.0.weight": (4, 4, 3, 3)}),
               path)
    with pytest.raises(CheckpointError, match="instaseg convert --from torchvision"):
        instaseg.build_model("mask_rcnn_r18_fpn_tiny", model__backbone__weights=str(path))


# ------------------------------------------------------------------------ build_model(weights=...)
def test_build_model_with_weights_by_name(publish, server):
    entry = publish("yolact_r50_coco", tiny_checkpoint_file(num_classes=80, seed=3), converter="instaseg")
    same = instaseg.build_model(weights=entry.name)
    state = load_checkpoint(weights_dir() / entry.file_name)["model"]
    assert all(torch.equal(v, state[k]) for k, v in same.state_dict().items())
    fewer = instaseg.build_model("yolact_r18_tiny", num_classes=2, weights=entry.name)
    assert fewer.num_classes == 2
    assert torch.equal(fewer.state_dict()["protonet.out_conv.weight"], state["protonet.out_conv.weight"])
    with pytest.raises(ConfigError, match="leave the preset out"):
        instaseg.build_model("mask_rcnn_r18_fpn_tiny", weights=entry.name)
