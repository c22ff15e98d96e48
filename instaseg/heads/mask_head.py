"""Mask heads: layers only. Output logits ``(K, num_outputs, 2R, 2R)`` or ``(K, num_outputs, R', R')``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from instaseg.layers.fusion import to_channels_last

__all__ = ["MaskFCNHead", "MaskMLPHead"]


def _msra_fill(layer: nn.Module) -> None:
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class MaskFCNHead(nn.Module):
    """The paper's FCN mask head: ``num_convs`` x conv3x3 + ReLU, 2x2 deconv + ReLU, 1x1 logits.

    ``(K, C_in, R, R) -> (K, num_outputs, 2R, 2R)``. ``num_outputs`` is ``num_classes`` for the
    per-class sigmoid, 1 for a class-agnostic mask, ``num_classes + 1`` for the softmax ablation.
    With ``num_convs=0`` it is the C4 head (deconv directly on res5 features).
    """

    def __init__(self, in_channels: int, conv_dim: int, num_convs: int, num_outputs: int) -> None:
        super().__init__()
        convs = []
        channels = in_channels
        for _ in range(num_convs):
            convs.append(nn.Conv2d(channels, conv_dim, kernel_size=3, padding=1))
            channels = conv_dim
        self.convs = nn.ModuleList(convs)
        self.deconv = nn.ConvTranspose2d(channels, conv_dim, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_outputs, kernel_size=1)
        for layer in [*self.convs, self.deconv]:
            _msra_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = to_channels_last(x)  # at inference: pooled RoI features arrive NCHW, oneDNN prefers channels-last
        for conv in self.convs:
            x = conv(x).relu_()  # in place: a conv's backward does not need its output
        return self.predictor(self.deconv(x).relu_())


class MaskMLPHead(nn.Module):
    """The MLP mask head of the paper's Table 2(e): FC 1024 -> FC 1024 -> FC num_outputs x M x M.

    ``(K, C_in, R, R) -> (K, num_outputs, M, M)`` with ``M = 2R`` (the FCN head's resolution).
    """

    def __init__(self, in_channels: int, resolution: int, num_outputs: int, fc_dim: int = 1024) -> None:
        super().__init__()
        self.mask_size = 2 * resolution
        self.num_outputs = num_outputs
        self.fc1 = nn.Linear(in_channels * resolution * resolution, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.predictor = nn.Linear(fc_dim, num_outputs * self.mask_size**2)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1)))))
        return self.predictor(x).view(-1, self.num_outputs, self.mask_size, self.mask_size)
