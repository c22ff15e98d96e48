"""``instaseg predict`` with a keypoint model without masks: skeleton overlays from the checkpoint's
keypoint names and skeleton, COCO keypoint results, and a clear refusal of ``--tile``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import instaseg.evaluation as evaluation
from instaseg.cli.main import main
from instaseg.data.synthetic_keypoints import FIGURE_KEYPOINT_NAMES, FIGURE_SKELETON
from instaseg.detectors.build import build_from_config, resolve_config
from instaseg.engine.checkpoint import save_checkpoint
from instaseg.hub.predictor import Predictor
from instaseg.structures.instances import Instances
from instaseg.viz.overlay import PALETTE

pytestmark = pytest.mark.usefixtures("one_thread")

K = len(FIGURE_KEYPOINT_NAMES)
GRAY = 128


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """An untrained boxes + keypoints model that stored the stick figures' names and skeleton."""
    config = resolve_config("keypoint_rcnn_r18_fpn_tiny", num_classes=1,
                            overrides=["input.min_size_test=64", "input.max_size_test=64",
                                       "model.inference.detections_per_image=5", "model.rpn.pre_nms_topk_test=50",
                                       "model.rpn.post_nms_topk_test=20", "model.inference.score_thresh=0.0"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "keypoints.pt"
    keypoints = {"names": list(FIGURE_KEYPOINT_NAMES), "skeleton": [list(pair) for pair in FIGURE_SKELETON]}
    save_checkpoint(path, build_from_config(config), config,
                    categories={"ids": [7], "names": ["figure"], "keypoints": keypoints})
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(np.full((64, 64, 3), GRAY, np.uint8)).save(folder / "a.png")
    return folder


def _figure() -> torch.Tensor:
    """(1, K, 3) keypoints of one figure in the continuous frame: the joints on a circle (so that no
    limb runs over another joint), every score 1 but the last joint's (-1: hidden by default)."""
    angles = torch.arange(K, dtype=torch.float32) * (2 * math.pi / K)
    xs, ys = (34 + 18 * angles.cos()).floor() + 0.5, (38 + 18 * angles.sin()).floor() + 0.5  # pixel centres
    scores = torch.ones(K)
    scores[-1] = -1.0
    return torch.stack([xs, ys, scores], dim=1)[None]


def _known_detection(predictor: Predictor, images: list[torch.Tensor]) -> list[Instances]:
    return [Instances(boxes=torch.tensor([[2.0, 2.0, 62.0, 62.0]]), scores=torch.tensor([0.9]),
                      labels=torch.tensor([0]), masks=None, keypoints=_figure()) for _ in images]


def _pixel(picture: np.ndarray, point: torch.Tensor) -> np.ndarray:
    return picture[int(point[1]), int(point[0])]


def test_overlay_draws_the_checkpoints_skeleton_and_hides_weak_joints(checkpoint, images, tmp_path, monkeypatch):
    monkeypatch.setattr(Predictor, "predict", _known_detection)
    monkeypatch.setattr(evaluation, "instances_to_coco_results", lambda *args: [])  # only the picture here
    out = tmp_path / "out"
    assert main(["predict", str(images), "--checkpoint", checkpoint, "--out", str(out)]) == 0
    picture = np.asarray(Image.open(out / "a.png").convert("RGB")).astype(int)
    points = _figure()[0]
    shown = [(a, b) for a, b in FIGURE_SKELETON if K - 1 not in (a, b)]
    for joint in {j for pair in shown for j in pair}:  # a white joint at each keypoint's pixel
        assert (_pixel(picture, points[joint]) >= 230).all(), (joint, _pixel(picture, points[joint]))
    for a, b in shown:  # each limb in the class colour, where it runs farthest from the joints' dots
        along = [points[a, :2] + t * (points[b, :2] - points[a, :2]) for t in torch.linspace(0.2, 0.8, 13)]
        spot = max(along, key=lambda p: float((points[:, :2] - p).norm(dim=1).min()))
        near = picture[int(spot[1]) - 1:int(spot[1]) + 2, int(spot[0]) - 1:int(spot[0]) + 2].reshape(-1, 3)
        assert (np.abs(near - PALETTE[0].astype(int)).sum(axis=1) <= 30).any(), (a, b, near)
    assert (_pixel(picture, points[K - 1]) == GRAY).all()  # score -1: neither joint nor limb


def test_keypoint_threshold_option_hides_every_joint(checkpoint, images, tmp_path, monkeypatch):
    monkeypatch.setattr(Predictor, "predict", _known_detection)
    monkeypatch.setattr(evaluation, "instances_to_coco_results", lambda *args: [])
    out = tmp_path / "out"
    assert main(["predict", str(images), "--checkpoint", checkpoint, "--out", str(out),
                 "--keypoint-threshold", "2"]) == 0
    picture = np.asarray(Image.open(out / "a.png").convert("RGB")).astype(int)
    assert all((_pixel(picture, point) == GRAY).all() for point in _figure()[0])  # only the box and label


def test_results_hold_coco_keypoints_and_no_segmentation(checkpoint, images, tmp_path, monkeypatch):
    monkeypatch.setattr(Predictor, "predict", _known_detection)
    out = tmp_path / "out"
    assert main(["predict", str(images), "--checkpoint", checkpoint, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 1 and "segmentation" not in results[0]
    assert results[0]["category_id"] == 7
    flat = results[0]["keypoints"]
    assert len(flat) == 3 * K
    expected = _figure()[0].clone()
    expected[:, :2] -= 0.5  # COCO's pixel-index frame
    assert np.allclose(np.array(flat).reshape(K, 3), expected.numpy())


def test_untrained_keypoint_model_predicts_end_to_end(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(images), "--checkpoint", checkpoint, "--out", str(out),
                 "--score-threshold", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results and all(len(r["keypoints"]) == 3 * K and "segmentation" not in r for r in results)
    assert (out / "a.png").is_file()


def test_tile_refuses_a_model_without_masks(checkpoint, images, tmp_path, capsys):
    assert main(["predict", str(images), "--checkpoint", checkpoint, "--out", str(tmp_path / "out"),
                 "--tile", "64"]) != 0
    message = capsys.readouterr().err
    assert "--tile" in message and "masks" in message and "Traceback" not in message
    assert not (tmp_path / "out" / "results.json").exists() or json.loads(
        (tmp_path / "out" / "results.json").read_text()) == []
