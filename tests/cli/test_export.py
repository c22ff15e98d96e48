"""``instaseg export`` from a freshly saved checkpoint (nothing is trained): the ONNX file runs in
ONNX Runtime, the ``.pt2`` program loads back, and both agree with the checkpoint's model."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from instaseg.cli.main import main
from instaseg.config.io import apply_overrides
from instaseg.config.presets import get_preset
from instaseg.detectors.build import build_from_config
from instaseg.engine.checkpoint import save_checkpoint
from instaseg.export.exporters import OUTPUT_NAMES, OnnxPredictor, load_program
from instaseg.hub import load_model
from tests.export.parity import compare

# The quickest family to export; tests/export covers every family.
OVERRIDES = ["model.num_classes=3", "model.inference.score_thresh=0.2", "model.inference.detections_per_image=10"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = apply_overrides(get_preset("yolact_r18_tiny"), OVERRIDES)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, build_from_config(config), config, categories={"ids": [3, 7, 12], "names": ["a", "b", "c"]})
    return path


@pytest.mark.slow
def test_export_onnx_runs_in_onnx_runtime(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out),
                 "--dynamic", "--size", "64", "80", "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "any height and width" in printed and "verify:" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["instaseg.category_names"]) == ["a", "b", "c"]
    assert json.loads(metadata["instaseg.category_ids"]) == [3, 7, 12]
    model, _ = load_model(checkpoint)
    predictor = OnnxPredictor(out)
    for height, width in [(72, 90), (100, 60)]:  # neither is the traced size
        image = torch.rand(3, height, width) * 255
        compare(predictor.run(image), model.predict([image])[0])
    instances = predictor(image)
    assert instances.image_size == (100, 60) and instances.mask_scores is None  # plain YOLACT: no mask score


@pytest.mark.slow
def test_export_torch_program_at_a_fixed_size(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torch_export", "--out", str(out),
                 "--size", "64", "80"]) == 0
    assert "64x80 images only" in capsys.readouterr().out
    module = load_program(out).module()
    model, _ = load_model(checkpoint)
    image = torch.rand(3, 64, 80) * 255
    with torch.no_grad():
        compare(module(image), model.predict([image])[0])
        with pytest.raises(Exception):  # a static program refuses other sizes instead of guessing
            module(torch.rand(3, 70, 80) * 255)


def test_export_refuses_a_folder_or_a_missing_checkpoint(checkpoint, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_export_keypoint_model_without_masks(tmp_path, capsys):
    # Keypoint R-CNN with boxes and keypoints only: a graph without masks, read back as masks=None.
    # Exported with a score threshold nothing passes: an image with no detections gives empty outputs
    # of the right trailing shapes (ONNX Runtime parity with detections: tests/export/test_detector_export.py).
    config = apply_overrides(get_preset("keypoint_rcnn_r18_fpn_tiny"), OVERRIDES)
    torch.manual_seed(0)
    checkpoint = tmp_path / "keypoints.pt"
    save_checkpoint(checkpoint, build_from_config(config), config,
                    categories={"ids": [1, 2, 3], "names": ["a", "b", "c"]})
    out = tmp_path / "keypoints.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out),
                 "--size", "64", "80", "--verify", "--set", "model.inference.score_thresh=1.0"]) == 0
    assert "verify:" in capsys.readouterr().out
    predictor = OnnxPredictor(out)
    assert predictor.output_names == ("boxes", "scores", "labels", "keypoints")
    model, _ = load_model(checkpoint, overrides=["model.inference.score_thresh=1.0"])
    image = torch.rand(3, 64, 80) * 255  # the exported size (fixed unless --dynamic)
    outputs = predictor.run(image)
    expected = model.predict([image])[0]
    assert len(expected) == 0
    assert [o.shape for o in outputs] == [(0, 4), (0,), (0,), (0, 13, 3)]
    compare(outputs, expected, predictor.output_names)
    instances = predictor(image)
    assert len(instances) == 0 and instances.masks is None and instances.keypoints.shape == (0, 13, 3)
