"""YOLACT through the ``instaseg`` command: train, eval, predict, and convert a reference checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from instaseg.cli.main import main
from instaseg.data.synthetic import generate_synthetic_dataset
from instaseg.hub import load_model
from tests.weights.test_yolact import reference_yolact_state

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TINY = ["--set", "train.max_iter=3", "--set", "train.ims_per_batch=2", "--set", "train.warmup_iters=1",
        "--set", "train.checkpoint_period=3", "--set", "train.num_workers=0", "--set", "input.square=64"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_images=6, seed=2, image_size=64,
                                      val_fraction=0.34)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    args = ["train", "--preset", "yolact_r18_tiny", "--train-json", str(dataset.train_annotations),
            "--train-images", str(dataset.train_images), "--val-json", str(dataset.val_annotations),
            "--val-images", str(dataset.val_images), "--out", str(run), "--no-progress", *TINY]
    assert main(args) == 0
    return run


def test_train_writes_a_yolact_checkpoint_and_metrics(trained):
    model, config = load_model(trained / "checkpoints" / "last.pt")
    assert type(model).__name__ == "Yolact" and config.name == "yolact_r18_tiny" and config.input.square == 64
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics) >= {"bbox", "segm"} and 0.0 <= metrics["segm"]["AP"] <= 1.0
    assert (trained / "checkpoints" / "last.pt").is_file()


def test_eval_and_predict_from_the_checkpoint(trained, dataset, tmp_path):
    ckpt = str(trained / "checkpoints" / "last.pt")
    assert main(["eval", "--checkpoint", ckpt, "--json", str(dataset.val_annotations),
                 "--images", str(dataset.val_images), "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox"]["AP"] <= 1.0
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert all(set(r) >= {"image_id", "category_id", "bbox", "score", "segmentation"} for r in results)
    assert main(["predict", "--checkpoint", ckpt, str(dataset.val_images), "--out", str(tmp_path / "p"),
                 "--score-threshold", "0.0"]) == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == len(list(dataset.val_images.glob("*.png")))
    json.loads((tmp_path / "p" / "results.json").read_text())


def test_convert_a_reference_checkpoint_then_predict(dataset, tmp_path, capsys):
    """A dbolya/yolact-format ``yolact_resnet50`` state dict (3 classes + background) -> instaseg."""
    src, dst = tmp_path / "yolact_resnet50_54_800000.pth", tmp_path / "converted.pt"
    torch.save(reference_yolact_state("r50", False, num_classes=4), src)
    assert main(["convert", "--from", "yolact", str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "yolact_r50_550" in out and "num_classes: 3" in out and "num_batches_tracked" in out
    image = next(iter(sorted(dataset.val_images.glob("*.png"))))
    assert main(["predict", "--checkpoint", str(dst), str(image), "--out", str(tmp_path / "p"), "--no-overlays",
                 "--score-threshold", "0.0"]) == 0
    results = json.loads((tmp_path / "p" / "results.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2, 3}  # random weights: some detections
    model, config = load_model(dst)
    assert config.name == "yolact_r50_550" and model.num_classes == 3
