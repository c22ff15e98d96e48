"""Feature Pyramid Network (Lin et al. 2017) with the extra coarse levels R-CNN and YOLACT use.

Mask R-CNN: ``FPN([256, 512, 1024, 2048], [4, 8, 16, 32], 256, extra="maxpool")`` gives p2..p6,
P6 being P5 subsampled by a 1x1 max pool with stride 2 (Detectron2 ``LastLevelMaxPool``,
torchvision ``LastLevelMaxPool``); P6 only feeds the RPN.

YOLACT: ``FPN([512, 1024, 2048], [8, 16, 32], 256, extra="convs", num_extra=2)`` gives p3..p7 with
P6 = conv3x3/2(P5) and P7 = conv3x3/2(P6), no ReLU in between. To match the YOLACT reference
(dbolya/yolact ``yolact.py`` FPN with ``fpn_base``: ``interpolation_mode="bilinear"``,
``relu_pred_layers=True``, ``relu_downsample_layers=False``, ``use_conv_downsample=True``) also pass
``upsample_mode="bilinear", relu_outputs=True``, or use :func:`yolact_fpn`. There the ReLU is
applied to P3..P5 before P6 is computed from P5, and this module does the same.

RetinaNet style (Detectron2 ``LastLevelP6P7``): ``extra="convs", num_extra=2, extra_from="input",
extra_relu=True``: P6 = conv(C5), P7 = conv(relu(P6)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.layers.conv import ConvNormAct, c2_xavier_fill
from instaseg.layers.shape_spec import ShapeSpec

__all__ = ["FPN", "rcnn_fpn", "yolact_fpn", "upsample_to", "extra_levels"]

_EXTRA_KINDS = ("maxpool", "convs", "none")


class FPN(nn.Module):
    """Top-down feature pyramid with lateral connections, plus optional extra coarser levels.

    Args:
        in_channels: channels of the input maps, in increasing stride order (e.g. C2..C5).
        in_strides: their strides; powers of two, increasing.
        out_channels: channels of every output level.
        extra: "maxpool" (P6 = max_pool2d(P5, 1, stride=2), repeated ``num_extra`` times), "convs"
            (``num_extra`` 3x3 stride-2 convs with bias, no norm, in ``extra_convs``) or "none".
        extra_from: "output" (first extra conv reads the last output level, e.g. P5) or "input"
            (it reads the last input map, e.g. C5). Only used with ``extra="convs"``.
        norm: :func:`get_norm` name for the lateral and output convs (their bias is off with one).
        upsample_mode: "nearest" (Mask R-CNN) or "bilinear" (YOLACT; ``align_corners=False``). The
            coarser map is resized to the lateral's exact size, so odd sizes work.
        relu_outputs: apply ReLU to the pyramid outputs before the extra levels (YOLACT).
        extra_relu: apply ReLU before each extra conv after the first (RetinaNet's P7).

    ``forward([C_i (N, in_channels[i], H_i, W_i)]) -> {"p{log2 s}": (N, out_channels, H_s, W_s)}``
    in increasing stride; output level i has input level i's size, each extra level
    ``ceil(previous / 2)``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        out_channels: int = 256,
        *,
        extra: str = "maxpool",
        num_extra: int = 1,
        extra_from: str = "output",
        norm: str | None = "",
        upsample_mode: str = "nearest",
        relu_outputs: bool = False,
        extra_relu: bool = False,
    ) -> None:
        super().__init__()
        _check_arguments(in_channels, in_strides, extra, num_extra, extra_from, upsample_mode)
        self.extra = extra
        self.num_extra = 0 if extra == "none" else num_extra
        self.extra_from = extra_from
        self.upsample_mode = upsample_mode
        self.relu_outputs = relu_outputs
        self.extra_relu = extra_relu
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, out_channels, 1, norm=norm, activation=None) for c in in_channels
        )
        self.output_convs = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm=norm, activation=None)
            for _ in in_channels
        )
        self.extra_convs = nn.ModuleList()
        if extra == "convs":
            first_in = in_channels[-1] if extra_from == "input" else out_channels
            for index in range(num_extra):
                conv_in = first_in if index == 0 else out_channels
                self.extra_convs.append(
                    ConvNormAct(conv_in, out_channels, 3, stride=2, activation=None)
                )
        # Detectron2 / torchvision FPN init: kaiming uniform a=1 ("XavierFill"), bias 0.
        for conv in [*self.lateral_convs, *self.output_convs, *self.extra_convs]:
            c2_xavier_fill(conv)
        strides = list(in_strides) + [in_strides[-1] * 2 ** (k + 1) for k in range(self.num_extra)]
        self._shapes = {f"p{int(math.log2(s))}": ShapeSpec(out_channels, s) for s in strides}

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride of each output level, e.g. ``{"p2": ShapeSpec(256, 4), ...}``."""
        return dict(self._shapes)

    def forward(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        if len(features) != len(self.lateral_convs):
            expected = len(self.lateral_convs)
            raise ValueError(f"expected {expected} feature maps, got {len(features)}")
        merged = self.lateral_convs[-1](features[-1])
        outputs = [self.output_convs[-1](merged)]
        for index in range(len(features) - 2, -1, -1):
            merged = self._add_upsampled(self.lateral_convs[index](features[index]), merged)
            outputs.insert(0, self.output_convs[index](merged))
        if self.relu_outputs:
            outputs = [F.relu(out, inplace=True) for out in outputs]
        outputs.extend(extra_levels(self, self.extra_convs, outputs[-1], features[-1]))
        return dict(zip(self._shapes, outputs))

    def _add_upsampled(self, lateral: Tensor, coarse: Tensor) -> Tensor:
        """``lateral + upsample(coarse)`` to the lateral's size, written into ``lateral``.

        In place: the lateral conv's backward does not need its output. Nearest 2x upsampling
        repeats each coarse pixel over a 2x2 block, so it is added through a broadcast view of
        the lateral's blocks instead of materialising the upsampled map (one pass less over P2).
        """
        (h, w), (coarse_h, coarse_w) = lateral.shape[-2:], coarse.shape[-2:]
        if self.upsample_mode == "nearest" and (h, w) == (2 * coarse_h, 2 * coarse_w):
            blocks = lateral.unflatten(3, (coarse_w, 2)).unflatten(2, (coarse_h, 2))  # (N, C, h/2, 2, w/2, 2)
            blocks.add_(coarse[:, :, :, None, :, None])
            return lateral
        return lateral.add_(upsample_to(coarse, lateral.shape[-2:], self.upsample_mode))


def upsample_to(coarse: Tensor, size: Sequence[int], mode: str) -> Tensor:
    """``coarse (N, C, h, w)`` resized to ``size = (H, W)``: "nearest", or "bilinear" without corner alignment."""
    if mode == "nearest":
        return F.interpolate(coarse, size=size, mode="nearest")
    return F.interpolate(coarse, size=size, mode=mode, align_corners=False)


def extra_levels(fpn: nn.Module, convs: Sequence[nn.Module], last_output: Tensor, last_input: Tensor) -> list[Tensor]:
    """The levels coarser than the inputs', as the settings of ``fpn`` (an :class:`FPN`, or the int8
    one: ``extra``, ``num_extra``, ``extra_from``, ``extra_relu``) make them from the last output and
    input levels (float maps), with ``convs`` as the extra convolutions."""
    levels: list[Tensor] = []
    if fpn.extra == "maxpool":
        x = last_output
        for _ in range(fpn.num_extra):
            x = F.max_pool2d(x, kernel_size=1, stride=2)
            levels.append(x)
    elif fpn.extra == "convs":
        x = last_input if fpn.extra_from == "input" else last_output
        for index, conv in enumerate(convs):
            if index > 0 and fpn.extra_relu:
                x = F.relu(x)
            x = conv(x)
            levels.append(x)
    return levels


def _check_arguments(
    in_channels: Sequence[int],
    in_strides: Sequence[int],
    extra: str,
    num_extra: int,
    extra_from: str,
    upsample_mode: str,
) -> None:
    if len(in_channels) == 0 or len(in_channels) != len(in_strides):
        raise ValueError("in_channels and in_strides must be non-empty and of equal length")
    if any(s <= 0 or s & (s - 1) for s in in_strides):
        raise ValueError(f"in_strides must be powers of two, got {list(in_strides)}")
    if any(a >= b for a, b in zip(in_strides, in_strides[1:])):
        raise ValueError(f"in_strides must increase, got {list(in_strides)}")
    if extra not in _EXTRA_KINDS:
        raise ValueError(f"extra must be one of {_EXTRA_KINDS}, got {extra!r}")
    if extra != "none" and num_extra < 1:
        raise ValueError("num_extra must be >= 1 (use extra='none' for no extra levels)")
    if extra_from not in ("output", "input"):
        raise ValueError(f"extra_from must be 'output' or 'input', got {extra_from!r}")
    if upsample_mode not in ("nearest", "bilinear"):
        raise ValueError(f"upsample_mode must be 'nearest' or 'bilinear', got {upsample_mode!r}")


def rcnn_fpn(
    in_channels: Sequence[int] = (256, 512, 1024, 2048),
    out_channels: int = 256,
    norm: str | None = "",
    *,
    in_strides: Sequence[int] = (4, 8, 16, 32),
    extra: str = "maxpool",
    num_extra: int = 1,
    extra_from: str = "output",
    relu_outputs: bool = False,
) -> FPN:
    """Mask R-CNN's FPN (nearest upsampling); the one ``instaseg.detectors.build`` builds.

    With the defaults, on res2..res5 (strides 4..32): outputs p2..p6, P6 max-pooled from P5.
    """
    return FPN(in_channels, in_strides, out_channels, extra=extra, num_extra=num_extra, extra_from=extra_from,
               norm=norm, relu_outputs=relu_outputs)


def yolact_fpn(
    in_channels: Sequence[int] = (512, 1024, 2048),
    out_channels: int = 256,
    *,
    in_strides: Sequence[int] = (8, 16, 32),
    num_extra: int = 2,
    extra_from: str = "output",
    relu_outputs: bool = True,
) -> FPN:
    """YOLACT's FPN (bilinear upsampling, extra levels by strided convs); the one
    ``instaseg.detectors.build`` builds.

    With the defaults, on res3..res5 (strides 8..32): p3..p7 as in the reference (see module doc).
    MMDetection's variant: ``extra_from="input", relu_outputs=False``.
    """
    return FPN(
        in_channels,
        in_strides,
        out_channels,
        extra="convs",
        num_extra=num_extra,
        extra_from=extra_from,
        upsample_mode="bilinear",
        relu_outputs=relu_outputs,
    )
