"""Box heads on pooled RoI features, and the box predictor: layers only."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FCBoxHead", "Res5Head", "BoxPredictor"]


class FCBoxHead(nn.Module):
    """``num_fc`` fully connected layers with ReLU (the FPN box head: 2 x FC-1024).

    ``(K, C, R, R) -> (K, fc_dim)``.
    """

    def __init__(self, in_channels: int, resolution: int, fc_dim: int = 1024, num_fc: int = 2) -> None:
        super().__init__()
        dims = [in_channels * resolution * resolution] + [fc_dim] * num_fc
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        for fc in self.fcs:  # Detectron2's c2_xavier_fill
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        self.out_features = dims[-1]

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for fc in self.fcs:
            x = torch.relu(fc(x))
        return x


class Res5Head(nn.Module):
    """The C4 RoI head: the backbone's res5 stage applied to 14x14 RoI features.

    ``(K, 1024, 14, 14) -> (K, 2048, 7, 7)``; the box branch averages it to ``(K, 2048)`` and the
    mask branch deconvolves the same map (the C4 model shares res5 between the two).
    """

    def __init__(self, stage: nn.Sequential, out_channels: int) -> None:
        super().__init__()
        self.res5 = stage
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x)


class BoxPredictor(nn.Module):
    """Class logits ``(K, C + 1)`` (background LAST) and class-specific box deltas ``(K, 4 * C)``."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() > 2:
            x = x.mean(dim=(2, 3)) if x.dim() == 4 else x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)
