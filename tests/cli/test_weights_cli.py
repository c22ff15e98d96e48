"""``instaseg weights list | fetch | info`` and ``--weights NAME_OR_PATH`` on train, predict, eval and
export, against a file server on 127.0.0.1 (``$INSTASEG_WEIGHTS_MIRROR``): catalogue entries are
re-pointed at small synthetic instaseg checkpoints (the conversions of each publisher's layout are
tested in tests/zoo/test_publishers.py)."""

from __future__ import annotations

import json

import pytest

from instaseg.cli.main import main
from instaseg.engine.checkpoint import load_checkpoint
from instaseg.zoo import CATALOGUE, weights_dir

from tests.zoo._server import closed_port_url
from tests.zoo._synthetic import tiny_checkpoint_file, torchvision_resnet18_file
from tests.zoo.conftest import home, publish, server  # noqa: F401 - fixtures

SMALL = ["--set", "train.max_iter=2", "--set", "train.ims_per_batch=2", "--set", "train.warmup_iters=1",
         "--set", "train.checkpoint_period=2", "--set", "train.num_workers=0", "--set", "input.min_size_train=[64]",
         "--set", "input.min_size_test=64", "--set", "input.max_size_test=64"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", "--out", str(root), "--images", "6", "--size", "64", "--seed", "1"]) == 0
    return root


def _train_args(dataset, out, *extra):
    return ["train", "--train-json", str(dataset / "annotations/train.json"), "--train-images",
            str(dataset / "train"), "--out", str(out), "--no-progress", *SMALL, *extra]


def test_list_shows_every_entry_and_what_is_cached(publish, server, capsys):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for entry in CATALOGUE.values():
        assert entry.name in out and entry.preset in out
    assert "41.0    37.2" in out  # Detectron2 R50-FPN 3x: the publisher's box and mask AP
    assert main(["weights", "list", "--kind", "backbone"]) == 0
    out = capsys.readouterr().out
    assert "resnet50_imagenet_msra" in out and "maskrcnn_r50_fpn_coco_tv" not in out
    entry = publish("resnet18_imagenet_tv", b"weights")
    assert main(["weights", "fetch", entry.name]) == 0
    assert str(weights_dir() / entry.file_name) in capsys.readouterr().out
    assert main(["weights", "list"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith(entry.name))
    assert line.rstrip().endswith("ready")


def test_info_names_the_url_the_check_and_the_drop_in_folder(home, capsys):
    assert main(["weights", "info", "ms_rcnn_r50_fpn_coco_mmdet"]) == 0
    out = capsys.readouterr().out
    for part in ("https://download.openmmlab.com/mmdetection/v2.0/ms_rcnn/", "sha256 starts with 61c9355e",
                 "Apache-2.0", "box 38.2, mask 36.0", "caffe style", str(weights_dir())):
        assert part in out


def test_errors_are_one_paragraph_without_traceback(home, dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INSTASEG_WEIGHTS_MIRROR", closed_port_url())
    assert main(["weights", "fetch", "maskrcnn_r50_fpn_coco_tv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("instaseg weights: error: could not download maskrcnn_r50_fpn_coco_tv")
    assert "Traceback" not in err and "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth" in err
    assert main(["weights", "fetch", "no_such_weights"]) == 2
    assert "instaseg weights list" in capsys.readouterr().err
    assert main(["predict", "--weights", "resnet50_imagenet_tv", str(dataset / "val"), "--out", str(tmp_path)]) == 2
    assert "model.backbone.weights=resnet50_imagenet_tv" in capsys.readouterr().err


def test_weights_by_name_on_train_predict_eval_and_export(publish, server, dataset, tmp_path, monkeypatch, capsys):
    entry = publish("yolact_r101_coco", tiny_checkpoint_file("yolact_r18_tiny", num_classes=6), converter="instaseg")
    val = [str(dataset / "val")]
    assert main(["predict", "--weights", entry.name, *val, "--out", str(tmp_path / "p"), "--no-overlays",
                 "--score-threshold", "0"]) == 0
    assert json.loads((tmp_path / "p/results.json").read_text()) is not None
    monkeypatch.setenv("INSTASEG_WEIGHTS_MIRROR", closed_port_url())  # the rest runs from the cache
    assert main(["eval", "--weights", entry.name, "--json", str(dataset / "annotations/val.json"),
                 "--images", val[0]]) == 0
    assert main(["export", "--weights", entry.name, "--format", "torch_export", "--size", "64", "64",
                 "--out", str(tmp_path / "m.pt2")]) == 0
    assert (tmp_path / "m.pt2").is_file()
    assert main(_train_args(dataset, tmp_path / "run", "--weights", entry.name)) == 0
    assert "initialised from" in capsys.readouterr().err
    assert server.requests[entry.file_name] == 1
    # a path works as well (train and predict by path: the fine-tuning and README tests below)
    last = str(tmp_path / "run/checkpoints/last.pt")
    assert main(["eval", "--weights", last, "--json", str(dataset / "annotations/val.json"), "--images", val[0]]) == 0


def test_fine_tuning_a_coco_model_to_the_datasets_classes(dataset, tmp_path, capsys):
    coco = tmp_path / "coco_model.pt"
    coco.write_bytes(tiny_checkpoint_file("ms_rcnn_r18_fpn_tiny", num_classes=80))
    run = tmp_path / "run"
    assert main(_train_args(dataset, run, "--weights", str(coco), "--preset", "ms_rcnn_r18_fpn_tiny")) == 0
    err = capsys.readouterr().err
    assert "re-initialised 8 class-sized tensors (the weights predict 80 classes, this model 6)" in err
    for name in ("box_predictor.cls_score.weight", "mask_head.predictor.bias", "maskiou_head.predictor.weight"):
        assert name in err
    payload = load_checkpoint(run / "checkpoints/last.pt")
    assert payload["iteration"] == 2 and payload["config"]["model"]["num_classes"] == 6
    assert (run / "config.yaml").read_text().startswith(f"# overrides: --weights {coco}")
    assert main(_train_args(dataset, tmp_path / "r1")) == 2
    assert "give --preset" in capsys.readouterr().err
    assert main(_train_args(dataset, tmp_path / "r2", "--weights", str(coco), "--preset", "mask_rcnn_r18_fpn_tiny")) == 2
    assert "leave the preset out" in capsys.readouterr().err


def test_train_from_imagenet_weights_by_name(publish, server, dataset, tmp_path, capsys):
    publish("resnet18_imagenet_tv", torchvision_resnet18_file())
    assert main(_train_args(dataset, tmp_path / "run", "--preset", "mask_rcnn_r18_fpn_tiny",
                            "--set", "model.backbone.weights=resnet18_imagenet_tv")) == 0
    assert "resnet18-f37072fd.pth: torchvision ImageNet weights, loaded" in capsys.readouterr().err
    config = (tmp_path / "run/config.yaml").read_text()
    assert "weights: resnet18_imagenet_tv" in config
    assert main(_train_args(dataset, tmp_path / "run2", "--preset", "mask_rcnn_r18_fpn_tiny",
                            "--set", "model.backbone.weights=resnet50_imagenet_msra")) == 2
    assert "holds resnet50 weights" in capsys.readouterr().err


def test_readme_flow_fine_tune_a_pretrained_model(publish, server, dataset, tmp_path, capsys):
    """README's first example, verbatim but for the small sizes: list, then train --weights NAME.
    The name is re-pointed at a tiny synthetic COCO-class model served from 127.0.0.1."""
    publish("maskrcnn_r50_fpn_3x_coco_d2", tiny_checkpoint_file("mask_rcnn_r18_fpn_tiny", num_classes=80),
            converter="instaseg")
    assert main(["weights", "list"]) == 0
    run = tmp_path / "runs/shapes"
    assert main(["train", "--weights", "maskrcnn_r50_fpn_3x_coco_d2",
                 "--train-json", str(dataset / "annotations/train.json"), "--train-images", str(dataset / "train"),
                 "--val-json", str(dataset / "annotations/val.json"), "--val-images", str(dataset / "val"),
                 "--out", str(run), "--no-progress", *SMALL]) == 0
    assert "re-initialised 6 class-sized tensors" in capsys.readouterr().err
    assert main(["predict", "--weights", str(run / "checkpoints/last.pt"), str(dataset / "val"),
                 "--out", str(tmp_path / "pred")]) == 0
    assert (run / "metrics.json").is_file()
