"""YOLACT++'s fast mask re-scoring network (Bolya et al. 2020, Sec. 4.2; ``FastMaskIoUNet``).

Six convolutions with ReLU (five 3x3 stride-2 without padding, then a 1x1 to one output per
class), then global max pooling: the predicted IoU of a cropped, unthresholded mask with its
ground truth, for every class. Layer sizes follow dbolya/yolact ``maskiou_net``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MaskRescoringHead"]


class MaskRescoringHead(nn.Module):
    """``forward(mask_probs (N, H, W)) -> predicted IoU (N, num_classes)``.

    The input is the cropped mask probability at prototype resolution (138x138 for 550 px); with
    five stride-2 unpadded 3x3 convs the map must be at least 63 px wide for every conv to have
    input; smaller inputs are padded up to that size (zeros: outside the crop, nothing).
    """

    def __init__(self, num_classes: int, channels: Sequence[int] = (8, 16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for out_channels in channels:
            layers.append(nn.Conv2d(in_channels, out_channels, 3, stride=2))
            in_channels = out_channels
        layers.append(nn.Conv2d(in_channels, num_classes, 1))
        self.convs = nn.ModuleList(layers)
        self.min_size = 2 ** (len(channels) + 1) - 1  # smallest input giving a 1x1 map after the strides
        for conv in self.convs:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, mask_probs: Tensor) -> Tensor:
        x = mask_probs[:, None]
        h, w = x.shape[-2:]
        if h < self.min_size or w < self.min_size:
            x = F.pad(x, (0, max(0, self.min_size - w), 0, max(0, self.min_size - h)))
        for conv in self.convs:
            x = F.relu(conv(x))  # the reference keeps the last ReLU: IoU targets are >= 0
        return x.amax(dim=(2, 3))
