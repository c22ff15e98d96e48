"""An image with no detections: every output of the exported graph is empty (N = 0), with the
right trailing shapes, in ONNX Runtime as in PyTorch (Keypoint R-CNN without masks: through the
CLI in tests/cli/test_export.py::test_export_keypoint_model_without_masks)."""

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
    predictor = OnnxPredictor(path, num_threads=2)
    outputs = predictor.run(image)
    expected = model.predict([image])[0]
    assert len(expected) == 0
    shapes = {"boxes": (0, 4), "scores": (0,), "labels": (0,), "masks": (0, 72, 90), "mask_scores": (0,),
              "keypoints": (0, 13, 3)}
    assert [o.shape for o in outputs] == [shapes[name] for name in predictor.output_names]
    compare(outputs, expected, predictor.output_names)
    instances = predictor(image)
    assert len(instances) == 0
    if instances.masks is not None:
        assert instances.image_size == (72, 90)
    assert (instances.keypoints is None) == (expected.keypoints is None)
