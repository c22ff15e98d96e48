"""instaseg.backbones: ResNet / ResNeXt trunks reporting their output channels and strides."""

from instaseg.backbones.resnet import (
    RESNET_PRESETS,
    BasicBlock,
    Bottleneck,
    ResNet,
    build_resnet,
    is_deformable_block,
    make_stage,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
    resnext50_32x4d,
    resnext101_32x4d,
    resnext101_32x8d,
    resnext101_64x4d,
)

__all__ = [
    "RESNET_PRESETS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "build_resnet",
    "is_deformable_block",
    "make_stage",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
]
