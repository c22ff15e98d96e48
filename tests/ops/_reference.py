"""Slow float64 references shared by the RoIAlign-based ops' tests."""

from __future__ import annotations

import torch


def bilinear_sample(feature: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """``(C,)`` bilinear sample of ``feature (C, H, W)`` at ``(y, x)`` with the RoIAlign kernel's edge rule
    (zero beyond one pixel outside, clamped to the last row/column), as torchvision's CPU kernel."""
    channels, height, width = feature.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(channels, dtype=torch.float64)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * feature[:, y_low, x_low]
        + hy * lx * feature[:, y_low, x_high]
        + ly * hx * feature[:, y_high, x_low]
        + ly * lx * feature[:, y_high, x_high]
    )
