"""An image with no detections: every output of the exported graph is empty (N = 0), with the
right trailing shapes, in ONNX Runtime as in PyTorch."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from instaseg.export.exporters import OnnxPredictor, export_onnx
from tests.export.parity import build_test_model, compare


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ms_rcnn_r18_fpn_tiny", "yolact_pp_r18_tiny"])
def test_no_detections(preset, tmp_path):
    # No class probability exceeds 1: nothing can pass the threshold, whatever the weights.
    model = build_test_model(preset, score_thresh=1.0)
    path = export_onnx(model, tmp_path / "model.onnx", (64, 80), dynamic=True, optimize=False)
    image = torch.rand(3, 72, 90) * 255
    outputs = OnnxPredictor(path, num_threads=2).run(image)
    expected = model.predict([image])[0]
    assert len(expected) == 0
    assert [o.shape for o in outputs] == [(0, 4), (0,), (0,), (0, 72, 90), (0,)]
    compare(outputs, expected)
    instances = OnnxPredictor(path)(image)
    assert len(instances) == 0 and instances.image_size == (72, 90)
