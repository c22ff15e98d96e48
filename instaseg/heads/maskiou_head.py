"""Mask Scoring R-CNN's MaskIoU head (Huang et al. 2019, Sec. 3.3): layers only."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MaskIoUHead"]


class MaskIoUHead(nn.Module):
    """Regresses the IoU of a predicted mask with its ground truth, one output per class.

    Input: RoI features ``(P, C, R, R)`` (R = 14) concatenated with the RoI's predicted mask of its
    class ``(P, 2R, 2R)`` max-pooled 2x2 to ``R x R``; 4 conv3x3 (the last with stride 2), 2 FC,
    one FC with ``num_classes`` outputs: ``-> (P, num_classes)``.
    """

    def __init__(self, in_channels: int, num_classes: int, resolution: int = 14, conv_dim: int = 256,
                 fc_dim: int = 1024) -> None:
        super().__init__()
        convs = []
        channels = in_channels + 1
        for index in range(4):
            convs.append(nn.Conv2d(channels, conv_dim, 3, stride=2 if index == 3 else 1, padding=1))
            channels = conv_dim
        self.convs = nn.ModuleList(convs)
        pooled = (resolution + 1) // 2
        self.fc1 = nn.Linear(conv_dim * pooled * pooled, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.predictor = nn.Linear(fc_dim, num_classes)
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, roi_features: Tensor, mask_probs: Tensor) -> Tensor:
        """``roi_features (P, C, R, R)``, ``mask_probs (P, 2R, 2R)`` -> ``(P, num_classes)``."""
        pooled = F.max_pool2d(mask_probs[:, None], kernel_size=2, stride=2)
        x = torch.cat([roi_features, pooled], dim=1)
        for conv in self.convs:
            x = torch.relu(conv(x))
        x = torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1)))))
        return self.predictor(x)
