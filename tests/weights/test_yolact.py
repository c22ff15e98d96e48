"""YOLACT converter against synthetic state dicts with dbolya/yolact's exact key names and shapes.

``reference_yolact_state`` rebuilds the reference's state dict from its module tree, written out
here from dbolya/yolact (not from the converter's table):

* ``backbone.py``: ``ResNetBackbone(layers, dcn_layers, dcn_interval)`` with ``conv1``/``bn1`` and
  ``layers`` (an ``nn.ModuleList`` of stages of ``Bottleneck``: conv1/bn1/conv2/bn2/conv3/bn3 and
  ``downsample = Sequential(conv, bn)`` on the first block); ``nn.BatchNorm2d`` everywhere (so
  ``num_batches_tracked``); a block is DCN when ``dcn_layers >= blocks`` (first block) or
  ``i + dcn_layers >= blocks and i % dcn_interval == 0``; ``DCN`` has ``weight``, ``bias`` and
  ``conv_offset_mask`` (``3 * 3 * 3`` channels).
* ``data/config.py``: yolact_base = R-101 ``[3, 4, 23, 3]``; yolact_resnet50 = R-50 ``[3, 4, 6, 3]``;
  yolact_plus_base = R-101 with ``dcn_layers [0, 4, 23, 3]``, interval 3; yolact_plus_resnet50 =
  R-50 with ``[0, 4, 6, 3]``, interval 1; 3 aspect ratios x 1 scale (YOLACT) or x 3 (YOLACT++);
  ``mask_proto_net = [(256, 3)] * 3 + [(None, -2), (256, 3), (32, 1)]``; ``extra_head_net =
  [(256, 3)]``; ``maskiou_net = [(8, 3), (16, 3), (32, 3), (64, 3), (128, 3)]`` plus ``(C - 1, 1)``.
* ``yolact.py``: ``fpn.lat_layers`` over reversed in_channels, ``fpn.pred_layers``,
  ``fpn.downsample_layers`` (2); ``make_net`` appends a ReLU after every layer, so conv indices
  step by 2; ``semantic_seg_conv`` (C - 1 outputs); ``maskiou_net.maskiou_net``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from instaseg.detectors.build import build_from_config
from instaseg.errors import CheckpointError
from instaseg.weights.yolact import convert_yolact_state_dict, yolact_config_for

_RESNET = {"r50": [3, 4, 6, 3], "r101": [3, 4, 23, 3]}
# (dcn_layers, dcn_interval) of the reference's backbones; (0,)*4 = no DCN.
_DCN = {("r50", False): ([0, 0, 0, 0], 1), ("r101", False): ([0, 0, 0, 0], 1),
        ("r50", True): ([0, 4, 6, 3], 1), ("r101", True): ([0, 4, 23, 3], 3)}
_PROTO_NET = [(256, 3), (256, 3), (256, 3), (None, -2), (256, 3), (32, 1)]
_MASKIOU_NET = [(8, 3), (16, 3), (32, 3), (64, 3), (128, 3)]
CASES = [("r101", False, "yolact_r101_550"), ("r50", False, "yolact_r50_550"),
         ("r101", True, "yolact_pp_r101_550"), ("r50", True, "yolact_pp_r50_550")]


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,), f"{prefix}.running_mean": (channels,),
            f"{prefix}.running_var": (channels,), f"{prefix}.num_batches_tracked": ()}


def _make_net(prefix: str, in_channels: int, layers: list[tuple[int | None, int]]) -> dict[str, tuple[int, ...]]:
    """Keys of the reference's ``make_net``: [layer, ReLU] per entry; interpolations hold nothing."""
    shapes = {}
    for i, (out_channels, kernel) in enumerate(layers):
        if kernel > 0:
            shapes[f"{prefix}.{2 * i}.weight"] = (out_channels, in_channels, kernel, kernel)
            shapes[f"{prefix}.{2 * i}.bias"] = (out_channels,)
            in_channels = out_channels
    return shapes


def _backbone(depth: str, plus: bool) -> dict[str, tuple[int, ...]]:
    dcn_layers, interval = _DCN[(depth, plus)]
    shapes = {"backbone.conv1.weight": (64, 3, 7, 7), **_bn("backbone.bn1", 64)}
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), _RESNET[depth])):
        for j in range(blocks):
            dcn = dcn_layers[stage] >= blocks if j == 0 else (j + dcn_layers[stage] >= blocks and j % interval == 0)
            p = f"backbone.layers.{stage}.{j}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes if j == 0 else planes * 4, 1, 1)
            shapes.update(_bn(f"{p}.bn1", planes))
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            if dcn:
                shapes[f"{p}.conv2.bias"] = (planes,)
                shapes[f"{p}.conv2.conv_offset_mask.weight"] = (27, planes, 3, 3)
                shapes[f"{p}.conv2.conv_offset_mask.bias"] = (27,)
            shapes.update(_bn(f"{p}.bn2", planes))
            shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            shapes.update(_bn(f"{p}.bn3", planes * 4))
            if j == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                shapes.update(_bn(f"{p}.downsample.1", planes * 4))
        inplanes = planes * 4
    return shapes


def reference_yolact_shapes(depth: str, plus: bool, num_classes: int = 81) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a dbolya/yolact state dict (``num_classes`` counts background, as there)."""
    shapes = _backbone(depth, plus)
    for i, c in enumerate(reversed([512, 1024, 2048])):
        shapes[f"fpn.lat_layers.{i}.weight"], shapes[f"fpn.lat_layers.{i}.bias"] = (256, c, 1, 1), (256,)
    for kind, count in (("pred_layers", 3), ("downsample_layers", 2)):
        for i in range(count):
            shapes[f"fpn.{kind}.{i}.weight"], shapes[f"fpn.{kind}.{i}.bias"] = (256, 256, 3, 3), (256,)
    shapes.update(_make_net("proto_net", 256, _PROTO_NET))
    num_priors = 3 * (3 if plus else 1)  # aspect ratios x scales per level
    shapes.update(_make_net("prediction_layers.0.upfeature", 256, [(256, 3)]))
    for name, per_prior in (("bbox_layer", 4), ("conf_layer", num_classes), ("mask_layer", 32)):
        shapes[f"prediction_layers.0.{name}.weight"] = (num_priors * per_prior, 256, 3, 3)
        shapes[f"prediction_layers.0.{name}.bias"] = (num_priors * per_prior,)
    shapes["semantic_seg_conv.weight"], shapes["semantic_seg_conv.bias"] = (num_classes - 1, 256, 1, 1), (num_classes - 1,)
    if plus:
        shapes.update(_make_net("maskiou_net.maskiou_net", 1, _MASKIOU_NET + [(num_classes - 1, 1)]))
    return shapes


def reference_yolact_state(depth: str, plus: bool, num_classes: int = 81,
                           device: str = "cpu") -> dict[str, torch.Tensor]:
    """Random tensors under the reference's names (``num_batches_tracked`` int64, variances > 0).

    Conv weights are scaled by ``1 / sqrt(fan_in)`` and vectors by 0.1 so that a model holding
    them runs without overflowing (the CLI test predicts with them).
    """
    state = {}
    for key, shape in reference_yolact_shapes(depth, plus, num_classes).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(800000, device=device)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, device=device) + 0.5
        elif len(shape) == 4:
            state[key] = torch.randn(shape, device=device) / (shape[1] * shape[2] * shape[3]) ** 0.5
        else:
            state[key] = torch.randn(shape, device=device) * 0.1
    return state


@pytest.mark.parametrize("depth, plus, preset", CASES)
def test_reference_keys_and_shapes_map_onto_our_model(depth: str, plus: bool, preset: str) -> None:
    """Every reference tensor lands on a parameter of the matching preset with the same shape."""
    ref = reference_yolact_state(depth, plus, device="meta")
    config = yolact_config_for(ref)
    assert config.name == preset and config.model.num_classes == 80
    ours, notes = convert_yolact_state_dict(ref)
    with torch.device("meta"):
        model = build_from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    counters = sum(k.endswith("num_batches_tracked") for k in ref)
    dcn = sum(k.endswith("conv_offset_mask.weight") for k in ref)
    # Only the BN counters and the (folded) DCN biases have no tensor of their own.
    assert len(ours) == len(ref) - counters - dcn
    assert dcn == {"r101": 11, "r50": 13}[depth] * plus  # DCN blocks: interval 3, every block
    assert not any("dropped" in n and "keys" in n for n in notes)


def test_values_land_in_place_and_dcn_bias_is_folded() -> None:
    ref = reference_yolact_state("r50", True, num_classes=4)  # 3 classes + background
    config = yolact_config_for(ref)
    assert config.name == "yolact_pp_r50_550" and config.model.num_classes == 3
    model = build_from_config(config).eval()
    ours, _ = convert_yolact_state_dict(ref)
    model.load_state_dict(ours, strict=True)
    conf, converted = ref["prediction_layers.0.conf_layer.weight"], model.prediction_head.conf_layer.weight
    for a in range(9):  # per anchor: reference [bg, c0, c1, c2] -> ours [c0, c1, c2, bg]
        assert torch.equal(converted[a * 4 + 3], conf[a * 4])
        for c in range(3):
            assert torch.equal(converted[a * 4 + c], conf[a * 4 + 1 + c])
    assert torch.equal(model.neck.lateral_convs[2].weight, ref["fpn.lat_layers.0.weight"])  # C5 first there
    assert torch.equal(model.neck.output_convs[0].weight, ref["fpn.pred_layers.2.weight"])
    assert torch.equal(model.neck.extra_convs[1].weight, ref["fpn.downsample_layers.1.weight"])
    assert torch.equal(model.protonet.post_conv.weight, ref["proto_net.8.weight"])
    assert torch.equal(model.protonet.out_conv.weight, ref["proto_net.10.weight"])
    assert torch.equal(model.prediction_head.upfeature.weight, ref["prediction_layers.0.upfeature.0.weight"])
    assert torch.equal(model.semantic_head.conv.weight, ref["semantic_seg_conv.weight"])
    assert torch.equal(model.rescoring_head.convs[5].weight, ref["maskiou_net.maskiou_net.10.weight"])
    block = model.backbone.layer3[1]
    assert torch.equal(block.conv2.conv_offset.weight, ref["backbone.layers.2.1.conv2.conv_offset_mask.weight"])
    # DCN bias b before BN: BN(x + b) with mean m equals BN(x) with mean m - b.
    bias, mean = ref["backbone.layers.2.1.conv2.bias"], ref["backbone.layers.2.1.bn2.running_mean"]
    torch.testing.assert_close(block.bn2.running_mean, mean - bias)
    x = torch.randn(2, block.conv2.out_channels, 3, 3)
    bn = torch.nn.BatchNorm2d(x.shape[1]).eval()
    bn.load_state_dict({"weight": ref["backbone.layers.2.1.bn2.weight"], "bias": ref["backbone.layers.2.1.bn2.bias"],
                        "running_mean": mean, "running_var": ref["backbone.layers.2.1.bn2.running_var"]},
                       strict=False)
    torch.testing.assert_close(block.bn2(x), bn(x + bias[None, :, None, None]), rtol=1e-5, atol=1e-5)


def test_config_detection_from_key_names_and_file_name() -> None:
    base = reference_yolact_state("r101", False, device="meta")
    assert yolact_config_for(base).name == "yolact_r101_550"
    assert yolact_config_for(base, "weights/yolact_im700_54_800000.pth").name == "yolact_r101_700"
    assert yolact_config_for(base, "yolact_im400_53_700000.pth").name == "yolact_r101_400"
    plus = reference_yolact_state("r101", True, num_classes=21, device="meta")
    assert yolact_config_for(plus, "yolact_plus_base_54_800000.pth").name == "yolact_pp_r101_550"
    assert yolact_config_for(plus).model.num_classes == 20


def test_not_a_yolact_file_is_a_clear_error() -> None:
    with pytest.raises(CheckpointError, match="not a YOLACT"):
        convert_yolact_state_dict({"backbone.conv1.weight": torch.zeros(1)})
    darknet_like = {f"backbone.layers.2.{j}.0.weight": torch.zeros(1) for j in range(8)}
    with pytest.raises(CheckpointError, match="res4 blocks"):
        yolact_config_for(darknet_like)


def test_a_wrong_preset_fails_loudly() -> None:
    """YOLACT++ R-50 weights into the R-101 interval-3 layout: the strict load must refuse."""
    ref = reference_yolact_state("r50", True, device="meta")
    ours, _ = convert_yolact_state_dict(ref)
    config = yolact_config_for(ref)
    wrong = replace(config, model=replace(config.model, backbone=replace(config.model.backbone, deform_interval=3)))
    with torch.device("meta"):
        model = build_from_config(wrong)
    with pytest.raises(RuntimeError):
        model.load_state_dict(ours, strict=True)
