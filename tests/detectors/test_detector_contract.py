"""The Detector contract: one raw-output type per mode, each filled whatever the mode; loss reads
only training outputs and postprocess only inference outputs, and says so."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from instaseg.detectors.base import Detector
from instaseg.hub import build_model
from instaseg.detectors.mask_rcnn import MaskRCNNOutput, MaskRCNNTrainOutput
from instaseg.detectors.yolact import YolactOutput, YolactTrainOutput

from tests.detectors._toy_data import toy_scene

CASES = [
    ("ms_rcnn_r18_fpn_tiny", MaskRCNNTrainOutput, MaskRCNNOutput),
    ("yolact_pp_r18_tiny", YolactTrainOutput, YolactOutput),
]


@pytest.mark.parametrize("preset,train_type,inference_type", CASES)
def test_outputs_have_one_type_per_mode_and_every_field_filled(preset, train_type, inference_type):
    torch.manual_seed(0)
    model = build_model(preset, num_classes=3, input__min_size_test=96, input__max_size_test=128)
    assert isinstance(model, Detector)
    images, targets = map(list, zip(*[toy_scene(s) for s in range(2)]))
    model.train()
    raw = model(images, targets)
    assert type(raw) is train_type
    # MS R-CNN / YOLACT++ fill their model-dependent fields too; only a missing head leaves None
    # (YOLACT++ without the semantic head, MS R-CNN without a keypoint head).
    missing = {"semantic_logits", "keypoint_logits"}
    assert all(getattr(raw, f.name) is not None for f in fields(raw) if f.name not in missing)
    total, _ = model.loss(raw, targets)
    assert torch.isfinite(total)
    with pytest.raises(TypeError, match="postprocess"):
        model.postprocess(raw, [(96, 96)] * 2)
    model.eval()
    with torch.no_grad():
        raw = model(images)
    assert type(raw) is inference_type
    assert all(getattr(raw, f.name) is not None for f in fields(raw))
    with pytest.raises(TypeError, match="loss"):
        model.loss(raw, targets)
    results = model.postprocess(raw, [(96, 96)] * 2)
    assert [r.image_size for r in results] == [(96, 96)] * 2
