"""ResNet and ResNeXt backbones (He et al. 2016; Xie et al. 2017), with frozen stages and DCNv2.

Order of this file: blocks, stage builder, model, builder, presets.

Module and attribute names are exactly torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0`` / ``.1``, ...), so torchvision's ImageNet ResNet state dicts load with
``strict=True`` once the ``fc.*`` keys are dropped. Output names follow Detectron2: ``stem``
(stride 4, after the max pool) and ``res2`` .. ``res5`` (strides 4, 8, 16, 32).

Every convolution pads "same", so a feature map of an ``H x W`` image at stride ``s`` is
``ceil(H / s) x ceil(W / s)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from instaseg.layers.conv import conv1x1, conv3x3
from instaseg.layers.fusion import conv_norm, to_channels_last
from instaseg.layers.norm import convert_frozen_batchnorm, get_norm
from instaseg.layers.shape_spec import ShapeSpec

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "make_stage",
    "is_deformable_block",
    "ResNet",
    "build_resnet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "RESNET_PRESETS",
    "OUTPUT_NAMES",
]


# ----------------------------------------------------------------------------------------- blocks
def _norm_or_identity(norm: str | None, channels: int) -> nn.Module:
    layer = get_norm(norm, channels)
    return nn.Identity() if layer is None else layer


def _kaiming_init(conv: nn.Module) -> None:
    # torchvision's ResNet init: kaiming normal, fan_out, ReLU gain. Only the conv weight is
    # touched, so a deformable conv keeps its own (zero) init of the offset/mask branch.
    if conv.weight.is_meta:  # shape-only model: nothing to fill (and meta normal_ is slow to load)
        return
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


def _deform_conv3x3(
    in_channels: int, out_channels: int, stride: int, dilation: int, groups: int
) -> nn.Module:
    # Imported here, not at module import: the DCN layer is optional for plain ResNets.
    from instaseg.layers.deform import ModulatedDeformConv2d

    return ModulatedDeformConv2d(
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        groups=groups,
        deform_groups=1,
        bias=False,
        modulated=True,
    )


def _shortcut(downsample: nn.Module | None, x: Tensor) -> Tensor:
    if downsample is None:
        return x
    if isinstance(downsample, nn.Sequential) and len(downsample) == 2:  # (conv, norm): foldable
        return conv_norm(downsample[0], downsample[1], x)
    return downsample(x)


def _make_shortcut(
    in_channels: int, out_channels: int, stride: int, norm: str | None
) -> nn.Module | None:
    """Projection shortcut ``Sequential(conv1x1, norm)`` (torchvision's ``downsample``) or None."""
    if stride == 1 and in_channels == out_channels:
        return None
    conv = conv1x1(in_channels, out_channels, stride=stride, bias=False)
    _kaiming_init(conv)
    return nn.Sequential(conv, _norm_or_identity(norm, out_channels))


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity or projection shortcut (ResNet-18/34).

    Input ``(N, in_channels, H, W)`` -> ``(N, planes, ceil(H / stride), ceil(W / stride))``.
    ``stride_in_1x1`` is accepted for a common block signature and has no effect here.
    ``deformable=True`` makes ``conv2`` (the stride-1 3x3) a modulated deformable conv.
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        *,
        groups: int = 1,
        width_per_group: int = 64,
        dilation: int = 1,
        norm: str | None = "FrozenBN",
        stride_in_1x1: bool = False,
        deformable: bool = False,
    ) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.out_channels = planes
        self.conv1 = conv3x3(in_channels, planes, stride, dilation=dilation, bias=False)
        self.bn1 = _norm_or_identity(norm, planes)
        if deformable:
            self.conv2 = _deform_conv3x3(planes, planes, 1, dilation, 1)
        else:
            self.conv2 = conv3x3(planes, planes, dilation=dilation, bias=False)
        self.bn2 = _norm_or_identity(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _make_shortcut(in_channels, planes, stride, norm)
        for conv in (self.conv1, self.conv2):
            _kaiming_init(conv)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = _shortcut(self.downsample, x)
        out = self.relu(conv_norm(self.conv1, self.bn1, x))
        out = conv_norm(self.conv2, self.bn2, out)
        out += shortcut  # in place: neither the norm's nor the conv's backward needs this output
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4, plus shortcut (ResNet-50/101/152).

    The 3x3 width is ``int(planes * width_per_group / 64) * groups`` (torchvision's ResNeXt rule).
    ``stride_in_1x1=True`` puts the stride in ``conv1`` (MSRA/Caffe2 weights, Detectron2's
    ``STRIDE_IN_1X1``); False puts it in the 3x3 ``conv2`` (torchvision, "ResNet v1.5").
    ``deformable=True`` makes ``conv2`` a modulated deformable conv (DCNv2) with the same stride.

    Input ``(N, in_channels, H, W)`` -> ``(N, 4 * planes, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        *,
        groups: int = 1,
        width_per_group: int = 64,
        dilation: int = 1,
        norm: str | None = "FrozenBN",
        stride_in_1x1: bool = False,
        deformable: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        out_channels = planes * self.expansion
        self.out_channels = out_channels
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_channels, width, stride=stride_1x1, bias=False)
        self.bn1 = _norm_or_identity(norm, width)
        if deformable:
            self.conv2 = _deform_conv3x3(width, width, stride_3x3, dilation, groups)
        else:
            self.conv2 = conv3x3(width, width, stride_3x3, groups, dilation, bias=False)
        self.bn2 = _norm_or_identity(norm, width)
        self.conv3 = conv1x1(width, out_channels, bias=False)
        self.bn3 = _norm_or_identity(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _make_shortcut(in_channels, out_channels, stride, norm)
        for conv in (self.conv1, self.conv2, self.conv3):
            _kaiming_init(conv)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = _shortcut(self.downsample, x)
        out = self.relu(conv_norm(self.conv1, self.bn1, x))
        out = self.relu(conv_norm(self.conv2, self.bn2, out))
        out = conv_norm(self.conv3, self.bn3, out)
        out += shortcut  # in place: neither the norm's nor the conv's backward needs this output
        return self.relu(out)


# ------------------------------------------------------------------------------------------ stage
def is_deformable_block(block_index: int, deform_interval: int) -> bool:
    """Whether block ``block_index`` of a DCN stage is deformable, for ``deform_interval`` k.

    k = 0: none; k >= 1: blocks with ``index % k == 0`` (the first block, then every k-th). This is
    the YOLACT++ reference's rule (dbolya/yolact backbone.py, ``dcn_interval``, with DCN enabled on
    whole stages): R-101 with k = 3 puts DCN in blocks 0, 3 of res3, 0, 3, ..., 21 of res4 and 0 of
    res5 (11 blocks).
    """
    return deform_interval > 0 and block_index % deform_interval == 0


def make_stage(
    block: type[nn.Module],
    in_channels: int,
    planes: int,
    num_blocks: int,
    stride: int,
    *,
    deform_interval: int = 0,
    **block_kwargs,
) -> nn.Sequential:
    """A ResNet stage: ``num_blocks`` blocks, the first with ``stride`` and the projection shortcut.

    ``block_kwargs`` (groups, width_per_group, dilation, norm, stride_in_1x1) go to every block;
    ``deform_interval`` picks the deformable blocks (see :func:`is_deformable_block`). Usable alone,
    e.g. as the res5 head of a C4 Mask R-CNN on 14x14 RoI features:
    ``make_stage(Bottleneck, 1024, 512, 3, stride=2)`` maps ``(K, 1024, 14, 14)`` to
    ``(K, 2048, 7, 7)``.
    """
    blocks = []
    for index in range(num_blocks):
        blocks.append(
            block(
                in_channels,
                planes,
                stride if index == 0 else 1,
                deformable=is_deformable_block(index, deform_interval),
                **block_kwargs,
            )
        )
        in_channels = planes * block.expansion
    return nn.Sequential(*blocks)


# ------------------------------------------------------------------------------------------ model
# (block, blocks per stage) from He et al. 2016, Table 1.
_DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
_STAGE_NAMES = ("res2", "res3", "res4", "res5")
OUTPUT_NAMES = ("stem",) + _STAGE_NAMES  # the trunk's output names, in stride order


class ResNet(nn.Module):
    """ResNet / ResNeXt trunk returning the requested feature maps by name.

    Args:
        depth: 18, 34, 50, 101 or 152; or give ``block`` and ``layers`` (blocks per stage) instead.
        norm: :func:`get_norm` name for every norm layer ("FrozenBN" for fine-tuning detectors).
        freeze_at: 0 = nothing frozen, 1 = stem, k = stem and res2..res{k} (5 = everything).
            Frozen parameters get ``requires_grad=False`` and their BatchNorms become frozen.
        stride_in_1x1, groups, width_per_group: see :class:`Bottleneck`.
        out_features: names among "stem", "res2".."res5". Stages after the last one are not built
            (a C4 backbone, ``("res4",)``, has no ``layer4``).
        deform_stages: DCNv2 on/off for res2..res5; ``deform_interval`` picks blocks within them.
        res5_dilation: 2 replaces res5's stride by dilation (output stride 16), as in Detectron2.

    ``forward(x (N, 3, H, W)) -> {name: (N, C, ceil(H / s), ceil(W / s))}`` in stride order.
    """

    def __init__(
        self,
        depth: int | None = None,
        *,
        block: type[nn.Module] | None = None,
        layers: Sequence[int] | None = None,
        norm: str | None = "FrozenBN",
        freeze_at: int = 2,
        stride_in_1x1: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        deform_stages: Sequence[bool] = (False, False, False, False),
        deform_interval: int = 1,
        res5_dilation: int = 1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        block, layers = _resolve_architecture(depth, block, layers)
        self.out_features = _check_out_features(out_features)
        if len(deform_stages) != 4:
            raise ValueError("deform_stages needs one flag per stage res2..res5")
        if res5_dilation not in (1, 2):
            raise ValueError("res5_dilation must be 1 or 2")
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        _kaiming_init(self.conv1)
        self.bn1 = _norm_or_identity(norm, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._shapes = {"stem": ShapeSpec(64, 4)}
        self.num_stages = max(OUTPUT_NAMES.index(name) for name in self.out_features)
        stage_kwargs = dict(
            groups=groups, width_per_group=width_per_group, norm=norm, stride_in_1x1=stride_in_1x1
        )
        channels, stride = 64, 4
        for index in range(self.num_stages):  # res2 .. the last requested output
            stage_stride = 1 if index == 0 else 2
            dilation = 1
            if index == 3 and res5_dilation == 2:
                stage_stride, dilation = 1, 2
            planes = 64 * 2**index
            interval = deform_interval if deform_stages[index] else 0
            stage = make_stage(
                block, channels, planes, layers[index], stage_stride,
                deform_interval=interval, dilation=dilation, **stage_kwargs
            )
            self.add_module(f"layer{index + 1}", stage)
            channels, stride = planes * block.expansion, stride * stage_stride
            self._shapes[_STAGE_NAMES[index]] = ShapeSpec(channels, stride)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 1``) and res2..res{freeze_at}; never unfreezes."""
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be in 0..5, got {freeze_at}")
        if freeze_at >= 1:
            self.bn1 = convert_frozen_batchnorm(self.bn1)
            for param in self.conv1.parameters():
                param.requires_grad_(False)
        for index in range(1, min(freeze_at, self.num_stages + 1)):
            name = f"layer{index}"
            stage = convert_frozen_batchnorm(getattr(self, name))
            setattr(self, name, stage)
            for param in stage.parameters():
                param.requires_grad_(False)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each requested output, e.g. ``{"res5": ShapeSpec(2048, 32)}``."""
        return {name: self._shapes[name] for name in self.out_features}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs: dict[str, Tensor] = {}
        # Channels-last from here on (oneDNN's preferred layout); every later map inherits it.
        x = self.maxpool(self.relu(conv_norm(self.conv1, self.bn1, to_channels_last(x))))
        if "stem" in self.out_features:
            outputs["stem"] = x
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
            if _STAGE_NAMES[index] in self.out_features:
                outputs[_STAGE_NAMES[index]] = x
        return outputs


def _resolve_architecture(
    depth: int | None, block: type[nn.Module] | None, layers: Sequence[int] | None
) -> tuple[type[nn.Module], tuple[int, ...]]:
    if depth is not None:
        if block is not None or layers is not None:
            raise ValueError("give either depth or block + layers, not both")
        if depth not in _DEPTHS:
            raise ValueError(f"unknown ResNet depth {depth}; expected one of {sorted(_DEPTHS)}")
        return _DEPTHS[depth]
    if block is None or layers is None or len(layers) != 4:
        raise ValueError("give depth, or block and layers (4 stage block counts)")
    return block, tuple(layers)


def _check_out_features(out_features: Sequence[str]) -> tuple[str, ...]:
    if isinstance(out_features, str):
        out_features = (out_features,)
    unknown = [name for name in out_features if name not in OUTPUT_NAMES]
    if unknown or not out_features:
        raise ValueError(f"out_features {tuple(out_features)} must be among {OUTPUT_NAMES}")
    # Keep stride order whatever order the caller used.
    return tuple(name for name in OUTPUT_NAMES if name in out_features)


# ---------------------------------------------------------------------------------------- builder
def build_resnet(name: str, **kwargs) -> ResNet:
    """A preset by name (see ``RESNET_PRESETS``); keyword arguments go to :class:`ResNet`."""
    if name not in RESNET_PRESETS:
        raise ValueError(f"unknown ResNet preset {name!r}; available: {sorted(RESNET_PRESETS)}")
    return RESNET_PRESETS[name](**kwargs)


# ---------------------------------------------------------------------------------------- presets
def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (BasicBlock, 2-2-2-2)."""
    return ResNet(18, **kwargs)


def resnet34(**kwargs) -> ResNet:
    """ResNet-34 (BasicBlock, 3-4-6-3)."""
    return ResNet(34, **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (Bottleneck, 3-4-6-3)."""
    return ResNet(50, **kwargs)


def resnet101(**kwargs) -> ResNet:
    """ResNet-101 (Bottleneck, 3-4-23-3)."""
    return ResNet(101, **kwargs)


def resnet152(**kwargs) -> ResNet:
    """ResNet-152 (Bottleneck, 3-8-36-3)."""
    return ResNet(152, **kwargs)


def resnext50_32x4d(**kwargs) -> ResNet:
    """ResNeXt-50 32x4d: 32 groups of width 4 in res2 (Xie et al. 2017, Table 1)."""
    return ResNet(50, groups=32, width_per_group=4, **kwargs)


def resnext101_32x4d(**kwargs) -> ResNet:
    """ResNeXt-101 32x4d: 32 groups of width 4 in res2 (MMDetection's X-101-32x4d)."""
    return ResNet(101, groups=32, width_per_group=4, **kwargs)


def resnext101_32x8d(**kwargs) -> ResNet:
    """ResNeXt-101 32x8d: 32 groups of width 8 in res2."""
    return ResNet(101, groups=32, width_per_group=8, **kwargs)


def resnext101_64x4d(**kwargs) -> ResNet:
    """ResNeXt-101 64x4d: 64 groups of width 4 in res2 (MMDetection's X-101-64x4d)."""
    return ResNet(101, groups=64, width_per_group=4, **kwargs)


RESNET_PRESETS = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
    "resnext50_32x4d": resnext50_32x4d,
    "resnext101_32x4d": resnext101_32x4d,
    "resnext101_32x8d": resnext101_32x8d,
    "resnext101_64x4d": resnext101_64x4d,
}
