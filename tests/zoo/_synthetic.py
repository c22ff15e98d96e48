"""Synthetic files in each publisher's layout, with the real shapes (the converters build the real
presets) and values scaled so that a model holding them runs without overflowing."""

from __future__ import annotations

import io
import pickle

import torch

from tests.weights.test_detectron2 import d2_shapes
from tests.weights.test_torchvision import torchvision_shapes
from tests.weights.test_yolact import reference_yolact_state


def scaled_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Conv/linear weights ~ N(0, 1/fan_in), norms near identity, biases small."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
            state[name] = torch.rand(shape, generator=generator) * 0.5 + 0.75
        elif len(shape) >= 2:
            fan_in = int(torch.tensor(shape[1:]).prod()) if "deconv" not in name else shape[0]
            state[name] = torch.randn(shape, generator=generator) / fan_in ** 0.5
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.01
    return state


def torch_bytes(payload: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def torchvision_coco_file(num_outputs: int = 91) -> bytes:
    """A ``maskrcnn_resnet50_fpn`` (v1) state dict, as torchvision publishes it."""
    return torch_bytes(scaled_state(torchvision_shapes(num_outputs), seed=1))


def detectron2_pkl(fpn: bool, num_classes: int = 80) -> bytes:
    """A Detectron2 model-zoo ``.pkl``: a pickled ``{"model": {name: ndarray}, "__author__": ...}``."""
    state = {k: v.numpy() for k, v in scaled_state(d2_shapes(fpn, 50, num_classes), seed=2).items()}
    return pickle.dumps({"model": state, "__author__": "synthetic", "matching_heuristics": True}, protocol=4)


def yolact_file(plus: bool, num_classes: int = 81) -> bytes:
    """A dbolya/yolact R-50 ``.pth`` state dict (``num_classes`` counts background, as there)."""
    torch.manual_seed(3)
    return torch_bytes(reference_yolact_state("r50", plus, num_classes))


def tiny_checkpoint_file(preset: str = "yolact_r18_tiny", num_classes: int = 5, seed: int = 0,
                         overrides: list[str] | None = None) -> bytes:
    """An instaseg checkpoint of a tiny preset (a few MB), for flows that need a model, not a layout."""
    from instaseg.config.io import config_to_dict
    from instaseg.detectors.build import build_from_config, resolve_config

    config = resolve_config(preset, num_classes, overrides=overrides)
    torch.manual_seed(seed)
    model = build_from_config(config)
    return torch_bytes({"format": "instaseg", "version": 1, "config": config_to_dict(config),
                        "model": {k: v.detach() for k, v in model.state_dict().items()}})


def torchvision_resnet18_file() -> bytes:
    """torchvision's ``resnet18`` ImageNet state dict layout (our ResNet names are torchvision's)."""
    from instaseg.backbones.resnet import build_resnet

    torch.manual_seed(4)
    body = build_resnet("resnet18", norm="BN", freeze_at=0, out_features=("res5",))
    for module in body.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = {k: v.detach().clone() for k, v in body.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512) * 0.01, torch.zeros(1000)
    return torch_bytes(state)


def mmdet_ms_rcnn_file() -> bytes:
    """An MMDetection MS R-CNN R-50 ``.pth`` (``{"state_dict": ...}``), in the layout of
    tests/weights/test_mmdet.py (present with instaseg.weights.mmdet)."""
    from tests.weights.test_mmdet import mmdet_shapes

    return torch_bytes({"state_dict": scaled_state(mmdet_shapes("ms_rcnn", 80), seed=5)})


def torchvision_keypoint_file() -> bytes:
    """A ``keypointrcnn_resnet50_fpn`` state dict (2 outputs: background, person; 17 keypoints)."""
    from tests.weights.test_torchvision_keypoint import keypointrcnn_shapes

    return torch_bytes(scaled_state(keypointrcnn_shapes(), seed=6))


def detectron2_keypoint_pkl() -> bytes:
    """A Detectron2 model-zoo ``keypoint_rcnn_R_50_FPN`` ``.pkl`` (one class, 17 keypoints, no masks)."""
    from tests.weights.test_detectron2_keypoint import d2_keypoint_shapes

    state = {k: v.numpy() for k, v in scaled_state(d2_keypoint_shapes(), seed=7).items()}
    return pickle.dumps({"model": state, "__author__": "synthetic", "matching_heuristics": True}, protocol=4)
