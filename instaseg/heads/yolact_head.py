"""YOLACT's layers (Bolya et al. 2019): ProtoNet, the shared prediction head, the semantic seg conv.

Layers only: no anchors, no matching, no loss. Layer order and sizes follow dbolya/yolact
(``yolact.py``: ``mask_proto_net``, ``PredictionModule`` with ``extra_head_net = [(256, 3)]``),
so that its released weights map one to one (``instaseg.weights.yolact``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ProtoNet", "YolactPredictionHead", "SemanticSegHead"]


def _xavier(module: nn.Module) -> None:
    # The reference initialises every non-backbone conv with xavier_uniform and zero bias.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ProtoNet(nn.Module):
    """3 x conv3x3, bilinear ``upsample``x (the paper: 2), conv3x3, conv1x1 to ``num_prototypes``;
    ReLU after each.

    ``forward(p3 (B, C, H, W)) -> prototypes (B, k, uH, uW)``, non-negative (ReLU: the paper's
    prototype activation). On a 550 px input P3 is 69x69 and the prototypes are 138x138.
    """

    def __init__(self, in_channels: int = 256, hidden: int = 256, num_prototypes: int = 32,
                 upsample: int = 2) -> None:
        super().__init__()
        if upsample < 1:
            raise ValueError(f"ProtoNet upsample must be >= 1, got {upsample}")
        self.upsample = int(upsample)
        self.convs = nn.ModuleList(
            [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1) for i in range(3)]
        )
        self.post_conv = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out_conv = nn.Conv2d(hidden, num_prototypes, 1)
        self.num_prototypes = num_prototypes
        _xavier(self)

    def forward(self, p3: Tensor) -> Tensor:
        x = p3
        for conv in self.convs:
            x = F.relu(conv(x))
        # The reference applies a ReLU after its interpolation layer too (a no-op on ReLU'd input).
        x = F.interpolate(x, scale_factor=float(self.upsample), mode="bilinear", align_corners=False)
        x = F.relu(self.post_conv(x))
        return F.relu(self.out_conv(x))


class YolactPredictionHead(nn.Module):
    """One head shared by all FPN levels: class logits, box deltas and mask coefficients per anchor.

    ``forward([P_l (B, C, H_l, W_l)])`` returns, over all levels concatenated in anchor order
    (level, row, column, anchor; the order of :func:`instaseg.targets.anchors.yolact_anchors`):

    * ``class_logits (B, A, num_classes + 1)``: foreground classes ``0..C-1``, background LAST
      (as in instaseg's Mask R-CNN predictor; the reference puts it first, the converter permutes);
    * ``box_deltas (B, A, 4)``: SSD/R-CNN deltas for ``BoxCoder((10, 10, 5, 5))``;
    * ``mask_coefficients (B, A, k)`` in ``[-1, 1]`` (tanh).
    """

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int, num_prototypes: int = 32,
                 hidden: int = 256) -> None:
        super().__init__()
        self.num_classes, self.num_anchors, self.num_prototypes = num_classes, num_anchors, num_prototypes
        self.upfeature = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.bbox_layer = nn.Conv2d(hidden, num_anchors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(hidden, num_anchors * (num_classes + 1), 3, padding=1)
        self.mask_layer = nn.Conv2d(hidden, num_anchors * num_prototypes, 3, padding=1)
        _xavier(self)

    @staticmethod
    def _flatten(x: Tensor, per_anchor: int) -> Tensor:
        # (B, A*K, H, W) -> (B, H*W*A, K): location-major, anchor-minor.
        b = x.shape[0]
        return x.permute(0, 2, 3, 1).reshape(b, -1, per_anchor)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        logits, deltas, coefficients = [], [], []
        for x in features:
            x = F.relu(self.upfeature(x))
            deltas.append(self._flatten(self.bbox_layer(x), 4))
            logits.append(self._flatten(self.conf_layer(x), self.num_classes + 1))
            coefficients.append(self._flatten(self.mask_layer(x), self.num_prototypes))
        return torch.cat(logits, 1), torch.cat(deltas, 1), torch.tanh(torch.cat(coefficients, 1))


class SemanticSegHead(nn.Module):
    """The auxiliary 1x1 conv on P3: ``(B, C_in, H, W) -> (B, num_classes, H, W)`` logits (training only)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 1)
        _xavier(self)

    def forward(self, p3: Tensor) -> Tensor:
        return self.conv(p3)
