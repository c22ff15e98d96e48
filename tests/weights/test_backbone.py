"""ImageNet backbone weights (torchvision, MSRA/Caffe2, Detectron2 layouts) into our ResNet.

Synthetic weight files are generated here from each codebase's naming rules; MSRA norms (scale
and bias only) must give exactly ``x * s + b``.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from instaseg.backbones.resnet import Bottleneck, ResNet
from instaseg.errors import CheckpointError
from instaseg.hub.backbone import load_backbone_weights
from instaseg.weights.backbone import detect_backbone_format, read_backbone_weights

BN = ("weight", "bias", "running_mean", "running_var")


def torchvision_resnet_shapes(blocks=(3, 4, 6, 3), groups: int = 1, width_per_group: int = 64,
                              num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """torchvision.models.resnet / resnext bottleneck state dict: key -> shape."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **{f"bn1.{p}": (64,) for p in BN}, "bn1.num_batches_tracked": ()}

    def bn(name: str, width: int) -> None:
        shapes.update({f"{name}.{p}": (width,) for p in BN})
        shapes[f"{name}.num_batches_tracked"] = ()

    in_channels = 64
    for stage, count in enumerate(blocks, start=1):
        planes = 64 * 2 ** (stage - 1)
        width = planes * width_per_group // 64 * groups
        for i in range(count):
            block = f"layer{stage}.{i}."
            shapes[block + "conv1.weight"] = (width, in_channels, 1, 1)
            shapes[block + "conv2.weight"] = (width, width // groups, 3, 3)
            shapes[block + "conv3.weight"] = (4 * planes, width, 1, 1)
            bn(block + "bn1", width)
            bn(block + "bn2", width)
            bn(block + "bn3", 4 * planes)
            if i == 0:
                shapes[block + "downsample.0.weight"] = (4 * planes, in_channels, 1, 1)
                bn(block + "downsample.1", 4 * planes)
            in_channels = 4 * planes
    shapes["fc.weight"] = (num_classes, 2048)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def msra_shapes(blocks=(3, 4, 6, 3)) -> dict[str, tuple[int, ...]]:
    """Detectron's ImageNet R-50.pkl blobs: conv ``_w``; affine-only norms ``_bn_s``/``_bn_b``."""
    shapes = {"conv1_w": (64, 3, 7, 7), "res_conv1_bn_s": (64,), "res_conv1_bn_b": (64,)}
    in_channels = 64
    for stage, count in zip(range(2, 6), blocks):
        planes = 64 * 2 ** (stage - 2)
        for i in range(count):
            prefix = f"res{stage}_{i}_"
            for branch, shape in (("branch2a", (planes, in_channels, 1, 1)), ("branch2b", (planes, planes, 3, 3)),
                                  ("branch2c", (4 * planes, planes, 1, 1))):
                shapes[prefix + branch + "_w"] = shape
                shapes[prefix + branch + "_bn_s"] = (shape[0],)
                shapes[prefix + branch + "_bn_b"] = (shape[0],)
            if i == 0:
                shapes[prefix + "branch1_w"] = (4 * planes, in_channels, 1, 1)
                shapes[prefix + "branch1_bn_s"] = (4 * planes,)
                shapes[prefix + "branch1_bn_b"] = (4 * planes,)
            in_channels = 4 * planes
    shapes["fc1000_w"] = (1000, 2048)
    shapes["fc1000_b"] = (1000,)
    return shapes


def random_values(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for index, (name, shape) in enumerate(shapes.items()):
        if name.endswith("num_batches_tracked"):
            out[name] = np.array(100, dtype=np.int64)
        elif name.endswith(("running_var", "_riv")):
            out[name] = (rng.random(shape, dtype=np.float32) + 0.5).astype(np.float32)
        else:
            out[name] = (rng.standard_normal(shape, dtype=np.float32) + index).astype(np.float32)
    return out


def msra_to_ours(name: str) -> str:
    """Our name of an MSRA blob, written independently of the converter."""
    if name == "conv1_w":
        return "conv1.weight"
    if name.startswith("res_conv1_bn_"):
        return {"s": "bn1.weight", "b": "bn1.bias"}[name[-1]]
    m = re.fullmatch(r"res(\d)_(\d+)_branch(\w+?)_(w|bn_s|bn_b)", name)
    assert m, name
    layer = f"layer{int(m[1]) - 1}.{m[2]}."
    module = {"1": "downsample.", "2a": "1", "2b": "2", "2c": "3"}[m[3]]
    if m[3] == "1":
        return layer + {"w": "downsample.0.weight", "bn_s": "downsample.1.weight", "bn_b": "downsample.1.bias"}[m[4]]
    return layer + {"w": f"conv{module}.weight", "bn_s": f"bn{module}.weight", "bn_b": f"bn{module}.bias"}[m[4]]


def _pickle(path: Path, payload: object, protocol: int = 4) -> Path:
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    return path


@pytest.fixture(scope="module")
def r50_values() -> dict[str, np.ndarray]:
    return random_values(torchvision_resnet_shapes())


# ----------------------------------------------------------------------------------------- tests
def test_torchvision_weights_load_exactly(tmp_path: Path, r50_values) -> None:
    values = r50_values
    path = tmp_path / "resnet50.pth"
    torch.save({k: torch.from_numpy(v) for k, v in values.items()}, path)
    backbone = ResNet(50, freeze_at=2)
    report = load_backbone_weights(backbone, path)
    assert "torchvision" in report[0] and not any("warning" in line for line in report)
    own = backbone.state_dict()
    for name, value in values.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            assert name not in own  # classifier and step counters are dropped
        else:
            assert torch.equal(own[name], torch.from_numpy(value)), name


def test_msra_pkl_norms_are_the_exact_affine(tmp_path: Path) -> None:
    blobs = random_values(msra_shapes())
    blobs["res2_0_branch2a_w_momentum"] = np.zeros((64, 64, 1, 1), np.float32)  # solver state: ignored
    path = _pickle(tmp_path / "R-50.pkl", {"blobs": blobs})
    backbone = ResNet(50, stride_in_1x1=True, freeze_at=5)
    report = load_backbone_weights(backbone, path)
    assert "msra" in report[0] and not any("warning" in line for line in report)
    own = backbone.state_dict()
    for name, value in blobs.items():
        if name.startswith("fc1000") or name.endswith("_momentum"):
            continue
        assert torch.equal(own[msra_to_ours(name)], torch.from_numpy(value)), name
    # every norm computes x * s + b exactly (the Caffe2 folded affine)
    x = torch.randn(2, 256, 5, 5)
    for name, module in (("res2_0_branch1", backbone.layer1[0].downsample[1]), ("res_conv1", backbone.bn1),
                         ("res4_5_branch2c", backbone.layer3[5].bn3)):
        scale = torch.from_numpy(blobs[f"{name}_bn_s"]).view(1, -1, 1, 1)
        shift = torch.from_numpy(blobs[f"{name}_bn_b"]).view(1, -1, 1, 1)
        inputs = x[:, : scale.numel()] if scale.numel() <= 256 else torch.randn(2, scale.numel(), 3, 3)
        assert torch.equal(module(inputs), inputs * scale + shift), name


def test_msra_stride_mismatch_is_reported(tmp_path: Path) -> None:
    # a small bottleneck net, protocol 2 (Python 2 era files), no "blobs" wrapper
    path = _pickle(tmp_path / "R-14.pkl", random_values(msra_shapes(blocks=(1, 1, 1, 1))), protocol=2)
    report = load_backbone_weights(ResNet(block=Bottleneck, layers=(1, 1, 1, 1), stride_in_1x1=False), path)
    assert any(line.startswith("warning") and "stride_in_1x1=True" in line for line in report)


def test_c4_trunk_reports_the_unbuilt_stage_and_dcn_keeps_its_offsets(tmp_path: Path, r50_values) -> None:
    values = r50_values
    path = tmp_path / "resnet50.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in values.items()}}, path)
    c4 = ResNet(50, out_features=("res4",))
    report = load_backbone_weights(c4, path)
    layer4 = sum(1 for k in values if k.startswith("layer4.") and not k.endswith("num_batches_tracked"))
    assert any(f"unused (stages this backbone does not build): {layer4} tensors" in line for line in report)
    assert torch.equal(c4.layer3[5].conv2.weight, torch.from_numpy(values["layer3.5.conv2.weight"]))

    dcn = ResNet(50, freeze_at=0, norm="BN", deform_stages=(False, False, False, True))
    offsets_before = dcn.layer4[0].conv2.conv_offset.weight.clone()
    report = load_backbone_weights(dcn, path)
    assert any("kept their initialisation" in line for line in report)
    assert torch.equal(dcn.layer4[0].conv2.weight, torch.from_numpy(values["layer4.0.conv2.weight"]))
    assert torch.equal(dcn.layer4[0].conv2.conv_offset.weight, offsets_before)


def test_mismatched_weights_are_refused_and_nothing_loads(tmp_path: Path) -> None:
    small = dict(block=Bottleneck, layers=(1, 1, 1, 1))  # small bottleneck nets: same rules, less data
    values = random_values(torchvision_resnet_shapes(blocks=(1, 1, 2, 1)))  # one block more
    path = tmp_path / "deeper.pth"
    torch.save({k: torch.from_numpy(v) for k, v in values.items()}, path)
    backbone = ResNet(**small)
    before = backbone.conv1.weight.clone()
    with pytest.raises(CheckpointError, match="unexpected layer3.1"):
        load_backbone_weights(backbone, path)
    assert torch.equal(backbone.conv1.weight, before)

    resnext = random_values(torchvision_resnet_shapes(blocks=(1, 1, 1, 1), groups=32, width_per_group=4))
    torch.save({k: torch.from_numpy(v) for k, v in resnext.items()}, path)
    with pytest.raises(CheckpointError, match="shape"):
        load_backbone_weights(ResNet(**small), path)
    target = ResNet(**small, groups=32, width_per_group=4)  # the right architecture takes them
    load_backbone_weights(target, path)
    assert torch.equal(target.layer2[0].conv2.weight, torch.from_numpy(resnext["layer2.0.conv2.weight"]))


def test_detectron2_named_backbone(tmp_path: Path) -> None:
    values = random_values(torchvision_resnet_shapes(blocks=(2, 2, 2, 2)))
    renamed = {}
    for name, value in values.items():  # Detectron2's convert-torchvision-to-d2 naming
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        new = re.sub(r"^layer(\d)", lambda m: f"res{int(m[1]) + 1}", name)
        new = re.sub(r"^(conv1|bn1)\.", r"stem.\1.", new)
        new = re.sub(r"bn(\d)\.", r"conv\1.norm.", new)
        new = new.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        renamed[new] = (name, value)
    path = _pickle(tmp_path / "R-50-d2.pkl", {"model": {k: v for k, (_, v) in renamed.items()},
                                               "__author__": "torchvision", "matching_heuristics": True})
    state, fmt = read_backbone_weights(path)
    assert fmt == "detectron2" and len(state) == len(renamed)
    for new, (old, value) in renamed.items():
        assert torch.equal(state[old], torch.from_numpy(value)), new


def test_format_detection_and_unknown_layouts() -> None:
    assert detect_backbone_format({"conv1.weight": 0, "layer1.0.conv1.weight": 0}) == "torchvision"
    assert detect_backbone_format({"conv1_w": 0, "res2_0_branch2a_w": 0}) == "msra"
    assert detect_backbone_format({"stem.conv1.weight": 0, "res2.0.conv1.weight": 0}) == "detectron2"
    with pytest.raises(CheckpointError, match="unknown backbone weight layout"):
        detect_backbone_format({"encoder.weight": 0})
