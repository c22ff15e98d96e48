import numpy as np
import pytest
import torch
from PIL import Image

from instaseg import Predictor, build_model
from instaseg.config.presets import get_preset
from instaseg.config.io import apply_overrides
from instaseg.engine.checkpoint import load_checkpoint, save_checkpoint
from instaseg.errors import CheckpointError, InstasegError
from instaseg.hub import load_model

from tests.detectors._toy_data import toy_scene

OVERRIDES = ["model.num_classes=3", "input.min_size_test=64", "input.max_size_test=96",
             "model.inference.score_thresh=0.0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = apply_overrides(get_preset("mask_rcnn_r18_fpn_tiny"), OVERRIDES)
    from instaseg.detectors.build import build_from_config

    torch.manual_seed(0)
    model = build_from_config(config)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, config, categories={"ids": [3, 7, 12], "names": ["a", "b", "c"]})
    return path, model


def test_checkpoint_round_trip_keeps_weights_and_config(checkpoint):
    path, model = checkpoint
    loaded, config = load_model(path)
    assert config.model.num_classes == 3 and config.input.min_size_test == 64
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert load_checkpoint(path)["categories"]["ids"] == [3, 7, 12]


def test_predictor_accepts_every_input_kind(checkpoint, tmp_path):
    path, _ = checkpoint
    predictor = Predictor.from_checkpoint(path)
    image, _ = toy_scene(0, 80)
    array = image.permute(1, 2, 0).to(torch.uint8).numpy()
    file = tmp_path / "img.png"
    Image.fromarray(array).save(file)
    from_tensor = predictor(image.to(torch.uint8))
    for other in (predictor(array), predictor(Image.fromarray(array)), predictor(str(file)),
                  predictor(image.to(torch.uint8).float() / 255.0)):
        assert torch.allclose(other.boxes, from_tensor.boxes, atol=1e-3)
        assert torch.equal(other.labels, from_tensor.labels)
    batch = predictor([array, file])
    assert isinstance(batch, list) and len(batch) == 2
    assert from_tensor.masks.shape[1:] == (80, 80)
    gray = predictor(array[..., 0])
    assert gray.masks.shape[1:] == (80, 80)
    with pytest.raises(InstasegError):
        predictor(np.zeros((4, 4, 4), dtype=np.uint8))


def test_checkpoint_for_another_model_names_the_tensors(checkpoint, tmp_path):
    path, _ = checkpoint
    payload = load_checkpoint(path)
    payload["config"]["model"]["num_classes"] = 5
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="box_predictor.cls_score.weight"):
        load_model(tmp_path / "other.pt")
    model, _ = load_model(tmp_path / "other.pt", allow_partial=True)
    assert model.num_classes == 5


def test_build_model_api():
    model = build_model("mask_rcnn_r18_fpn_tiny", num_classes=2, model__rpn__nms_thresh=0.6)
    assert model.num_classes == 2 and model.rpn_config.nms_thresh == 0.6
