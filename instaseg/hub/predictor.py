"""``Predictor``: a trained model behind one call, for files, PIL images, arrays and tensors.

It sits on the top floor because it loads models (``from_checkpoint``, ``from_pretrained``); the
inference itself is the model's own ``predict`` (and ``instaseg.engine.tiling`` for large images).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from instaseg.config.schema import Config
from instaseg.data.image_io import read_image, to_rgb_array
from instaseg.errors import InstasegError
from instaseg.hub.build import load_model
from instaseg.hub.outputs import predicts_masks
from instaseg.hub.pretrained import resolve_checkpoint
from instaseg.structures.instances import CroppedInstances, Instances

__all__ = ["Predictor", "as_image_tensor"]

ImageInput = Union[str, Path, Image.Image, np.ndarray, Tensor]


def as_image_tensor(image: ImageInput, keep_uint8: bool = False) -> Tensor:
    """Any supported input -> ``(3, H, W)`` float32 RGB in [0, 255].

    Accepts a file path, a PIL image, an ``(H, W, 3)`` uint8 RGB array (or ``(H, W)`` gray), or a
    ``(3, H, W)`` tensor (uint8, or float in [0, 255]; a float tensor whose values are all within
    [0, 1] is taken to be in [0, 1] and scaled). ``keep_uint8``: uint8 inputs stay uint8 (a
    quarter of the memory, for large images cut into tiles later).
    """
    if isinstance(image, (str, Path)):
        image = read_image(image)
    elif isinstance(image, Image.Image):
        image = to_rgb_array(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise InstasegError(f"expected an (H, W, 3) RGB array, got shape {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return tensor if keep_uint8 and tensor.dtype == torch.uint8 else tensor.float()
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise InstasegError(f"expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image if keep_uint8 else image.float()
        image = image.float()
        return image * 255.0 if image.numel() and float(image.max()) <= 1.0 else image
    raise InstasegError(f"unsupported image input of type {type(image).__name__}")


class Predictor:
    """``Predictor.from_checkpoint(path)(image) -> Instances`` in original image coordinates
    (``Predictor.from_pretrained(name)`` for published weights).

    ``predictor([img1, img2])`` returns a list; ``score_threshold`` drops weaker detections.
    ``best_score`` is the highest score of any detection so far, before the threshold (None until
    there is one): what to tell someone whose threshold kept nothing.
    """

    def __init__(self, model: nn.Module, config: Config, device: str | torch.device = "cpu",
                 score_threshold: float = 0.0) -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.device = torch.device(device)
        self.score_threshold = score_threshold
        self.best_score: float | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        score_threshold: float = 0.0, allow_partial: bool = False,
                        overrides: Sequence[str] = (), max_detections: int | None = None) -> "Predictor":
        """Load ``path`` safely (``weights_only``: a pickle that would run code is refused).

        ``allow_partial`` loads only the tensors that fit the model the checkpoint's config builds
        (the others keep their initial values); without it a misfit raises ``CheckpointError``.
        ``overrides`` (``"key=value"``) and ``max_detections`` change the stored config first
        (:func:`instaseg.hub.load_model`).
        """
        model, config = load_model(path, allow_partial=allow_partial, overrides=overrides,
                                   max_detections=max_detections)
        return cls(model, config, device, score_threshold)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu",
                        score_threshold: float = 0.0, overrides: Sequence[str] = (),
                        max_detections: int | None = None) -> "Predictor":
        """``Predictor.from_pretrained("maskrcnn_r50_fpn_3x_coco_d2")``: published weights by catalogue name
        (``instaseg weights list``; fetched, checked and converted once, then read from the cache), or an
        instaseg checkpoint path; ``overrides`` and ``max_detections`` as :meth:`from_checkpoint`."""
        return cls.from_checkpoint(resolve_checkpoint(name_or_path), device, score_threshold, overrides=overrides,
                                   max_detections=max_detections)

    @torch.no_grad()
    def __call__(self, images: ImageInput | list[ImageInput]) -> Instances | list[Instances]:
        single = not isinstance(images, (list, tuple))
        batch = [as_image_tensor(img).to(self.device) for img in ([images] if single else images)]
        results = self.predict(batch)
        if self.score_threshold > 0:
            results = [r[r.scores >= self.score_threshold] for r in results]
        return results[0] if single else results

    @torch.no_grad()
    def predict(self, images: list[Tensor]) -> list[Instances]:
        """The model's ``predict`` on ``(3, H, W)`` float tensors, recording ``best_score``; no threshold."""
        results = self.model.predict([img.to(self.device) for img in images])
        top = [float(r.scores.max()) for r in results if len(r)]
        if top:
            self.best_score = max(top if self.best_score is None else [*top, self.best_score])
        return results

    def check_tiling(self) -> None:
        """Raise ``InstasegError`` when this model cannot predict by tiles (:meth:`predict_tiled`)."""
        if not predicts_masks(self.config):
            raise InstasegError(f"sliced inference (--tile) merges the tiles' detections by their masks, and "
                                f"{self.config.name} predicts none (boxes and keypoints only): predict without "
                                "--tile (the model resizes the image to its test size)")

    @torch.no_grad()
    def predict_tiled(self, image: ImageInput, tile: int, overlap: float = 0.2,
                      batch_size: int = 4) -> CroppedInstances:
        """Sliced inference on one large image: overlapping ``tile`` px tiles, ``batch_size`` per forward.

        ``overlap`` is the fraction of a tile shared with each neighbour (in [0, 1)). Detections
        seen by several tiles are merged (rule: :mod:`instaseg.engine.tile_merge`). Returns
        :class:`CroppedInstances` in image coordinates with masks kept as crops:
        ``.to_instances()`` makes full ``(N, H, W)`` masks, ``.masks.to_rles()`` COCO RLEs.
        ``score_threshold`` applies to each tile's detections (``best_score`` sees them all).
        A model without masks (boxes + keypoints) is refused: tiles are merged by mask overlap.
        """
        from instaseg.engine.tiling import sliced_predict

        self.check_tiling()
        return sliced_predict(self, as_image_tensor(image, keep_uint8=True), tile, overlap,
                              batch_size=batch_size, score_threshold=self.score_threshold, device=self.device)
