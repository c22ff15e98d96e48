"""ShapeSpec: what a feature map looks like, so heads can size themselves from a backbone/neck."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ShapeSpec"]


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride of one feature map.

    ``stride`` is the input-image pixels per feature cell (res2 = 4, ..., res5 = 32), the way
    Detectron2 backbones report it; a feature map of an ``H x W`` image is
    ``ceil(H / stride) x ceil(W / stride)`` for the ResNet/FPN layers in this package.
    """

    channels: int
    stride: int
