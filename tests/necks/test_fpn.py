"""FPN: names, shapes (odd sizes too), extra levels, and a slow float64 reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from instaseg.layers.shape_spec import ShapeSpec
from instaseg.necks.fpn import FPN, rcnn_fpn, yolact_fpn


def _features(channels, strides, size, dtype=torch.float32, batch=1):
    h, w = size
    return [
        torch.randn(batch, c, math.ceil(h / s), math.ceil(w / s), dtype=dtype)
        for c, s in zip(channels, strides)
    ]


def _nearest_reference(x, size):
    """Nearest resize by loops: source index floor(i * in / out) (PyTorch's 'nearest')."""
    n, c, h, w = x.shape
    out = torch.empty(n, c, *size, dtype=x.dtype)
    for i in range(size[0]):
        for j in range(size[1]):
            out[:, :, i, j] = x[:, :, min(i * h // size[0], h - 1), min(j * w // size[1], w - 1)]
    return out


def _bilinear_reference(x, size):
    """Bilinear resize by loops, half-pixel centres (align_corners=False), edges clamped."""
    n, c, h, w = x.shape
    out = torch.empty(n, c, *size, dtype=x.dtype)

    def source(i, in_size, out_size):
        pos = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        lo = min(int(math.floor(pos)), in_size - 1)
        return lo, min(lo + 1, in_size - 1), pos - lo

    for i in range(size[0]):
        y0, y1, ly = source(i, h, size[0])
        for j in range(size[1]):
            x0, x1, lx = source(j, w, size[1])
            top = x[:, :, y0, x0] * (1 - lx) + x[:, :, y0, x1] * lx
            bottom = x[:, :, y1, x0] * (1 - lx) + x[:, :, y1, x1] * lx
            out[:, :, i, j] = top * (1 - ly) + bottom * ly
    return out


def _conv(x, layer, stride=1):
    return F.conv2d(x, layer.weight, layer.bias, stride=stride, padding=layer.kernel_size[0] // 2)


def _reference_fpn(fpn, features, upsample, relu_outputs, extra, extra_from, extra_relu):
    """FPN from the paper's description, using the module's weights; no norm."""
    merged = [None] * len(features)
    merged[-1] = _conv(features[-1], fpn.lateral_convs[-1])
    for i in range(len(features) - 2, -1, -1):
        lateral = _conv(features[i], fpn.lateral_convs[i])
        merged[i] = lateral + upsample(merged[i + 1], lateral.shape[-2:])
    outputs = [_conv(m, conv) for m, conv in zip(merged, fpn.output_convs)]
    if relu_outputs:
        outputs = [o.clamp(min=0) for o in outputs]
    if extra == "maxpool":
        outputs.append(outputs[-1][:, :, ::2, ::2])
    elif extra == "convs":
        x = features[-1] if extra_from == "input" else outputs[-1]
        for k, conv in enumerate(fpn.extra_convs):
            x = _conv(x.clamp(min=0) if (k > 0 and extra_relu) else x, conv, stride=2)
            outputs.append(x)
    return outputs


@pytest.mark.parametrize("size", [(64, 96), (65, 97)])
def test_rcnn_variant_names_shapes_and_p6(size):
    strides = [4, 8, 16, 32]
    fpn = FPN([8, 16, 24, 32], strides, 16, extra="maxpool")
    outputs = fpn(_features([8, 16, 24, 32], strides, size, batch=2))
    assert list(outputs) == ["p2", "p3", "p4", "p5", "p6"]
    expected_strides = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert fpn.output_shape() == {k: ShapeSpec(16, s) for k, s in expected_strides.items()}
    for name, stride in expected_strides.items():
        h, w = math.ceil(size[0] / stride), math.ceil(size[1] / stride)
        assert outputs[name].shape == (2, 16, h, w)
    torch.testing.assert_close(outputs["p6"], outputs["p5"][:, :, ::2, ::2], rtol=0, atol=0)


@pytest.mark.parametrize("size", [(64, 96), (65, 97), (33, 17)])
def test_rcnn_variant_matches_reference(size):
    strides = [4, 8, 16, 32]
    fpn = FPN([3, 5, 6, 4], strides, 4, extra="maxpool").double()
    features = _features([3, 5, 6, 4], strides, size, torch.float64)
    with torch.no_grad():
        outputs = list(fpn(features).values())
        expected = _reference_fpn(
            fpn, features, _nearest_reference, False, "maxpool", "output", False
        )
    assert len(outputs) == len(expected) == 5
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("size", [(64, 64), (65, 97)])
def test_yolact_variant_matches_reference(size):
    strides = [8, 16, 32]
    fpn = FPN(
        [6, 5, 4], strides, 4, extra="convs", num_extra=2, upsample_mode="bilinear",
        relu_outputs=True,
    ).double()
    features = _features([6, 5, 4], strides, size, torch.float64)
    with torch.no_grad():
        outputs = fpn(features)
        expected = _reference_fpn(
            fpn, features, _bilinear_reference, True, "convs", "output", False
        )
    assert list(outputs) == ["p3", "p4", "p5", "p6", "p7"]
    for out, ref in zip(outputs.values(), expected):
        torch.testing.assert_close(out, ref)
    assert (outputs["p5"] >= 0).all() and (outputs["p7"] < 0).any()  # no ReLU after extra convs


def test_retinanet_style_extra_from_input_with_relu():
    strides = [8, 16, 32]
    fpn = FPN(
        [6, 5, 7], strides, 4, extra="convs", num_extra=2, extra_from="input", extra_relu=True
    ).double()
    assert fpn.extra_convs[0].in_channels == 7 and fpn.extra_convs[1].in_channels == 4
    features = _features([6, 5, 7], strides, (40, 56), torch.float64)
    with torch.no_grad():
        outputs = list(fpn(features).values())
        expected = _reference_fpn(fpn, features, _nearest_reference, False, "convs", "input", True)
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref)


def test_full_size_presets():
    fpn = rcnn_fpn()
    assert list(fpn.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    in_channels = [256, 512, 1024, 2048]
    expected_params = sum(c * 256 + 256 for c in in_channels) + 4 * (256 * 256 * 9 + 256)
    assert sum(p.numel() for p in fpn.parameters()) == expected_params  # 3,344,384 (torchvision)
    yolact = yolact_fpn()
    assert yolact.output_shape() == {f"p{k}": ShapeSpec(256, 2**k) for k in range(3, 8)}
    assert yolact.upsample_mode == "bilinear" and yolact.relu_outputs
    assert len(yolact.extra_convs) == 2
    same = FPN([512, 1024, 2048], [8, 16, 32], 256, extra="convs", num_extra=2)
    assert set(same.state_dict()) == set(yolact.state_dict())


def test_state_dict_names_init_and_norm():
    fpn = FPN([8, 16], [8, 16], 32, extra="convs", num_extra=1)
    keys = set(fpn.state_dict())
    expected_keys = {
        "lateral_convs.0.weight",
        "lateral_convs.1.bias",
        "output_convs.1.weight",
        "extra_convs.0.weight",
        "extra_convs.0.bias",
    }
    assert expected_keys <= keys
    for conv in [*fpn.lateral_convs, *fpn.output_convs, *fpn.extra_convs]:
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= math.sqrt(3.0 / fan_in)  # kaiming uniform a=1
        assert torch.all(conv.bias == 0)
    normed = FPN([8, 16], [8, 16], 32, norm="GN")
    for conv in [*normed.lateral_convs, *normed.output_convs]:
        assert conv.bias is None and isinstance(conv.norm, torch.nn.GroupNorm)
    out = normed(_features([8, 16], [8, 16], (32, 48)))
    assert list(out) == ["p3", "p4", "p5"]


def test_extra_none_and_argument_errors():
    fpn = FPN([4, 4], [16, 32], 4, extra="none")
    assert list(fpn(_features([4, 4], [16, 32], (64, 64)))) == ["p4", "p5"]
    with pytest.raises(ValueError, match="equal length"):
        FPN([4, 4], [8], 4)
    with pytest.raises(ValueError, match="powers of two"):
        FPN([4, 4], [8, 12], 4)
    with pytest.raises(ValueError, match="increase"):
        FPN([4, 4], [16, 8], 4)
    with pytest.raises(ValueError, match="extra"):
        FPN([4], [8], 4, extra="pool")
    with pytest.raises(ValueError, match="upsample_mode"):
        FPN([4], [8], 4, upsample_mode="bicubic")
    with pytest.raises(ValueError, match="feature maps"):
        fpn(_features([4], [16], (64, 64)))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_gradcheck(mode):
    fpn = FPN([2, 3], [8, 16], 2, extra="convs", num_extra=1, upsample_mode=mode).double()
    features = [f.requires_grad_() for f in _features([2, 3], [8, 16], (40, 24), torch.float64)]

    def run(*inputs):
        return tuple(fpn(list(inputs)).values())

    assert torch.autograd.gradcheck(run, tuple(features))


@pytest.mark.parametrize("preset, factory, upsample, relu", [("mask_rcnn_r18_fpn_tiny", "rcnn_fpn", "nearest", False),
                                                             ("yolact_r18_tiny", "yolact_fpn", "bilinear", True)])
def test_the_model_builder_makes_its_fpn_with_the_family_factory(monkeypatch, preset, factory, upsample, relu):
    """One way to build each family's FPN: the factories tested above are the builder's."""
    from instaseg.detectors import build
    from instaseg.hub import build_model

    made = []
    original = getattr(build, factory)
    monkeypatch.setattr(build, factory, lambda *args, **kwargs: made.append(original(*args, **kwargs)) or made[-1])
    model = build_model(preset, num_classes=2)
    assert len(made) == 1 and model.neck is made[0]
    assert model.neck.upsample_mode == upsample and model.neck.relu_outputs == relu
