"""Convolution helpers: plain conv factories, conv + norm + activation, and Caffe2-style inits."""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from instaseg.layers.fusion import folded_conv_weights
from instaseg.layers.norm import get_norm

__all__ = ["conv3x3", "conv1x1", "ConvNormAct", "c2_msra_fill", "c2_xavier_fill"]


def conv3x3(
    in_channels: int,
    out_channels: int,
    stride: int = 1,
    groups: int = 1,
    dilation: int = 1,
    bias: bool = True,
) -> nn.Conv2d:
    """A plain 3x3 ``nn.Conv2d`` with "same" padding (``padding = dilation``).

    Output size is ``ceil(H / stride) x ceil(W / stride)``. No norm or activation: use
    :class:`ConvNormAct` for those. Backbones pass ``bias=False`` (a norm follows).
    """
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        groups=groups,
        bias=bias,
    )


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """A plain 1x1 ``nn.Conv2d``; output size ``ceil(H / stride) x ceil(W / stride)``."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias)


class ConvNormAct(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm and an optional activation.

    It *is* the convolution (its ``weight``/``bias`` keys are the conv's, Detectron2's layout), with
    ``norm`` and ``activation`` submodules, so a plain conv's state dict loads when both are off.

    Args:
        kernel_size: square kernel; ``padding=None`` means "same" (``dilation * (k - 1) // 2``).
        norm: a :func:`get_norm` name ("", "FrozenBN", "BN", "SyncBN", "GN").
        activation: a module class or factory (``nn.ReLU``) called with no arguments, a module
            instance, or None.
        bias: None means "on exactly when there is no norm" (a norm's shift makes it redundant).

    Input ``(N, in_channels, H, W)`` -> ``(N, out_channels, H', W')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        norm: str | None = "",
        activation: Callable[[], nn.Module] | nn.Module | None = nn.ReLU,
        bias: bool | None = None,
    ) -> None:
        norm_layer = get_norm(norm, out_channels)
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        if bias is None:
            bias = norm_layer is None
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.norm = norm_layer
        if activation is None or isinstance(activation, nn.Module):
            self.activation = activation
        else:
            self.activation = activation()

    def forward(self, x: Tensor) -> Tensor:
        # A FrozenBatchNorm2d is folded into the weights (see layers/fusion.py).
        folded = None if self.norm is None else folded_conv_weights(self, self.norm, x)
        if folded is not None:
            x = self._conv_forward(x, *folded)
        else:
            x = self._conv_forward(x, self.weight, self.bias)
            if self.norm is not None:
                x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def c2_msra_fill(module: nn.Module) -> None:
    """Kaiming-normal init (fan_out, ReLU gain) of ``module.weight``; bias set to 0.

    Caffe2's "MSRAFill", used by Detectron2 for conv layers followed by ReLU (e.g. mask head convs).
    """
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0.0)


def c2_xavier_fill(module: nn.Module) -> None:
    """Kaiming-uniform init with ``a=1`` of ``module.weight``: U(-sqrt(3/fan_in), +sqrt(3/fan_in)).

    This is Caffe2's "XavierFill" (which uses fan_in only), as Detectron2 uses it for FPN convs;
    torchvision's FPN uses the same init. Bias set to 0.
    """
    nn.init.kaiming_uniform_(module.weight, a=1)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0.0)
