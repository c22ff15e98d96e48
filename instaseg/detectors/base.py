"""The detector contract: what the engine, the Predictor and the exporters may call on a model.

:class:`Detector` is the abstract base every instaseg detector derives from. It declares

* ``forward(images, targets=None) -> raw``: a small dataclass of tensors, one type for training
  (what ``loss`` reads) and one for inference (what ``postprocess`` reads); each is filled
  completely, so no field is ``None`` because of the mode;
* ``loss(raw, targets) -> (total, {name: scalar})`` on a training-mode ``raw``;
* ``postprocess(raw, image_sizes) -> list[Instances]`` on an inference-mode ``raw``: suppression
  (NMS) and mask assembly run here, not in ``forward``;

and adds ``predict`` = ``postprocess(forward(images))`` in eval mode.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from instaseg.structures.instances import Instances, Targets

__all__ = ["Detector", "full_precision"]


def full_precision(x: Tensor) -> Tensor:
    """``x`` in float32 when it is a 16-bit float (a layer's output under autocast), else ``x``.

    Box decoding, scores and mask thresholds stay in full precision in a bfloat16 inference mode.
    """
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


class Detector(nn.Module, metaclass=ABCMeta):
    """An instaseg detector: ``forward``, ``loss`` and ``postprocess`` (abstract) and ``predict``.

    Subclasses set ``num_classes`` (foreground classes) and implement the three methods.
    """

    num_classes: int

    @abstractmethod
    def forward(self, images: list[Tensor], targets: list[Targets] | None = None) -> Any:
        """RGB ``(3, H, W)`` images in [0, 255] -> raw outputs (training: needs ``targets``)."""

    @abstractmethod
    def loss(self, raw: Any, targets: list[Targets]) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its named scalar terms, from a training-mode ``forward``'s outputs."""

    @abstractmethod
    def postprocess(self, raw: Any, image_sizes: list[tuple[int, int]]) -> list[Instances]:
        """Instances in the original images (``image_sizes[i] = (H, W)``) from an inference-mode
        ``forward``'s outputs."""

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
