"""What every instaseg detector shares: ``predict`` on top of the forward/postprocess contract."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from instaseg.structures.instances import Instances

__all__ = ["Detector", "full_precision"]


def full_precision(x: Tensor) -> Tensor:
    """``x`` in float32 when it is a 16-bit float (a layer's output under autocast), else ``x``.

    Box decoding, scores and mask thresholds stay in full precision in a bfloat16 inference mode.
    """
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


class Detector(nn.Module):
    """A detector implements ``forward(images, targets=None)``, ``loss(raw, targets)`` and
    ``postprocess(raw, image_sizes)``; this base adds ``predict`` from the last two."""

    num_classes: int

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[Instances]:
        """Inference on RGB ``(3, H, W)`` images in [0, 255]: ``postprocess(forward(images))``."""
        was_training = self.training
        self.eval()
        try:
            raw = self.forward(images)
            return self.postprocess(raw, [tuple(img.shape[-2:]) for img in images])
        finally:
            self.train(was_training)
