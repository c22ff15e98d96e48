"""Region Proposal Network head (Ren et al. 2015): layers only."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["RPNHead"]


class RPNHead(nn.Module):
    """A shared 3x3 conv, then per-anchor objectness logits and box deltas, on every level.

    ``forward(features)`` takes a list of ``(B, C, H_l, W_l)`` maps and returns
    ``objectness_logits``: list of ``(B, H_l * W_l * A)`` and ``anchor_deltas``: list of
    ``(B, H_l * W_l * A, 4)``, flattened location-major then anchor (the anchor generator's order).
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = self.conv(x).relu_()  # in place: the conv's backward does not need its output
            b, _, h, w = t.shape
            logits.append(self.objectness_logits(t).permute(0, 2, 3, 1).reshape(b, -1))
            d = self.anchor_deltas(t).view(b, -1, 4, h, w).permute(0, 3, 4, 1, 2)
            deltas.append(d.reshape(b, -1, 4))
        return logits, deltas
