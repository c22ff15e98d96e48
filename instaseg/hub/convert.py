"""Peer checkpoint files -> instaseg checkpoints: ``instaseg convert`` and the weights cache.

``instaseg.weights`` translates a publisher's file into instaseg tensors and the config they fit
(:class:`~instaseg.weights.common.ConvertedWeights`); here the model is built, the tensors loaded
strictly (nothing missing, nothing unused, no shape mismatch: a converter that forgot a tensor
fails here, not at inference) and the checkpoint written.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from instaseg.config.schema import Config
from instaseg.detectors.build import build_from_config
from instaseg.engine.checkpoint import load_state_dict_checked, save_checkpoint
from instaseg.weights.common import ConversionSummary, ConvertedWeights
from instaseg.weights.detectron2 import read_detectron2_file
from instaseg.weights.torchvision import TORCHVISION_COCO_BN_EPS, read_torchvision_file
from instaseg.weights.yolact import read_yolact_file

__all__ = ["save_converted", "save_weights", "convert_torchvision_file", "convert_detectron2_file",
           "convert_yolact_file", "convert_mmdet_file"]


def save_converted(state: dict[str, Tensor], config: Config, dst: str | Path, source: str,
                   categories: dict[str, list] | None = None) -> int:
    """Build ``config``'s model, load ``state`` strictly (nothing missing, nothing unused, no shape
    mismatch) and save an instaseg checkpoint at ``dst``. Returns the number of tensors loaded.

    ``categories`` (``{"ids": [...], "names": [...]}`` in label order), when the source names its
    classes, is stored as ``instaseg train`` stores it (``checkpoint_categories`` reads it back)."""
    model = build_from_config(config)
    load_state_dict_checked(model, state, allow_partial=False, source=source)
    extra = {} if categories is None else {"categories": categories}
    save_checkpoint(dst, model.eval(), config, **extra)
    return len(state)


def save_weights(converted: ConvertedWeights, dst: str | Path, source: str) -> ConversionSummary:
    """:func:`save_converted` for what a ``read_*_file`` converter returned; its summary."""
    save_converted(converted.state, converted.config, dst, source, categories=converted.categories)
    return converted.summary


def convert_torchvision_file(src: str | Path, dst: str | Path,
                             source_bn_eps: float = TORCHVISION_COCO_BN_EPS) -> ConversionSummary:
    """Convert a torchvision Mask R-CNN file (a state dict, or ``{"model"|"state_dict": ...}``,
    read with ``weights_only=True``) into an instaseg checkpoint at ``dst``."""
    return save_weights(read_torchvision_file(src, source_bn_eps), dst, str(src))


def convert_detectron2_file(src: str | Path, dst: str | Path) -> ConversionSummary:
    """Convert a Detectron2 model-zoo Mask R-CNN ``.pkl`` / ``.pth`` into an instaseg checkpoint."""
    return save_weights(read_detectron2_file(src), dst, str(src))


def convert_yolact_file(src: str | Path, dst: str | Path) -> ConversionSummary:
    """Convert a dbolya/yolact ``.pth`` (read without running code) into an instaseg checkpoint."""
    return save_weights(read_yolact_file(src), dst, str(src))


def convert_mmdet_file(src: str | Path, dst: str | Path, style: str | None = None) -> ConversionSummary:
    """Convert an MMDetection 2.x/3.x Mask R-CNN, MS R-CNN or YOLACT ``.pth`` (read with
    ``weights_only=True``) into an instaseg checkpoint at ``dst``, with the meta's class names."""
    from instaseg.weights.mmdet import read_mmdet_file  # an optional part: imported when used

    return save_weights(read_mmdet_file(src, style), dst, str(src))
