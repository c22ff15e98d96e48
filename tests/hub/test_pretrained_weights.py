"""Fine-tuning initialisation: exactly the tensors sized by the number of classes keep their fresh
initialisation, every other tensor comes from the weights (checked tensor by tensor)."""

from __future__ import annotations

import pytest
import torch

from instaseg.config.io import config_to_dict
from instaseg.detectors.build import build_from_config, resolve_config
from instaseg.hub import class_sized_tensors, load_pretrained_weights
from instaseg.errors import CheckpointError

# Written out by hand, per head, independently of class_sized_tensors.
_RCNN = ["box_predictor.cls_score", "box_predictor.bbox_pred", "mask_head.predictor"]
_YOLACT = ["prediction_head.conf_layer", "semantic_head.conv"]
CLASS_SIZED = {
    "mask_rcnn_r18_fpn_tiny": _RCNN,
    "ms_rcnn_r18_fpn_tiny": _RCNN + ["maskiou_head.predictor"],  # the MaskIoU output layer
    "yolact_r18_tiny": _YOLACT,
    "yolact_pp_r18_tiny": _YOLACT + ["rescoring_head.convs.5"],  # YOLACT++ re-scoring output
}


def _payload(preset: str, num_classes: int, seed: int) -> dict:
    config = resolve_config(preset, num_classes)
    torch.manual_seed(seed)
    model = build_from_config(config)
    return {"format": "instaseg", "config": config_to_dict(config),
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}


@pytest.mark.parametrize("preset", sorted(CLASS_SIZED))
def test_other_number_of_classes_reinitialises_exactly_the_class_sized_tensors(preset):
    payload = _payload(preset, num_classes=80, seed=1)
    config = resolve_config(preset, num_classes=3)
    torch.manual_seed(2)
    model = build_from_config(config)
    fresh = {k: v.detach().clone() for k, v in model.state_dict().items()}
    lines = load_pretrained_weights(model, config, payload, "coco.pt")

    expected = {f"{layer}.{p}" for layer in CLASS_SIZED[preset] for p in ("weight", "bias")}
    assert set(class_sized_tensors(config, 80)) == expected
    after = model.state_dict()
    for name, value in after.items():
        if name in expected:
            assert torch.equal(value, fresh[name]), f"{name} should keep its fresh initialisation"
            assert value.shape != payload["model"][name].shape
        else:
            assert torch.equal(value, payload["model"][name]), f"{name} should come from the weights"
    report = "\n".join(lines)
    assert f"re-initialised {len(expected)} class-sized tensors" in report and "80 classes" in report
    assert all(name in report for name in expected)


def test_same_number_of_classes_loads_everything():
    payload = _payload("ms_rcnn_r18_fpn_tiny", num_classes=4, seed=1)
    config = resolve_config("ms_rcnn_r18_fpn_tiny", num_classes=4)
    model = build_from_config(config)
    lines = load_pretrained_weights(model, config, payload, "mine.pt")
    assert all(torch.equal(v, payload["model"][k]) for k, v in model.state_dict().items())
    assert len(lines) == 1 and "re-initialised" not in lines[0]


def test_another_architecture_is_refused_with_the_reasons():
    payload = _payload("mask_rcnn_r18_fpn_tiny", num_classes=80, seed=1)
    config = resolve_config("ms_rcnn_r18_fpn_tiny", num_classes=3)
    with pytest.raises(CheckpointError, match="missing maskiou_head"):
        load_pretrained_weights(build_from_config(config), config, payload, "coco.pt")
