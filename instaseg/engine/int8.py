"""int8 inference of the ResNet / ResNeXt trunk, the FPN and the heads' 3x3 convolutions: static
quantization, calibrated on images.

``quantize_int8(model, images)`` replaces ``model.backbone`` and ``model.neck`` by int8 versions
with the same structure, in place: every convolution with its frozen norm folded in (and its ReLU
fused) runs on PyTorch's x86 quantized kernels (FBGEMM / oneDNN) with int8 weights and uint8
activations, the residual additions and the FPN's top-down sums add in uint8, and the pyramid
levels come out in float32 for the heads. A block with a deformable convolution (YOLACT++) runs in
float32 between its int8 neighbours. With ``heads=True`` (the default) the 3x3 convolutions followed
by a ReLU run in int8 too, each between float maps: the RPN's shared one and the FCN mask head's
stack (R-CNN), ProtoNet's and the prediction head's ``upfeature`` (YOLACT). The predictors (box,
class, mask coefficient and mask logit layers), the box head, the mask deconvolution, NMS, RoIAlign
and mask pasting stay float32.

Quantization (the x86 scheme PyTorch's own ``get_default_qconfig("x86")`` uses):

- weights: int8, symmetric, one scale per output channel, from the folded weight's range;
- activations: uint8 with a zero point, one scale per tensor, from a histogram of the values each
  point saw on the calibration images (PyTorch's ``HistogramObserver``, which picks the clipping
  range that minimises the quantization error); 7 bits (``reduce_range``), because without VNNI
  (AVX2 only) the kernels multiply uint8 by int8 into saturating int16 pairs.

Calibration runs ``model.predict(images)`` with the new modules computing in float32 and recording
their ranges; :func:`quantize_int8` then converts them. Use a few images like those the model will
see (the user's own): the ranges come from them.

Supported: ResNet / ResNeXt trunks with frozen (or eval-mode) batch norm or none, and the FPN with
any extra levels. Anything else (GroupNorm, another trunk) raises :class:`ConfigError`: int8 is for
inference only (training keeps float32 master weights; see ``train.precision``).

PyTorch marks these quantized kernels (``torch.ao.nn.quantized``) deprecated in favour of torchao;
they are in the pinned torch 2.13. torchao's PT2E x86 quantizer, the successor, could not partition
this trunk + FPN (``Input partition has more than one output node``), hence modules of our own.
Measured on a 2-core AVX2 CPU (``benchmarks/results/int8.md``): R50-FPN inference at 800x1216 with
100 detections 0.66x float32's time, the demo checkpoint's mask AP unchanged (52.9).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.ao.nn.intrinsic.quantized as nniq
import torch.ao.nn.quantized as nnq
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.quantization.observer import HistogramObserver

from instaseg.backbones.resnet import OUTPUT_NAMES, BasicBlock, Bottleneck, ResNet
from instaseg.data.image_io import read_image
from instaseg.errors import ConfigError
from instaseg.heads.mask_head import MaskFCNHead
from instaseg.heads.rpn import RPNHead
from instaseg.heads.yolact_head import ProtoNet, YolactPredictionHead
from instaseg.layers.fusion import fold_frozen_batchnorm
from instaseg.layers.norm import FrozenBatchNorm2d, convert_frozen_batchnorm
from instaseg.necks.fpn import FPN, extra_levels, upsample_to

__all__ = ["quantize_int8", "load_calibration_images", "MAX_CALIBRATION_IMAGES", "convert_calibrated", "is_int8",
           "quantize_weight", "QuantConv", "QuantAdd", "QuantInput", "Int8ResNet", "Int8FPN", "Int8Conv",
           "Float32Block"]


# Images a calibration reads at most: it records value ranges, a few images are enough.
MAX_CALIBRATION_IMAGES = 8


def _activation_observer() -> HistogramObserver:
    return HistogramObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=127)


def quantize_weight(weight: Tensor) -> Tensor:
    """``weight (C_out, C_in / g, kh, kw)`` as int8 with one symmetric scale per output channel
    (``max |w| / 127.5`` as PyTorch's per-channel symmetric observer gives it)."""
    observer = torch.ao.quantization.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8,
                                                              qscheme=torch.per_channel_symmetric)
    observer(weight)
    scale, zero_point = observer.calculate_qparams()
    return torch.quantize_per_channel(weight, scale.double(), zero_point.long(), 0, torch.qint8)


def _folded(conv: nn.Conv2d, norm: nn.Module | None) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``norm(conv(x))`` as one convolution (float32)."""
    weight = conv.weight.detach().float()
    bias = None if conv.bias is None else conv.bias.detach().float()
    if norm is None or isinstance(norm, nn.Identity):
        return weight, torch.zeros(weight.shape[0]) if bias is None else bias
    if isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.track_running_stats:
        norm = convert_frozen_batchnorm(norm)  # a copy: at inference the same affine map
    if not isinstance(norm, FrozenBatchNorm2d):
        raise ConfigError(f"int8: a {type(norm).__name__} cannot be folded into its convolution "
                          "(frozen or eval-mode batch norm only)")
    return fold_frozen_batchnorm(weight, bias, norm)


class _Observed(nn.Module):
    """A quantization point: float32 while calibrating (recording the range of what it computes), int8
    once :meth:`convert` has fixed its output's scale and zero point (``qparams``)."""

    def __init__(self) -> None:
        super().__init__()
        self.observer = _activation_observer()
        self.qparams: tuple[float, int] | None = None

    @property
    def calibrated(self) -> bool:
        """Whether calibration has shown this point any values."""
        return bool(torch.isfinite(self.observer.min_val).all())

    def convert(self) -> None:
        if not self.calibrated:
            raise ConfigError("int8: a quantization point saw no values; calibrate on images first")
        scale, zero_point = self.observer.calculate_qparams()
        self.qparams = (float(scale), int(zero_point))


class QuantInput(_Observed):
    """Float ``(N, C, H, W)`` -> quint8 (channels-last) at its calibrated scale: the trunk's input."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if self.qparams is None:
            self.observer(x)
            return x
        return torch.quantize_per_tensor(x, *self.qparams, torch.quint8)


class QuantAdd(_Observed):
    """``a + b``, then an optional ReLU: the residual addition and the FPN's top-down sum."""

    def __init__(self, relu: bool) -> None:
        super().__init__()
        self.relu = relu

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.qparams is not None:
            add = torch.ops.quantized.add_relu if self.relu else torch.ops.quantized.add
            return add(a, b, *self.qparams)
        y = F.relu(a + b) if self.relu else a + b
        self.observer(y)
        return y


class QuantConv(_Observed):
    """A convolution with its norm folded in and an optional ReLU fused: ``(N, C, H, W) -> (N, C', H', W')``,
    float32 while calibrating, quint8 -> quint8 after :meth:`convert` (int8 weights, one scale per
    output channel)."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module | None = None, relu: bool = False) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise ConfigError(f"int8: {type(conv).__name__} has no int8 kernel (plain convolutions only)")
        weight, bias = _folded(conv, norm)
        self.conv: nn.Conv2d | None = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                                                conv.padding, conv.dilation, conv.groups).requires_grad_(False)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias)
        self.relu = relu
        self.quantized: nn.Module | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.quantized is not None:
            return self.quantized(x)
        y = self.conv(x)
        y = F.relu(y) if self.relu else y
        self.observer(y)
        return y

    def convert(self) -> None:
        super().convert()
        c = self.conv
        kind = nniq.ConvReLU2d if self.relu else nnq.Conv2d
        layer = kind(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups)
        layer.set_weight_bias(quantize_weight(c.weight.detach()), c.bias.detach().clone())
        layer.scale, layer.zero_point = self.qparams
        self.quantized, self.conv = layer, None  # the float32 copy is no longer needed


def _plain(block: nn.Module) -> bool:
    """Whether every convolution of a ResNet block is a plain one (not deformable)."""
    return all(isinstance(conv, nn.Conv2d) for name, conv in block.named_children() if name.startswith("conv"))


class Float32Block(nn.Module):
    """A block with a deformable convolution (YOLACT++'s DCNv2) in float32 between int8 neighbours:
    the input dequantized, the block's own forward, the output quantized at its calibrated scale."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block, self.output = block, QuantInput()

    def forward(self, x: Tensor) -> Tensor:
        return self.output(self.block(_dequantize(x)))


class _Int8Block(nn.Module):
    """A :class:`BasicBlock` or :class:`Bottleneck` in int8: its convs, the shortcut, add + ReLU."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        if isinstance(block, Bottleneck):
            pairs.append((block.conv3, block.bn3))
        self.convs = nn.ModuleList(QuantConv(conv, norm, relu=index < len(pairs) - 1)
                                   for index, (conv, norm) in enumerate(pairs))
        downsample = block.downsample
        self.shortcut = None if downsample is None else QuantConv(downsample[0], downsample[1])
        self.add = QuantAdd(relu=True)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = x
        for conv in self.convs:
            out = conv(out)
        return self.add(out, shortcut)


class Int8ResNet(nn.Module):
    """``ResNet`` in int8: ``forward(x (N, 3, H, W) float) -> {name: (N, C, h, w)}`` as the float trunk,
    the maps quint8 (for :class:`Int8FPN`), or float32 when ``float_outputs`` (a C4 model's trunk)."""

    def __init__(self, resnet: ResNet, float_outputs: bool = False) -> None:
        super().__init__()
        self.out_features, self.float_outputs = resnet.out_features, float_outputs
        self._shapes = resnet.output_shape()
        self.input = QuantInput()
        self.stem = QuantConv(resnet.conv1, resnet.bn1, relu=True)
        self.stages = nn.ModuleList()
        for index in range(resnet.num_stages):
            blocks = getattr(resnet, f"layer{index + 1}")
            for block in blocks:
                if not isinstance(block, (BasicBlock, Bottleneck)):
                    raise ConfigError(f"int8: {type(block).__name__} is not a ResNet block")
            self.stages.append(nn.Sequential(*(_Int8Block(block) if _plain(block) else Float32Block(block)
                                               for block in blocks)))

    def output_shape(self) -> dict:
        return dict(self._shapes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = F.max_pool2d(self.stem(self.input(x)), kernel_size=3, stride=2, padding=1)
        outputs = {"stem": x} if "stem" in self.out_features else {}
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if OUTPUT_NAMES[index + 1] in self.out_features:
                outputs[OUTPUT_NAMES[index + 1]] = x
        if self.float_outputs:
            outputs = {name: _dequantize(value) for name, value in outputs.items()}
        return outputs


class Int8Conv(nn.Module):
    """A convolution (its norm folded in, an optional ReLU) in int8 between float maps, for the heads and
    the FPN's extra levels: ``(K, C, H, W) -> (K, C', H', W')`` float32, the input quantized at its
    calibrated scale, the output dequantized. Empty inputs (no RoIs) run the float convolution."""

    def __init__(self, conv: nn.Conv2d, norm: nn.Module | None = None, relu: bool = False) -> None:
        super().__init__()
        self.input, self.conv = QuantInput(), QuantConv(conv, norm, relu=relu)
        self.fallback = self.conv.conv  # float32, kept after conversion for empty inputs

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() == 0:
            y = self.fallback(x)
            return F.relu(y) if self.conv.relu else y
        return _dequantize(self.conv(self.input(x)))


class Int8FPN(nn.Module):
    """``FPN`` in int8: takes :class:`Int8ResNet`'s quint8 maps, returns the float32 pyramid levels
    ``{"p2": (N, C, H_2, W_2), ...}`` as the float neck does."""

    def __init__(self, fpn: FPN) -> None:
        super().__init__()
        self.upsample_mode, self.extra_relu = fpn.upsample_mode, fpn.extra_relu
        self.extra, self.num_extra, self.extra_from = fpn.extra, fpn.num_extra, fpn.extra_from
        self._shapes = fpn.output_shape()
        self.lateral = nn.ModuleList(QuantConv(conv, conv.norm, relu=False) for conv in fpn.lateral_convs)
        self.output = nn.ModuleList(QuantConv(conv, conv.norm, relu=fpn.relu_outputs) for conv in fpn.output_convs)
        self.sums = nn.ModuleList(QuantAdd(relu=False) for _ in fpn.lateral_convs[:-1])
        self.extra_convs = nn.ModuleList(Int8Conv(conv, conv.norm) for conv in fpn.extra_convs)

    def output_shape(self) -> dict:
        return dict(self._shapes)

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(features) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} feature maps, got {len(features)}")
        merged = self.lateral[-1](features[-1])
        outputs = [self.output[-1](merged)]
        for index in range(len(features) - 2, -1, -1):
            lateral = self.lateral[index](features[index])
            merged = self.sums[index](lateral, upsample_to(merged, lateral.shape[-2:], self.upsample_mode))
            outputs.insert(0, self.output[index](merged))
        outputs = [_dequantize(out) for out in outputs]
        last_input = _dequantize(features[-1]) if self.extra == "convs" and self.extra_from == "input" else features[-1]
        outputs.extend(extra_levels(self, self.extra_convs, outputs[-1], last_input))
        return dict(zip(self._shapes, outputs))


def _dequantize(x: Tensor) -> Tensor:
    return x.dequantize() if x.is_quantized else x


def convert_calibrated(module: nn.Module) -> None:
    """Turn every quantization point inside ``module`` (calibrated by running it) to int8."""
    with warnings.catch_warnings():  # PyTorch marks its quantized tensor types deprecated (still in 2.13)
        warnings.filterwarnings("ignore", category=UserWarning, message=".*quantize.*deprecated")
        for point in module.modules():
            if isinstance(point, _Observed):
                point.convert()


def is_int8(model: nn.Module) -> bool:
    """Whether :func:`quantize_int8` has converted ``model``."""
    return isinstance(getattr(model, "backbone", None), Int8ResNet)


def load_calibration_images(paths: Sequence[str | Path], limit: int = MAX_CALIBRATION_IMAGES) -> list[Tensor]:
    """The first ``limit`` of ``paths`` as ``(3, H, W)`` float images (0-255), for :func:`quantize_int8`."""
    return [torch.from_numpy(read_image(path)).permute(2, 0, 1).float() for path in list(paths)[:limit]]


def _head_convs(model: nn.Module) -> list[tuple[nn.Module, str, nn.Conv2d]]:
    """(parent, attribute, conv) of each head convolution followed by a ReLU that :func:`quantize_int8`
    converts: the RPN's shared 3x3 and the FCN mask head's 3x3 stack (R-CNN); ProtoNet's 3x3 convolutions
    and the prediction head's shared ``upfeature`` (YOLACT)."""
    found: list[tuple[nn.Module, str, nn.Conv2d]] = []
    rpn_head = getattr(model, "rpn_head", None)
    if isinstance(rpn_head, RPNHead):
        found.append((rpn_head, "conv", rpn_head.conv))
    mask_head = getattr(model, "mask_head", None)
    if isinstance(mask_head, MaskFCNHead):
        found += [(mask_head.convs, str(index), conv) for index, conv in enumerate(mask_head.convs)]
    protonet = getattr(model, "protonet", None)
    if isinstance(protonet, ProtoNet):
        found += [(protonet.convs, str(index), conv) for index, conv in enumerate(protonet.convs)]
        found.append((protonet, "post_conv", protonet.post_conv))
    prediction_head = getattr(model, "prediction_head", None)
    if isinstance(prediction_head, YolactPredictionHead):
        found.append((prediction_head, "upfeature", prediction_head.upfeature))
    return found


def quantize_int8(model: nn.Module, images: Sequence[Tensor], heads: bool = True) -> nn.Module:
    """Replace ``model.backbone`` (and ``model.neck``, an FPN) by int8 versions calibrated on ``images``.

    ``images``: what ``model.predict`` takes, ``(3, H, W)`` tensors of the kind the model will see
    (a few are enough: the ranges of 4-8 images). ``heads``: also the heads' 3x3 convolutions that a
    ReLU follows (the RPN's shared conv and the FCN mask head's four; YOLACT's ProtoNet and
    ``upfeature``), each between float maps (:class:`Int8Conv`); the predictors, the box head, the
    mask deconvolution and everything data-dependent stay float32. In place; returns ``model``, in
    eval mode, for inference only. Sets ``torch.backends.quantized.engine`` to ``"x86"`` (FBGEMM /
    oneDNN kernels) for the process. Raises :class:`ConfigError` for what has no int8 form (see the
    module docstring); whatever fails, the model is left as it was. Head convolutions that no
    calibration image reached (nothing detected) stay float32, with a warning.
    """
    if not images:
        raise ConfigError("int8: calibration needs at least one image")
    if is_int8(model):
        raise ConfigError("int8: the model is already quantized")
    backbone, neck = getattr(model, "backbone", None), getattr(model, "neck", None)
    if not isinstance(backbone, ResNet):
        raise ConfigError(f"int8: the backbone is a {type(backbone).__name__}; only ResNet / ResNeXt trunks")
    if neck is not None and not isinstance(neck, FPN):
        raise ConfigError(f"int8: the neck is a {type(neck).__name__}; only the FPN")
    engines = torch.backends.quantized.supported_engines
    if "x86" not in engines and "fbgemm" not in engines:
        raise ConfigError(f"int8: this PyTorch build has no x86 quantized kernels (engines: {engines})")
    torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"
    model.eval()
    head_convs = _head_convs(model) if heads else []
    head_swaps = [(parent, name, conv, Int8Conv(conv, relu=True)) for parent, name, conv in head_convs]
    swaps = [(model, "backbone", backbone, Int8ResNet(backbone, float_outputs=neck is None))]
    if neck is not None:
        swaps.append((model, "neck", neck, Int8FPN(neck)))
    swaps += head_swaps
    for parent, name, _, new in swaps:
        setattr(parent, name, new)
    try:
        with torch.inference_mode():
            model.predict(list(images))
        unseen = [(parent, name, old) for parent, name, old, new in head_swaps if not _calibrated(new)]
        for parent, name, old in unseen:  # a head that never ran (no detections): it stays float32
            setattr(parent, name, old)
        for parent, name, _, new in swaps:
            if getattr(parent, name) is new:
                convert_calibrated(new)
    except BaseException:
        for parent, name, old, _ in swaps:
            setattr(parent, name, old)
        raise
    if unseen:
        warnings.warn(f"int8: {len(unseen)} head convolution(s) saw no values on the calibration images (nothing "
                      "detected there) and stay float32; calibrate on images where the model finds objects",
                      stacklevel=2)
    return model


def _calibrated(module: nn.Module) -> bool:
    """Whether every quantization point in ``module`` has seen values."""
    return all(point.calibrated for point in module.modules() if isinstance(point, _Observed))
