"""``instaseg predict --tile``: sliced inference from the command line and through ``Predictor``."""

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from instaseg.cli.main import main
from instaseg.config.io import apply_overrides
from instaseg.config.presets import get_preset
from instaseg.engine.checkpoint import save_checkpoint
from instaseg.hub import Predictor
from instaseg.engine.tiling import sliced_predict
from instaseg.evaluation import instances_to_coco_results

OVERRIDES = ["model.num_classes=3", "input.min_size_test=64", "input.max_size_test=64",
             "model.inference.detections_per_image=10", "model.rpn.pre_nms_topk_test=150",
             "model.rpn.post_nms_topk_test=50"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from instaseg.detectors.build import build_from_config

    torch.manual_seed(0)
    config = apply_overrides(get_preset("mask_rcnn_r18_fpn_tiny"), OVERRIDES)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, build_from_config(config), config, categories={"ids": [3, 7, 12], "names": ["a", "b", "c"]})
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(0)
    for name, (h, w) in {"wide.png": (64, 100), "small.png": (50, 60)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    return root


def test_predict_with_tiles_writes_results_and_overlays(checkpoint, folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(folder), "--out", str(out), "--score-threshold", "0",
                 "--tile", "64", "--overlap", "0.25"]) == 0
    results = json.loads((out / "results.json").read_text())
    files = {f["id"]: f for f in json.loads((out / "images.json").read_text())}
    assert results and {r["file_name"] for r in results} <= {"wide.png", "small.png"}
    for r in results:
        size = [files[r["image_id"]]["height"], files[r["image_id"]]["width"]]
        assert r["segmentation"]["size"] == size and r["category_id"] in (3, 7, 12)
        x, y, w, h = r["bbox"]
        assert 0 <= x and 0 <= y and x + w <= size[1] + 1e-3 and y + h <= size[0] + 1e-3
        assert mask_util.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}).shape == tuple(size)
    for name, (h, w) in {"wide": (64, 100), "small": (50, 60)}.items():
        assert Image.open(out / f"{name}.png").size == (w, h)
    # the file's results are those of the Python API with full masks
    predictor = Predictor.from_checkpoint(checkpoint, score_threshold=0.0)
    image_id = next(i for i, f in files.items() if f["file_name"].endswith("wide.png"))
    tiled = predictor.predict_tiled(folder / "wide.png", tile=64, overlap=0.25)
    expected = instances_to_coco_results(tiled.to_instances(), image_id, [3, 7, 12])
    assert [r for r in results if r["image_id"] == image_id] == [{**e, "file_name": "wide.png"} for e in expected]


def test_predictor_tiles_match_the_function_and_apply_the_threshold(checkpoint, folder):
    predictor = Predictor.from_checkpoint(checkpoint, score_threshold=0.3)
    image = np.array(Image.open(folder / "wide.png"))
    tiled = predictor.predict_tiled(image, tile=64, overlap=0.25, batch_size=3)
    reference = sliced_predict(predictor.model, torch.from_numpy(image).permute(2, 0, 1).float(), 64, 0.25,
                               batch_size=3, score_threshold=0.3)  # the same batches: the same float rounding
    assert torch.equal(tiled.boxes, reference.boxes) and torch.equal(tiled.masks.to_full(), reference.masks.to_full())
    assert tiled.image_size == (64, 100) and (tiled.scores >= 0.3).all()
    assert predictor.best_score is not None and predictor.best_score >= max(tiled.scores.tolist(), default=0.0)


@pytest.mark.parametrize("flag,value", [("--tile", "32"), ("--tile", "abc"), ("--overlap", "1"), ("--overlap", "-0.2")])
def test_bad_tile_values_are_refused_before_any_work(checkpoint, folder, tmp_path, capsys, flag, value):
    args = ["predict", "--checkpoint", str(checkpoint), str(folder), "--out", str(tmp_path / "o"), "--tile", "64"]
    with pytest.raises(SystemExit) as error:
        main([*args, flag, value])
    assert error.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
