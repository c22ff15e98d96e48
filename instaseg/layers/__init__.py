"""instaseg.layers: conv + norm + activation, FrozenBatchNorm2d, init helpers, ShapeSpec."""

from instaseg.layers.conv import ConvNormAct, c2_msra_fill, c2_xavier_fill, conv1x1, conv3x3
from instaseg.layers.deform import ModulatedDeformConv2d
from instaseg.layers.norm import FrozenBatchNorm2d, convert_frozen_batchnorm, get_norm
from instaseg.layers.shape_spec import ShapeSpec

__all__ = [
    "ConvNormAct",
    "FrozenBatchNorm2d",
    "ModulatedDeformConv2d",
    "ShapeSpec",
    "c2_msra_fill",
    "c2_xavier_fill",
    "conv1x1",
    "conv3x3",
    "convert_frozen_batchnorm",
    "get_norm",
]
