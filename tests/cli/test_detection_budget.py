"""Crowded images through the commands: warnings that name the caps, --max-detections and --set on
every command that loads a model, AR in the eval table and in metrics.json."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.cli.main import main
from instaseg.config.io import apply_overrides
from instaseg.config.presets import get_preset
from instaseg.detectors.build import build_from_config
from instaseg.engine.checkpoint import save_checkpoint

SIZE = 128


def _crowded_dataset(root: Path, per_image: tuple[int, ...]) -> Path:
    """Images of ``SIZE`` px with ``per_image[i]`` 5x5 squares each (up to 441), one category, polygons."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, count in enumerate(per_image, start=1):
        pixels = rng.integers(0, 60, size=(SIZE, SIZE, 3), dtype=np.uint8)
        for k in range(count):
            x, y = 1 + (k % 21) * 6, 1 + (k // 21) * 6
            pixels[y:y + 5, x:x + 5] = (230, 200, 40)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [x, y, 5, 5], "area": 25, "iscrowd": 0,
                                "segmentation": [[x, y, x + 5, y, x + 5, y + 5, x, y + 5]]})
        Image.fromarray(pixels).save(root / "images" / f"img{image_id}.png")
        images.append({"id": image_id, "file_name": f"img{image_id}.png", "height": SIZE, "width": SIZE})
    path = root / "crowded.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "cell"}]}))
    return path


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    root = tmp_path_factory.mktemp("crowded")
    return _crowded_dataset(root, (150, 20)), root / "images"


@pytest.fixture(scope="module")
def capped_checkpoint(tmp_path_factory):
    """A random tiny Mask R-CNN (1 class) whose caps clip: 50 detections, 150 proposals."""
    config = apply_overrides(get_preset("mask_rcnn_r18_fpn_tiny"), [
        "model.inference.detections_per_image=50", "model.rpn.post_nms_topk_test=150",
        "model.rpn.pre_nms_topk_test=300", "input.min_size_test=128", "input.max_size_test=128"])
    config = replace(config, model=replace(config.model, num_classes=1))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "capped.pt"
    save_checkpoint(path, build_from_config(config), config, iteration=0)
    return path


def test_eval_warns_of_each_cap_fits_max_dets_to_the_data_and_reports_ar(crowded, capped_checkpoint, tmp_path,
                                                                          capsys):
    gt, images = crowded
    assert main(["eval", "--checkpoint", str(capped_checkpoint), "--json", str(gt), "--images", str(images),
                 "--out", str(tmp_path / "ev")]) == 0
    captured = capsys.readouterr()
    assert "up to 150 instances" in captured.err and "at most 50 detections" in captured.err
    assert "model.inference.detections_per_image=50" in captured.err and "--max-detections 150" in captured.err
    assert "maxDets 1 10 150" in captured.out
    header = next(line for line in captured.out.splitlines() if line.startswith("| type"))
    assert all(f" {key} " in header for key in ("AR@150", "ARs", "ARm", "ARl"))
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for iou_type in ("bbox", "segm"):
        assert {"AR@1", "AR@10", "AR@150", "ARs", "ARm", "ARl"} <= set(metrics[iou_type])
        assert 0.0 <= metrics[iou_type]["AR@150"] <= 1.0
    # --max-detections raises every cap of the model: nothing left to warn about
    assert main(["eval", "--checkpoint", str(capped_checkpoint), "--json", str(gt), "--images", str(images),
                 "--max-detections", "150"]) == 0
    assert "warning" not in capsys.readouterr().err


def _detections_per_image(out: Path) -> dict[int, int]:
    results = json.loads((out / "results.json").read_text())
    counts: dict[int, int] = {}
    for r in results:
        counts[r["image_id"]] = counts.get(r["image_id"], 0) + 1
    return counts


def test_predict_takes_set_and_max_detections(crowded, capped_checkpoint, tmp_path):
    _, images = crowded
    image = str(images / "img1.png")
    common = ["predict", "--checkpoint", str(capped_checkpoint), image, "--score-threshold", "0",
              "--no-overlays", "--set", "model.inference.score_thresh=0.0"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert max(_detections_per_image(tmp_path / "a").values()) == 50  # the checkpoint's cap
    assert main([*common, "--out", str(tmp_path / "b"), "--max-detections", "120"]) == 0
    assert max(_detections_per_image(tmp_path / "b").values()) == 120
    assert main([*common, "--out", str(tmp_path / "c"), "--set", "model.inference.detections_per_image=7"]) == 0
    assert max(_detections_per_image(tmp_path / "c").values()) == 7


def test_export_builds_the_model_with_set_and_max_detections(capped_checkpoint, tmp_path, monkeypatch):
    import instaseg.hub.build as build

    seen = {}
    real = build.load_model

    def spy(*args, **kwargs):
        model, config = real(*args, **kwargs)
        seen["config"] = config
        raise KeyboardInterrupt  # stop before the (slow) export itself

    monkeypatch.setattr(build, "load_model", spy)
    main(["export", "--checkpoint", str(capped_checkpoint), "--out", str(tmp_path / "m.onnx"),
          "--max-detections", "400", "--set", "model.inference.mask_threshold=0.3"])
    model = seen["config"].model
    assert model.inference.detections_per_image == 400 and model.rpn.post_nms_topk_test >= 400
    assert model.inference.mask_threshold == 0.3


def test_train_warns_when_the_data_has_more_instances_than_the_caps(tmp_path, capsys):
    gt = _crowded_dataset(tmp_path / "data", (350, 3))
    images = str(tmp_path / "data" / "images")
    args = ["train", "--preset", "mask_rcnn_r18_fpn_tiny", "--train-json", str(gt), "--train-images", images,
            "--out", str(tmp_path / "run"), "--no-progress", "--set", "train.max_iter=1",
            "--set", "train.ims_per_batch=1", "--set", "train.num_workers=0", "--set", "train.warmup_iters=1"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "up to 350 instances" in err and "at most 300 detections" in err and "--max-detections 350" in err
    assert main([*args[:-8], "--out", str(tmp_path / "run2"), *args[-8:], "--max-detections", "350"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_train_raises_the_training_caps_for_crowded_data_and_set_still_wins(crowded, tmp_path, capsys):
    gt, images = crowded  # up to 150 instances per image
    args = ["train", "--preset", "mask_rcnn_r18_fpn_tiny", "--train-json", str(gt), "--train-images", str(images),
            "--no-progress", "--set", "train.max_iter=1", "--set", "train.ims_per_batch=1",
            "--set", "train.num_workers=0", "--set", "train.warmup_iters=1", "--set", "train.plots=false"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "up to 150 instances: training caps raised" in out
    for change in ("model.rpn.post_nms_topk_train 300 -> 500", "model.rpn.pre_nms_topk_train 600 -> 1000",
                   "model.box_head.batch_size_per_image 64 -> 148", "model.mask_head.max_rois_per_image 8 -> 37"):
        assert change in out
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "max_rois_per_image: 37" in saved and "post_nms_topk_train: 500" in saved
    assert main([*args, "--out", str(tmp_path / "run2"), "--set", "model.mask_head.max_rois_per_image=8"]) == 0
    assert "max_rois_per_image: 8\n" in (tmp_path / "run2" / "config.yaml").read_text()
