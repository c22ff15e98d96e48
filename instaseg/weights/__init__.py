"""Converters from peer checkpoints: torchvision and Detectron2 Mask R-CNN, YOLACT/YOLACT++, MMDetection
Mask R-CNN / MS R-CNN / YOLACT, ImageNet backbones.

Every file is read without running code from it (``instaseg.weights.safe_pickle``).
"""

from instaseg.weights.backbone import load_backbone_weights, read_backbone_weights
from instaseg.weights.detectron2 import (
    convert_detectron2_file,
    convert_detectron2_maskrcnn,
    to_detectron2_maskrcnn,
)
from instaseg.weights.mmdet import convert_mmdet_checkpoint, convert_mmdet_file, to_mmdet_state_dict
from instaseg.weights.safe_pickle import RestrictedUnpickler, load_weights_file, safe_load_pickle
from instaseg.weights.torchvision import (
    ConversionSummary,
    convert_torchvision_file,
    convert_torchvision_maskrcnn,
    to_torchvision_maskrcnn,
)
from instaseg.weights.yolact import convert_yolact_file, convert_yolact_state_dict, yolact_config_for

__all__ = [
    "ConversionSummary",
    "RestrictedUnpickler",
    "convert_detectron2_file",
    "convert_detectron2_maskrcnn",
    "convert_mmdet_checkpoint",
    "convert_mmdet_file",
    "convert_torchvision_file",
    "convert_torchvision_maskrcnn",
    "convert_yolact_file",
    "convert_yolact_state_dict",
    "load_backbone_weights",
    "load_weights_file",
    "read_backbone_weights",
    "safe_load_pickle",
    "to_detectron2_maskrcnn",
    "to_mmdet_state_dict",
    "to_torchvision_maskrcnn",
    "yolact_config_for",
]
