"""ResNet / ResNeXt backbones: architecture, parameter counts, torchvision keys, freezing, DCN."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instaseg.backbones.resnet import (
    RESNET_PRESETS,
    BasicBlock,
    Bottleneck,
    ResNet,
    build_resnet,
    make_stage,
    resnet18,
    resnet50,
    resnet101,
)
from instaseg.layers.norm import FrozenBatchNorm2d
from instaseg.layers.shape_spec import ShapeSpec

REFERENCE = Path(__file__).resolve().parents[3] / "shared/reference"
TORCHVISION_KEYS = REFERENCE / "torchvision_maskrcnn_resnet50_fpn_state_dict.txt"

# He et al. 2016 Table 1 and Xie et al. 2017 Table 1: block type, blocks per stage, groups, width.
ARCHITECTURES = {
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 4),
    "resnext101_32x4d": ("bottleneck", (3, 4, 23, 3), 32, 4),
    "resnext101_32x8d": ("bottleneck", (3, 4, 23, 3), 32, 8),
    "resnext101_64x4d": ("bottleneck", (3, 4, 23, 3), 64, 4),
}
# Well-known torchvision totals minus the 1000-class fc layer (2048*1000+1000 or 512*1000+1000).
PUBLISHED_TOTALS = {
    "resnet18": 11_176_512,
    "resnet34": 21_284_672,
    "resnet50": 23_508_032,
    "resnet101": 42_500_160,
    "resnet152": 58_143_808,
    "resnext50_32x4d": 22_979_904,
    # torchvision publishes no 32x4d; this is the formula's count (about the 44.2 M timm lists with its fc)
    "resnext101_32x4d": 42_128_704,
    "resnext101_32x8d": 86_742_336,
    "resnext101_64x4d": 81_406_272,  # torchvision's ResNeXt101_64X4D num_params 83,455,272 minus the fc
}


def _count_by_formula(kind, blocks, groups, width_per_group):
    """Sum conv weights (no bias) and norm (gamma, beta) parameters from the architecture table."""

    def conv(cin, cout, k, g=1):
        return cin // g * cout * k * k

    def norm(c):
        return 2 * c

    total = conv(3, 64, 7) + norm(64)  # stem
    cin = 64
    for stage, num_blocks in enumerate(blocks):
        planes = 64 * 2**stage
        for index in range(num_blocks):
            if kind == "basic":
                cout = planes
                total += conv(cin, planes, 3) + norm(planes)
                total += conv(planes, planes, 3) + norm(planes)
            else:
                width = planes * width_per_group // 64 * groups
                cout = 4 * planes
                total += conv(cin, width, 1) + norm(width)
                total += conv(width, width, 3, groups) + norm(width)
                total += conv(width, cout, 1) + norm(cout)
            if index == 0 and (stage > 0 or cin != cout):  # projection shortcut
                total += conv(cin, cout, 1) + norm(cout)
            cin = cout
    return total


@pytest.mark.parametrize("name", sorted(RESNET_PRESETS))
def test_parameter_counts(name):
    assert _count_by_formula(*ARCHITECTURES[name]) == PUBLISHED_TOTALS[name]
    with torch.device("meta"):  # no memory, no init cost
        model = build_resnet(name, norm="BN", freeze_at=0)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_TOTALS[name]


def test_frozen_bn_model_has_same_weights_as_buffers():
    with torch.device("meta"):
        frozen = resnet50()  # FrozenBN, freeze_at=2
    params = sum(p.numel() for p in frozen.parameters())
    affine = sum(m.weight.numel() * 2 for m in frozen.modules() if isinstance(m, FrozenBatchNorm2d))
    assert params + affine == PUBLISHED_TOTALS["resnet50"]


@pytest.mark.parametrize(
    "factory, channels", [(resnet18, (64, 128, 256, 512)), (resnet50, (256, 512, 1024, 2048))]
)
@pytest.mark.parametrize("size", [(64, 96), (65, 97)])
def test_output_names_channels_strides_and_shapes(factory, channels, size):
    expected = {
        f"res{i + 2}": ShapeSpec(c, s) for i, (c, s) in enumerate(zip(channels, (4, 8, 16, 32)))
    }
    with torch.device("meta"):  # shapes only; one real forward is checked below
        model = factory()
        outputs = model(torch.empty(2, 3, *size))
    assert model.output_shape() == expected
    assert list(outputs) == ["res2", "res3", "res4", "res5"]
    for name, spec in expected.items():
        h, w = (math.ceil(s / spec.stride) for s in size)  # "same" padding everywhere
        assert outputs[name].shape == (2, spec.channels, h, w)


def test_real_forward_matches_reported_shapes():
    model = resnet50().eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 65, 97))
    for name, spec in model.output_shape().items():
        h, w = math.ceil(65 / spec.stride), math.ceil(97 / spec.stride)
        assert outputs[name].shape == (1, spec.channels, h, w)
        assert torch.isfinite(outputs[name]).all() and (outputs[name] >= 0).all()  # after ReLU


def test_c4_backbone_stops_at_res4_and_stem_output():
    model = resnet50(out_features=("res4",))
    assert hasattr(model, "layer3") and not hasattr(model, "layer4")
    assert model.output_shape() == {"res4": ShapeSpec(1024, 16)}
    with torch.device("meta"):
        stem_only = resnet50(out_features=["stem", "res2"])
        outputs = stem_only(torch.empty(1, 3, 64, 96))
    assert not hasattr(stem_only, "layer2")
    shapes = {k: tuple(v.shape) for k, v in outputs.items()}
    assert shapes == {"stem": (1, 64, 16, 24), "res2": (1, 256, 16, 24)}
    with pytest.raises(ValueError, match="out_features"):
        resnet18(out_features=("res6",))


def test_res5_dilation_keeps_stride_16():
    with torch.device("meta"):
        model = resnet50(res5_dilation=2)
        out = model(torch.empty(1, 3, 64, 64))
    assert model.output_shape()["res5"] == ShapeSpec(2048, 16)
    assert out["res5"].shape == (1, 2048, 4, 4)
    assert model.layer4[1].conv2.dilation == (2, 2)


def _torchvision_resnet50_layout():
    """Key -> shape of torchvision's resnet50 (no fc), written from its naming convention."""
    layout = {"conv1.weight": (64, 3, 7, 7)}

    def norm(prefix, c):
        for name in ("weight", "bias", "running_mean", "running_var"):
            layout[f"{prefix}.{name}"] = (c,)

    norm("bn1", 64)
    cin = 64
    for stage, num_blocks in enumerate((3, 4, 6, 3)):
        planes = 64 * 2**stage
        for index in range(num_blocks):
            prefix = f"layer{stage + 1}.{index}"
            shapes = [(planes, cin, 1, 1), (planes, planes, 3, 3), (4 * planes, planes, 1, 1)]
            for k, shape in enumerate(shapes, start=1):
                layout[f"{prefix}.conv{k}.weight"] = shape
                norm(f"{prefix}.bn{k}", shape[0])
            if index == 0:
                layout[f"{prefix}.downsample.0.weight"] = (4 * planes, cin, 1, 1)
                norm(f"{prefix}.downsample.1", 4 * planes)
            cin = 4 * planes
    return layout


def _reference_file_layout():
    layout = {}
    for line in TORCHVISION_KEYS.read_text().splitlines():
        if line.startswith("backbone.body."):
            key, shape, _dtype = line.split("\t")
            dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
            layout[key[len("backbone.body.") :]] = dims
    return layout


def _torchvision_backbone_state_dict(with_num_batches_tracked=False):
    state = {}
    for key, shape in _torchvision_resnet50_layout().items():
        # Random values where the test reads them back (stem, res2); cheap constants elsewhere.
        random = key.startswith(("conv1.", "bn1.", "layer1."))
        state[key] = torch.rand(shape) + 0.5 if random else torch.full(shape, 0.5)
        if with_num_batches_tracked and key.endswith(".running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(100)
    return state


@pytest.mark.skipif(not TORCHVISION_KEYS.exists(), reason="shared reference list not present")
def test_layout_equals_torchvision_reference_list():
    # The reference list is torchvision's own maskrcnn_resnet50_fpn state dict (backbone.body.*).
    assert _reference_file_layout() == _torchvision_resnet50_layout()


@pytest.mark.parametrize("with_counter", [False, True])
def test_torchvision_state_dict_loads_strictly(with_counter):
    state = _torchvision_backbone_state_dict(with_counter)
    assert len(state) == 265 + (53 if with_counter else 0)  # 53 norm layers in ResNet-50
    with torch.device("meta"):
        meta_model = resnet50()
    meta_model.load_state_dict(state, strict=True, assign=True)  # strict: same keys and shapes
    model = resnet50(out_features=("res2",))  # a real one, to check values land where named
    partial = {k: v for k, v in state.items() if not k.startswith(("layer2", "layer3", "layer4"))}
    model.load_state_dict(partial, strict=True)
    own = model.state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.1.running_var"):
        torch.testing.assert_close(own[key], state[key])


def test_torchvision_state_dict_loads_into_trainable_bn_model():
    with torch.device("meta"):
        model = resnet50(norm="BN", freeze_at=0)
    model.load_state_dict(_torchvision_backbone_state_dict(), strict=True, assign=True)
    assert {k.split(".")[-1] for k in model.state_dict()} >= {"num_batches_tracked"}


def _frozen_bn(x, bn):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (x - bn.running_mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + bn.bias.view(
        1, -1, 1, 1
    )


def _randomize_norms(module):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)


def _reference_bottleneck(x, block, stride, groups, stride_in_1x1):
    """The bottleneck written out with F.conv2d and the frozen-BN formula."""
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    out = F.relu(_frozen_bn(F.conv2d(x, block.conv1.weight, stride=s1), block.bn1))
    out = F.conv2d(out, block.conv2.weight, stride=s3, padding=1, groups=groups)
    out = F.relu(_frozen_bn(out, block.bn2))
    out = _frozen_bn(F.conv2d(out, block.conv3.weight), block.bn3)
    down = block.downsample
    shortcut = _frozen_bn(F.conv2d(x, down[0].weight, stride=stride), down[1])
    return F.relu(out + shortcut)


@pytest.mark.parametrize("stride_in_1x1", [False, True])
def test_bottleneck_matches_functional_reference(stride_in_1x1):
    block = Bottleneck(8, 4, stride=2, groups=2, width_per_group=32, stride_in_1x1=stride_in_1x1)
    block = block.double()
    _randomize_norms(block)
    assert block.conv2.weight.shape == (4, 2, 3, 3)  # width = int(4 * 32 / 64) * 2 = 4
    x = torch.randn(2, 8, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = _reference_bottleneck(x, block, 2, 2, stride_in_1x1)
        out = block(x)
    assert out.shape == (2, 16, 4, 3)
    torch.testing.assert_close(out, expected)


def test_blocks_gradcheck():
    basic = BasicBlock(2, 3, stride=2).double()
    bottleneck = Bottleneck(4, 1, stride=1, norm="").double()
    _randomize_norms(basic)
    for block, channels in ((basic, 2), (bottleneck, 4)):
        x = torch.randn(1, channels, 3, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(block, (x,))


def test_stride_in_1x1_moves_the_stride():
    with torch.device("meta"):
        msra, torchvision_style = resnet50(stride_in_1x1=True), resnet50(stride_in_1x1=False)
    for model, first, second in ((msra, (2, 2), (1, 1)), (torchvision_style, (1, 1), (2, 2))):
        for stage in (model.layer2, model.layer3, model.layer4):
            assert stage[0].conv1.stride == first and stage[0].conv2.stride == second
            assert stage[0].downsample[0].stride == (2, 2)
            assert stage[1].conv1.stride == (1, 1) and stage[1].conv2.stride == (1, 1)


def _groups(model):
    return [
        [model.conv1, model.bn1],
        [model.layer1],
        [model.layer2],
        [model.layer3],
        [model.layer4],
    ]


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 4, 5])
def test_freeze_at(freeze_at):
    with torch.device("meta"):
        model = resnet18(norm="BN", freeze_at=freeze_at)
    norm_types = (nn.BatchNorm2d, FrozenBatchNorm2d)
    for index, group in enumerate(_groups(model)):
        frozen = index < freeze_at
        params = [p for module in group for p in module.parameters()]
        assert params and all(p.requires_grad != frozen for p in params)
        norms = [m for module in group for m in module.modules() if isinstance(m, norm_types)]
        expected_type = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
        assert norms and all(type(m) is expected_type for m in norms)


def test_freeze_at_backward_leaves_frozen_params_without_grad():
    model = ResNet(block=BasicBlock, layers=(1, 1, 1, 1), freeze_at=2)  # FrozenBN: convs train
    outputs = model(torch.randn(1, 3, 16, 16))
    sum(o.sum() for o in outputs.values()).backward()
    for name, param in model.named_parameters():
        frozen = name.startswith(("conv1.", "bn1.", "layer1."))
        assert (param.grad is None) == frozen, name
    with pytest.raises(ValueError, match="freeze_at"):
        resnet18(freeze_at=6)


def test_make_stage_standalone_c4_head():
    with torch.device("meta"):  # the C4 res5 head on 14x14 RoI features
        head = make_stage(Bottleneck, 1024, 512, 3, stride=2, norm="FrozenBN")
        out = head(torch.empty(5, 1024, 14, 14))
    assert out.shape == (5, 2048, 7, 7)
    assert head[0].downsample is not None and head[1].downsample is None
    small = make_stage(BasicBlock, 4, 8, 2, stride=2, norm="BN")
    assert small(torch.randn(2, 4, 9, 9)).shape == (2, 8, 5, 5)
    assert isinstance(small[0].downsample[1], nn.BatchNorm2d)


def test_deform_stages_with_interval_follow_yolact_rule():
    from instaseg.layers.deform import ModulatedDeformConv2d

    model = resnet101(deform_stages=(False, True, True, True), deform_interval=3)
    # YOLACT++ R-101, dcn_interval 3: the first block of each DCN stage, then every third one.
    expected = {
        "layer1": set(),
        "layer2": {0, 3},
        "layer3": {0, 3, 6, 9, 12, 15, 18, 21},
        "layer4": {0},
    }
    for name, indices in expected.items():
        stage = getattr(model, name)
        found = {i for i, b in enumerate(stage) if isinstance(b.conv2, ModulatedDeformConv2d)}
        assert found == indices, name
        plain = {i for i, b in enumerate(stage) if type(b.conv2) is nn.Conv2d}
        assert plain == set(range(len(stage))) - indices
    assert sum(len(v) for v in expected.values()) == 11


def test_deformable_stage_forward_shapes_and_gradients():
    from instaseg.layers.deform import ModulatedDeformConv2d

    model = ResNet(
        block=Bottleneck,
        layers=(1, 1, 1, 2),
        deform_stages=(False, False, False, True),
        deform_interval=1,
        freeze_at=5,
    )
    assert all(isinstance(block.conv2, ModulatedDeformConv2d) for block in model.layer4)
    model.layer4.requires_grad_(True)
    outputs = model(torch.randn(1, 3, 64, 64))
    assert outputs["res5"].shape == (1, 2048, 2, 2)
    outputs["res5"].square().mean().backward()
    assert model.layer4[0].conv2.weight.grad is not None


def test_build_resnet_errors_and_architecture_arguments():
    with pytest.raises(ValueError, match="resnet50"):
        build_resnet("resnet51")
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth=42)
    with torch.device("meta"):
        custom = ResNet(block=BasicBlock, layers=(1, 1, 1, 1), freeze_at=0)
    assert len(custom.layer1) == 1 and isinstance(custom.layer4[0], BasicBlock)
    with pytest.raises(ValueError, match="groups"):
        ResNet(depth=18, groups=32, width_per_group=4)
