"""int8 inference of the trunk and FPN: each quantized convolution against a float64 reference,
the whole int8 backbone + FPN against float32, and what it refuses."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instaseg.backbones.resnet import ResNet
from instaseg.engine.int8 import (Int8Conv, Int8FPN, Int8ResNet, QuantAdd, QuantConv, QuantInput, Float32Block,
                                  convert_calibrated, is_int8, quantize_int8, quantize_weight)
from instaseg.errors import ConfigError
from instaseg.hub.bench import build_bench_model
from instaseg.layers.deform import ModulatedDeformConv2d
from instaseg.layers.norm import FrozenBatchNorm2d
from instaseg.structures.boxes import box_iou

pytestmark = pytest.mark.skipif("x86" not in torch.backends.quantized.supported_engines,
                                reason="no x86 quantized kernels in this PyTorch build")


@pytest.fixture(autouse=True)
def _x86_engine():
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield
    torch.backends.quantized.engine = before


def _frozen_norm(channels: int, generator: torch.Generator) -> FrozenBatchNorm2d:
    norm = FrozenBatchNorm2d(channels)
    norm.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
    norm.bias.copy_(torch.randn(channels, generator=generator) * 0.1)
    norm.running_mean.copy_(torch.randn(channels, generator=generator) * 0.1)
    norm.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    return norm


def test_weights_are_int8_symmetric_with_one_scale_per_output_channel():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 4, 3, 3, generator=generator) * torch.tensor([0.01, 0.1, 1, 2, 5, 50]).view(-1, 1, 1, 1)
    quantized = quantize_weight(weight)
    assert quantized.dtype == torch.qint8  # symmetric: every zero point 0
    assert quantized.q_per_channel_axis() == 0 and (quantized.q_per_channel_zero_points() == 0).all()
    for channel in range(6):  # loop reference: scale = max |w| / 127.5, error at most half a step
        scale = weight[channel].abs().max().double() / 127.5
        assert quantized.q_per_channel_scales()[channel].item() == pytest.approx(scale.item(), rel=1e-6)
        error = (quantized.dequantize()[channel].double() - weight[channel].double()).abs().max()
        assert error <= scale / 2 * (1 + 1e-4)  # the largest weight, at 127.5 steps, is clamped to 127


@pytest.mark.parametrize("relu, stride, groups", [(True, 1, 1), (False, 2, 1), (True, 1, 4)])
def test_a_quantized_conv_computes_what_float64_gives_on_the_same_integers(relu, stride, groups):
    generator = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(8, 16, 3, stride=stride, padding=1, groups=groups, bias=False)
    nn.init.normal_(conv.weight, std=0.2, generator=generator)
    norm = _frozen_norm(16, generator)
    x = torch.randn(2, 8, 13, 11, generator=generator)  # odd sizes: padding and the stride's rounding
    layer, quantize_input = QuantConv(conv, norm, relu=relu), QuantInput()
    with torch.inference_mode():
        layer(quantize_input(x))  # calibration
        convert_calibrated(layer), convert_calibrated(quantize_input)
        qx = quantize_input(x)
        out = layer(qx)
    assert out.dtype == torch.quint8
    assert layer.conv is None  # the float32 copy is dropped once converted
    # The reference: the norm folded into the conv in float64, its weights quantized per channel, the
    # conv of the dequantized input in float64, the ReLU, rounded to the output's scale and zero point.
    norm_scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    folded_weight = conv.weight.detach().double() * norm_scale.view(-1, 1, 1, 1)
    folded_bias = norm.bias.double() - norm.running_mean.double() * norm_scale
    qweight = quantize_weight(folded_weight.float())
    expected = F.conv2d(qx.dequantize().double(), qweight.dequantize().double(), folded_bias,
                        stride=stride, padding=1, groups=groups)
    if relu:
        expected = expected.clamp(min=0)
    scale, zero_point = out.q_scale(), out.q_zero_point()
    expected_int = torch.clamp(torch.round(expected / scale) + zero_point, 0, 255)
    difference = (out.int_repr().double() - expected_int).abs()
    assert difference.max() <= 1  # requantization rounds once in float32
    assert (difference > 0).double().mean() < 0.02


def test_a_head_conv_in_int8_takes_float_maps_and_an_empty_batch_of_rois():
    generator = torch.Generator().manual_seed(6)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    nn.init.normal_(conv.weight, std=0.2, generator=generator)
    x = torch.randn(5, 8, 14, 14, generator=generator)
    layer = Int8Conv(conv, relu=True)
    with torch.inference_mode():
        layer(x)
        convert_calibrated(layer)
        out, empty, expected = layer(x), layer(x[:0]), F.relu(conv(x))
    assert out.dtype == torch.float32 and (out - expected).norm() / expected.norm() < 0.03
    assert empty.shape == (0, 8, 14, 14) and empty.dtype == torch.float32


def test_the_quantized_residual_add_matches_the_float_sum():
    generator = torch.Generator().manual_seed(2)
    a, b = torch.randn(1, 4, 5, 7, generator=generator), torch.randn(1, 4, 5, 7, generator=generator)
    add, qa, qb = QuantAdd(relu=True), QuantInput(), QuantInput()
    add(qa(a), qb(b))
    for point in (add, qa, qb):
        convert_calibrated(point)
    out = add(qa(a), qb(b))
    expected = (qa(a).dequantize().double() + qb(b).dequantize().double()).clamp(min=0)
    assert (out.dequantize().double() - expected).abs().max() <= out.q_scale() * 0.5 + 1e-6


def _tiny(preset: str = "mask_rcnn_r18_fpn_tiny") -> nn.Module:
    torch.manual_seed(0)
    model, _, _ = build_bench_model(preset, size=144)
    return model.eval()


@pytest.mark.parametrize("preset", ["mask_rcnn_r18_fpn_tiny", "yolact_r18_tiny"])  # nearest / bilinear, extra convs
def test_the_int8_backbone_and_fpn_follow_float32(preset):
    model = _tiny(preset)
    generator = torch.Generator().manual_seed(3)
    calibration, x = torch.randn(2, 3, 96, 136, generator=generator), torch.randn(1, 3, 99, 131, generator=generator)
    with torch.inference_mode():
        expected = model.neck(list(model.backbone(x).values()))
        backbone, neck = Int8ResNet(model.backbone), Int8FPN(model.neck)
        neck(list(backbone(calibration).values()))
        convert_calibrated(backbone), convert_calibrated(neck)
        features = backbone(x)
        out = neck(list(features.values()))
    assert all(value.dtype == torch.quint8 for value in features.values())
    assert list(out) == list(expected)
    for name in expected:
        assert out[name].dtype == torch.float32 and out[name].shape == expected[name].shape
        relative = (out[name] - expected[name]).norm() / expected[name].norm()
        assert relative < 0.1, (name, relative.item())  # measured 0.05-0.07 on this model


def test_a_c4_trunk_gives_float_maps():
    torch.manual_seed(0)
    trunk = ResNet(18, out_features=("res4",)).eval()
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, 70, 90, generator=generator)
    int8 = Int8ResNet(trunk, float_outputs=True)
    with torch.inference_mode():
        int8(x)
        convert_calibrated(int8)
        out, expected = int8(x)["res4"], trunk(x)["res4"]
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert (out - expected).norm() / expected.norm() < 0.1


def test_quantize_int8_predicts_close_to_float32_and_keeps_the_rest_float():
    model = _tiny()
    reference = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(4)
    images = [torch.rand(3, 96, 128, generator=generator) * 255 for _ in range(3)]
    quantize_int8(model, images[:2])
    assert is_int8(model) and not is_int8(reference)
    assert isinstance(model.backbone, Int8ResNet) and isinstance(model.neck, Int8FPN)
    assert isinstance(model.rpn_head.conv, Int8Conv) and all(isinstance(c, Int8Conv) for c in model.mask_head.convs)
    assert model.box_head.state_dict().keys() == reference.box_head.state_dict().keys()  # float32
    assert type(model.mask_head.predictor) is nn.Conv2d and type(model.rpn_head.objectness_logits) is nn.Conv2d
    with torch.inference_mode():
        ours, theirs = model.predict(images[2:])[0], reference.predict(images[2:])[0]
    # random weights, so near-equal scores: most of the top boxes are found again, the scores barely move
    assert len(ours) > 0
    found = box_iou(ours.boxes[:10], theirs.boxes).max(dim=1).values > 0.9
    assert found.sum() >= 6, found  # measured 7 of 10
    assert torch.allclose(ours.scores[:5], theirs.scores[:5], atol=0.01)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_int8(model, images)
    trunk_only = quantize_int8(copy.deepcopy(reference), images[:2], heads=False)
    assert isinstance(trunk_only.neck, Int8FPN) and type(trunk_only.rpn_head.conv) is nn.Conv2d


def test_head_convolutions_that_calibration_never_ran_stay_float32_with_a_warning():
    model = _tiny()
    mask_convs = list(model.mask_head.convs)
    with torch.no_grad():  # every class scores 0 (above the threshold 0: nothing): the mask head never runs
        model.box_predictor.cls_score.bias[:-1] = -1e4
    with pytest.warns(UserWarning, match="4 head convolution"):
        quantize_int8(model, [torch.rand(3, 64, 64) * 255])
    assert list(model.mask_head.convs) == mask_convs and isinstance(model.rpn_head.conv, Int8Conv)


def test_yolact_pp_keeps_its_deformable_blocks_float32_between_int8_ones():
    model = _tiny("yolact_pp_r18_tiny")
    reference = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(7)
    images = [torch.rand(3, 96, 96, generator=generator) * 255 for _ in range(3)]
    quantize_int8(model, images[:2])
    blocks = [block for stage in model.backbone.stages for block in stage]
    deformable = [block for block in blocks if isinstance(block, Float32Block)]
    assert deformable and len(deformable) < len(blocks)
    assert all(isinstance(block.block.conv2, ModulatedDeformConv2d) for block in deformable)
    assert isinstance(model.prediction_head.upfeature, Int8Conv) and isinstance(model.protonet.post_conv, Int8Conv)
    assert type(model.prediction_head.conf_layer) is nn.Conv2d  # the predictors stay float32
    x = torch.randn(1, 3, 96, 96, generator=generator)
    with torch.inference_mode():
        expected = reference.neck(list(reference.backbone(x).values()))
        out = model.neck(list(model.backbone(x).values()))
        assert len(model.predict(images[2:])[0]) > 0
    for name in expected:
        assert (out[name] - expected[name]).norm() / expected[name].norm() < 0.1, name


def test_what_has_no_int8_form_is_refused_and_a_failed_calibration_leaves_the_model_as_it_was():
    model = _tiny()
    backbone, rpn_conv = model.backbone, model.rpn_head.conv
    with pytest.raises(RuntimeError):
        quantize_int8(model, [torch.rand(2, 64, 64)])  # two channels: the model's normalisation fails
    assert model.backbone is backbone and model.rpn_head.conv is rpn_conv and not is_int8(model)
    with pytest.raises(ConfigError, match="at least one image"):
        quantize_int8(model, [])
    with pytest.raises(ConfigError, match="GroupNorm"):
        QuantConv(nn.Conv2d(4, 4, 3), nn.GroupNorm(2, 4))
    with pytest.raises(ConfigError, match="no int8 kernel"):
        QuantConv(ModulatedDeformConv2d(4, 4, 3, padding=1))
