"""ImageNet weights into a built model: what ``model.backbone.weights`` does.

The file is read and renamed by ``instaseg.weights.backbone`` (torchvision, MSRA/Caffe2 or Detectron2
layout, or an instaseg checkpoint's backbone); here it is loaded into ``model.backbone`` and, in a C4
Mask R-CNN, into the res5 RoI head (ImageNet's ``layer4``), with a report of what was loaded.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from instaseg.backbones.resnet import ResNet
from instaseg.errors import CheckpointError
from instaseg.heads.box_head import Res5Head
from instaseg.weights.backbone import read_backbone_weights

__all__ = ["load_backbone_weights", "load_imagenet_weights"]


def _stride_warnings(backbone: ResNet, fmt: str) -> list[str]:
    block = getattr(backbone, "layer2", [None])[0]
    if block is None or not hasattr(block, "conv3"):  # BasicBlocks have no 1x1 to put a stride in
        return []
    stride_in_1x1 = block.conv1.stride != (1, 1)
    if fmt == "msra" and not stride_in_1x1:
        return ["warning: MSRA/Caffe2 weights were trained with the stride in the 1x1 conv; "
                "build the backbone with stride_in_1x1=True"]
    if fmt == "torchvision" and stride_in_1x1:
        return ["warning: torchvision weights were trained with the stride in the 3x3 conv; "
                "build the backbone with stride_in_1x1=False"]
    return []


def _partition(backbone: ResNet, state: dict[str, Tensor]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(unused, unexpected, missing, mismatched) names of ``state`` against ``backbone``."""
    own = backbone.state_dict()
    unbuilt = tuple(f"layer{k}." for k in range(backbone.num_stages + 1, 5))
    unused = [k for k in state if k not in own and k.startswith(unbuilt)] if unbuilt else []
    unexpected = [k for k in state if k not in own and k not in unused]
    # Deformable convs' offset branches and BN step counters are not ImageNet weights: they keep
    # their own initialisation (zero offsets: the DCN starts as the plain conv).
    missing = [k for k in own if k not in state and ".conv_offset." not in k
               and not k.endswith("num_batches_tracked")]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs backbone {tuple(own[k].shape)}"
                  for k in state if k in own and state[k].shape != own[k].shape]
    return unused, unexpected, missing, mismatched


def load_backbone_weights(backbone: ResNet, path: str | Path) -> list[str]:
    """Load ImageNet weights (torchvision, MSRA/Caffe2 or Detectron2 layout) into ``backbone``.

    Stages the backbone does not build (``layer4`` of a C4 trunk) are reported as unused; every
    other tensor must fit exactly (missing, unknown or mis-shaped tensors raise
    :class:`CheckpointError`, and nothing is loaded). Returns report lines for the caller to print.
    """
    state, fmt = read_backbone_weights(path)
    return _load_backbone_state(backbone, state, fmt, path)


def load_imagenet_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load ImageNet weights into ``model.backbone`` (:func:`load_backbone_weights`) and, when the
    model's RoI head is the res5 stage (C4 Mask R-CNN, :class:`~instaseg.heads.box_head.Res5Head`),
    ImageNet's ``layer4`` into it. Returns report lines for the caller to print."""
    state, fmt = read_backbone_weights(path)
    report = _load_backbone_state(model.backbone, state, fmt, path)
    box_head = getattr(model, "box_head", None)
    if isinstance(box_head, Res5Head):
        box_head.res5.load_state_dict({k[len("layer4."):]: v for k, v in state.items() if k.startswith("layer4.")})
    return report


def _load_backbone_state(backbone: ResNet, state: dict[str, Tensor], fmt: str, path: str | Path) -> list[str]:
    unused, unexpected, missing, mismatched = _partition(backbone, state)
    problems = ([f"unexpected {k}" for k in unexpected] + [f"missing {k}" for k in missing]
                + [f"shape {m}" for m in mismatched])
    if problems:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise CheckpointError(f"{path}: {fmt} weights do not fit this backbone (another depth or "
                              f"width?), {len(problems)} problems:\n  {shown}")
    own = backbone.state_dict()
    merged = dict(own)
    merged.update({k: v.to(own[k].dtype) for k, v in state.items() if k in own})
    backbone.load_state_dict(merged, strict=True)
    kept = [k for k in own if k not in state]
    what = "the backbone of an instaseg checkpoint (the whole model: --weights)" if fmt == "instaseg" else \
        f"{fmt} ImageNet weights"
    report = [f"{path}: {what}, loaded {len(state) - len(unused)} tensors"]
    if unused:
        report.append(f"unused (stages this backbone does not build): {len(unused)} tensors")
    if kept:
        report.append(f"kept their initialisation (not in ImageNet weights): {len(kept)} tensors")
    return report + _stride_warnings(backbone, fmt)

