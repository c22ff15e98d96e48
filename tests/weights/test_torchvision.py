"""torchvision maskrcnn_resnet50_fpn -> instaseg: every tensor lands where it should, classes shift
by one with background moved last, FrozenBN eps is folded exactly, the round trip is exact.

The synthetic torchvision state dicts are generated here from torchvision's naming rules and
checked against the reference key list in ../shared/reference when that file is present.
Model-level parity with torchvision outputs cannot run here (torchvision does not import).
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest
import torch

from instaseg.cli.main import main as cli_main
from instaseg.errors import CheckpointError
from instaseg.hub import build_model, convert_torchvision_file, load_model
from instaseg.layers.norm import FrozenBatchNorm2d
from instaseg.weights.torchvision import (
    INSTASEG_BN_EPS,
    convert_torchvision_maskrcnn,
    to_torchvision_maskrcnn,
    unwrap_state_dict,
)

REFERENCE = Path(__file__).resolve().parents[3] / "shared/reference/torchvision_maskrcnn_resnet50_fpn_state_dict.txt"
BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


# ------------------------------------------------------------------ torchvision layout, from its rules
def torchvision_shapes(num_outputs: int = 91) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's maskrcnn_resnet50_fpn (v1) with ``num_outputs`` classes incl. bg."""
    shapes: dict[str, tuple[int, ...]] = {"backbone.body.conv1.weight": (64, 3, 7, 7)}
    shapes.update({f"backbone.body.bn1.{p}": (64,) for p in BN_PARAMS})
    in_channels = 64
    for stage, blocks in enumerate((3, 4, 6, 3), start=1):
        planes = 64 * 2 ** (stage - 1)
        for i in range(blocks):
            block = f"backbone.body.layer{stage}.{i}."
            shapes[block + "conv1.weight"] = (planes, in_channels, 1, 1)
            shapes[block + "conv2.weight"] = (planes, planes, 3, 3)
            shapes[block + "conv3.weight"] = (4 * planes, planes, 1, 1)
            for k, width in ((1, planes), (2, planes), (3, 4 * planes)):
                shapes.update({f"{block}bn{k}.{p}": (width,) for p in BN_PARAMS})
            if i == 0:
                shapes[block + "downsample.0.weight"] = (4 * planes, in_channels, 1, 1)
                shapes.update({f"{block}downsample.1.{p}": (4 * planes,) for p in BN_PARAMS})
            in_channels = 4 * planes
    for i, channels in enumerate((256, 512, 1024, 2048)):
        shapes[f"backbone.fpn.inner_blocks.{i}.0.weight"] = (256, channels, 1, 1)
        shapes[f"backbone.fpn.inner_blocks.{i}.0.bias"] = (256,)
    for i in range(4):
        shapes[f"backbone.fpn.layer_blocks.{i}.0.weight"] = (256, 256, 3, 3)
        shapes[f"backbone.fpn.layer_blocks.{i}.0.bias"] = (256,)
    for name, out, kernel in (("conv.0.0", 256, 3), ("cls_logits", 3, 1), ("bbox_pred", 12, 1)):
        shapes[f"rpn.head.{name}.weight"] = (out, 256, kernel, kernel)
        shapes[f"rpn.head.{name}.bias"] = (out,)
    for name, out, inp in (("fc6", 1024, 256 * 7 * 7), ("fc7", 1024, 1024)):
        shapes[f"roi_heads.box_head.{name}.weight"] = (out, inp)
        shapes[f"roi_heads.box_head.{name}.bias"] = (out,)
    shapes["roi_heads.box_predictor.cls_score.weight"] = (num_outputs, 1024)
    shapes["roi_heads.box_predictor.cls_score.bias"] = (num_outputs,)
    shapes["roi_heads.box_predictor.bbox_pred.weight"] = (4 * num_outputs, 1024)
    shapes["roi_heads.box_predictor.bbox_pred.bias"] = (4 * num_outputs,)
    for i in range(4):
        shapes[f"roi_heads.mask_head.{i}.0.weight"] = (256, 256, 3, 3)
        shapes[f"roi_heads.mask_head.{i}.0.bias"] = (256,)
    shapes["roi_heads.mask_predictor.conv5_mask.weight"] = (256, 256, 2, 2)
    shapes["roi_heads.mask_predictor.conv5_mask.bias"] = (256,)
    shapes["roi_heads.mask_predictor.mask_fcn_logits.weight"] = (num_outputs, 256, 1, 1)
    shapes["roi_heads.mask_predictor.mask_fcn_logits.bias"] = (num_outputs,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    state = {}
    for name, shape in shapes.items():
        value = torch.randn(shape)
        if name.endswith("running_var"):
            value = value.abs() * 0.5 + 1e-3  # positive; small ones make the eps fold matter
        state[name] = value
    return state


def expected_our_name(tv_name: str) -> str:
    """The instaseg name of a torchvision tensor, written independently of the converter."""
    table = [
        (r"backbone\.body\.(.*)", r"backbone.\1"),
        (r"backbone\.fpn\.inner_blocks\.(\d)\.0\.(\w+)", r"neck.lateral_convs.\1.\2"),
        (r"backbone\.fpn\.layer_blocks\.(\d)\.0\.(\w+)", r"neck.output_convs.\1.\2"),
        (r"rpn\.head\.conv\.0\.0\.(\w+)", r"rpn_head.conv.\1"),
        (r"rpn\.head\.cls_logits\.(\w+)", r"rpn_head.objectness_logits.\1"),
        (r"rpn\.head\.bbox_pred\.(\w+)", r"rpn_head.anchor_deltas.\1"),
        (r"roi_heads\.box_head\.fc6\.(\w+)", r"box_head.fcs.0.\1"),
        (r"roi_heads\.box_head\.fc7\.(\w+)", r"box_head.fcs.1.\1"),
        (r"roi_heads\.box_predictor\.(\w+)\.(\w+)", r"box_predictor.\1.\2"),
        (r"roi_heads\.mask_head\.(\d)\.0\.(\w+)", r"mask_head.convs.\1.\2"),
        (r"roi_heads\.mask_predictor\.conv5_mask\.(\w+)", r"mask_head.deconv.\1"),
        (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(\w+)", r"mask_head.predictor.\1"),
    ]
    for pattern, replacement in table:
        if re.fullmatch(pattern, tv_name):
            return re.sub(pattern, replacement, tv_name)
    raise AssertionError(tv_name)


def is_bn_weight(tv_name: str) -> bool:
    return tv_name.startswith("backbone.body.") and bool(re.search(r"(bn\d|downsample\.1)\.weight$", tv_name))


@pytest.fixture(scope="module")
def coco_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return random_state(torchvision_shapes(91))


@pytest.fixture(scope="module")
def converted(coco_state) -> tuple[dict[str, torch.Tensor], int]:
    """``coco_state`` converted with the eps ours uses, so no BN weight is rescaled."""
    return convert_torchvision_maskrcnn(coco_state, source_bn_eps=INSTASEG_BN_EPS)


@pytest.fixture(scope="module")
def model_keys_90() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_model("mask_rcnn_r50_fpn_torchvision", num_classes=90)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------- tests
@pytest.mark.skipif(not REFERENCE.is_file(), reason="shared reference key list not available")
def test_generated_layout_matches_reference_file() -> None:
    listed = {}
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape, _dtype = line.split("\t")
        listed[name] = tuple(int(v) for v in re.findall(r"\d+", shape))
    assert listed == torchvision_shapes(91)


def test_every_tensor_lands_where_it_should(coco_state, converted, model_keys_90) -> None:
    ours, num_classes = converted
    assert num_classes == 90
    # nothing missing, nothing unused, every shape as the built model wants it
    assert {k: tuple(v.shape) for k, v in ours.items()} == model_keys_90
    for tv_name, value in coco_state.items():
        new = expected_our_name(tv_name)
        if tv_name.endswith(("cls_score.weight", "cls_score.bias")):
            for k in range(90):  # our label k == torchvision label k + 1
                assert torch.equal(ours[new][k], value[k + 1])
            assert torch.equal(ours[new][90], value[0])  # background last
        elif "bbox_pred" in tv_name and "roi_heads" in tv_name:
            for k in range(90):
                assert torch.equal(ours[new][4 * k:4 * k + 4], value[4 * (k + 1):4 * (k + 2)])
        elif "mask_fcn_logits" in tv_name:
            for k in range(90):
                assert torch.equal(ours[new][k], value[k + 1])
        else:
            assert torch.equal(ours[new], value), tv_name


def _frozen_bn_reference(x: torch.Tensor, weight, bias, mean, var, eps: float) -> torch.Tensor:
    out = torch.empty_like(x, dtype=torch.float64)
    for c in range(x.shape[1]):
        scale = float(weight[c]) / (float(var[c]) + eps) ** 0.5
        out[:, c] = (x[:, c].double() - float(mean[c])) * scale + float(bias[c])
    return out


def test_frozen_bn_eps_is_folded_exactly(coco_state) -> None:
    layers = ("bn1", "layer3.5.bn2", "layer1.0.downsample.1")
    state = dict(coco_state)
    for layer in layers:  # tiny variances, where eps 1e-5 vs 0 matters most
        var = state[f"backbone.body.{layer}.running_var"].clone()
        var[:3] = torch.tensor([1e-7, 1e-6, 3e-5])
        state[f"backbone.body.{layer}.running_var"] = var
    ours, _ = convert_torchvision_maskrcnn(state, source_bn_eps=0.0)
    for layer in layers:
        tv = {p.replace("running_", ""): state[f"backbone.body.{layer}.{p}"] for p in BN_PARAMS}
        bn = FrozenBatchNorm2d(tv["weight"].numel())
        assert bn.eps == INSTASEG_BN_EPS  # the eps the converter folds towards
        bn.load_state_dict({p: ours[f"backbone.{layer}.{p}"] for p in BN_PARAMS})
        x = torch.randn(2, tv["weight"].numel(), 3, 3)
        expected = _frozen_bn_reference(x, **tv, eps=0.0)  # torchvision COCO_V1 runs with eps 0
        torch.testing.assert_close(bn(x).double(), expected, rtol=2e-6, atol=1e-5)
        naive = _frozen_bn_reference(x, **tv, eps=1e-5)
        assert (naive - expected).abs().max() > 1e-2  # without the fold the first channels are off


def test_built_models_use_the_eps_the_converter_assumes() -> None:
    with torch.device("meta"):
        model = build_model("mask_rcnn_r50_fpn_torchvision", num_classes=2)
    eps = {m.eps for m in model.modules() if isinstance(m, FrozenBatchNorm2d)}
    assert eps == {INSTASEG_BN_EPS}


@pytest.mark.parametrize("eps", [INSTASEG_BN_EPS, 0.0])
def test_round_trip_reproduces_the_torchvision_dict(coco_state, eps: float) -> None:
    ours, num_classes = convert_torchvision_maskrcnn(coco_state, source_bn_eps=eps)
    back = to_torchvision_maskrcnn(ours, num_classes, target_bn_eps=eps)
    assert set(back) == set(coco_state)
    for name, value in coco_state.items():
        if "bbox_pred" in name and "roi_heads" in name:  # background deltas are not kept: zeros
            assert torch.equal(back[name][4:], value[4:]) and not back[name][:4].any()
        elif "mask_fcn_logits" in name:
            assert torch.equal(back[name][1:], value[1:]) and not back[name][:1].any()
        elif is_bn_weight(name) and eps != INSTASEG_BN_EPS:  # scaled there and back in float64
            torch.testing.assert_close(back[name], value, rtol=3e-7, atol=0)
        else:
            assert torch.equal(back[name], value), name


def test_legacy_names_and_step_counters(coco_state, converted) -> None:
    legacy = {}
    for name, value in coco_state.items():
        name = name.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        name = re.sub(r"roi_heads\.mask_head\.(\d)\.0\.",
                      lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.", name)
        legacy[name] = value
    assert "roi_heads.mask_head.mask_fcn4.bias" in legacy and "rpn.head.conv.weight" in legacy
    legacy["backbone.body.bn1.num_batches_tracked"] = torch.tensor(5)
    ours, _ = convert_torchvision_maskrcnn(legacy, source_bn_eps=INSTASEG_BN_EPS)
    expected, _ = converted
    assert set(ours) == set(expected) and all(torch.equal(ours[k], expected[k]) for k in ours)


def test_unknown_keys_are_errors(coco_state) -> None:
    with pytest.raises(CheckpointError, match="unknown torchvision keys"):
        convert_torchvision_maskrcnn({**coco_state, "roi_heads.keypoint_head.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="cls_score"):
        convert_torchvision_maskrcnn({"backbone.body.conv1.weight": torch.zeros(1)})


def test_unwrap_state_dict() -> None:
    state = {"a.weight": torch.zeros(2)}
    for payload in (state, {"model": state, "epoch": 3}, {"state_dict": state}):
        assert unwrap_state_dict(payload) == state
    with pytest.raises(CheckpointError):
        unwrap_state_dict([1, 2])


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cli_end_to_end(tmp_path: Path, coco_state, capsys) -> None:
    state = dict(coco_state)  # a fine-tuned checkpoint: 2 + 1 outputs
    for name, shape in torchvision_shapes(3).items():
        if "predictor" in name:
            state[name] = torch.randn(shape)
    src, dst = tmp_path / "maskrcnn.pth", tmp_path / "converted.pth"
    # torchvision's reference train.py layout, with its argparse.Namespace under "args"
    torch.save({"model": state, "epoch": 25, "args": argparse.Namespace(lr=0.02)}, src)
    assert cli_main(["convert", "--from", "torchvision", str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "R-50-FPN" in printed and "num_classes: 2" in printed and f"{len(state)} tensors" in printed
    model, config = load_model(dst)  # built from the stored config, loaded strictly
    assert config.name == "mask_rcnn_r50_fpn_torchvision" and config.model.num_classes == 2
    assert not config.model.box_head.aligned and config.model.box_head.sampling_ratio == 2
    expected, _ = convert_torchvision_maskrcnn(state)  # default: COCO eps 0
    loaded = model.state_dict()
    assert set(loaded) == set(expected) and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert torch.equal(loaded["box_predictor.cls_score.weight"][-1],
                       state["roi_heads.box_predictor.cls_score.weight"][0])


def test_cli_refuses_bad_inputs(tmp_path: Path, coco_state, capsys) -> None:
    marker, src = tmp_path / "marker", tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": _Evil(marker)}, src)
    assert cli_main(["convert", "--from", "torchvision", str(src), str(tmp_path / "e.pth")]) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()

    partial = tmp_path / "partial.pth"  # a truncated state dict must not produce a checkpoint
    torch.save({"state_dict": {k: coco_state[k] for k in list(coco_state)[:5]}}, partial)
    with pytest.raises(CheckpointError):
        convert_torchvision_file(partial, tmp_path / "bad.pth")
    assert not (tmp_path / "bad.pth").exists()

    assert cli_main(["convert", "--from", "yolact", str(src), str(tmp_path / "y.pth")]) == 2
    assert "refused to load" in capsys.readouterr().err  # the YOLACT converter reads files as safely
