"""Pure state-dict converters from peer checkpoints: torchvision and Detectron2 Mask R-CNN and Keypoint
R-CNN, YOLACT/YOLACT++,
MMDetection Mask R-CNN / MS R-CNN / YOLACT, ImageNet backbones.

Peer tensors in, instaseg tensors and the :class:`~instaseg.config.schema.Config` they fit out
(:class:`~instaseg.weights.common.ConvertedWeights`); nothing here builds a model or writes a file.
Every file is read without running code from it (``instaseg.weights.safe_pickle``). Building the
model, loading the converted tensors and saving an instaseg checkpoint is ``instaseg.hub``
(``instaseg.hub.convert_torchvision_file`` and its siblings, ``instaseg convert``).
"""

from instaseg.weights.backbone import read_backbone_weights
from instaseg.weights.common import ConversionSummary, ConvertedWeights
from instaseg.weights.detectron2 import convert_detectron2_maskrcnn, read_detectron2_file, to_detectron2_maskrcnn
from instaseg.weights.mmdet import convert_mmdet_checkpoint, read_mmdet_file, to_mmdet_state_dict
from instaseg.weights.safe_pickle import RestrictedUnpickler, load_weights_file, safe_load_pickle
from instaseg.weights.torchvision import (convert_torchvision_keypointrcnn, convert_torchvision_maskrcnn,
                                         read_torchvision_file, to_torchvision_keypointrcnn, to_torchvision_maskrcnn)
from instaseg.weights.yolact import convert_yolact_state_dict, read_yolact_file, yolact_config_for

__all__ = [
    "ConversionSummary",
    "ConvertedWeights",
    "RestrictedUnpickler",
    "convert_detectron2_maskrcnn",
    "convert_mmdet_checkpoint",
    "convert_torchvision_keypointrcnn",
    "convert_torchvision_maskrcnn",
    "convert_yolact_state_dict",
    "load_weights_file",
    "read_backbone_weights",
    "read_detectron2_file",
    "read_mmdet_file",
    "read_torchvision_file",
    "read_yolact_file",
    "safe_load_pickle",
    "to_detectron2_maskrcnn",
    "to_mmdet_state_dict",
    "to_torchvision_keypointrcnn",
    "to_torchvision_maskrcnn",
    "yolact_config_for",
]
