"""``instaseg predict`` on folders with the problems of a first real dataset: unreadable files,
results to be scored against the dataset, thresholds that keep nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from instaseg.cli.main import main
from instaseg.data.synthetic import generate_synthetic_dataset
from instaseg.detectors.build import build_from_config, resolve_config
from instaseg.engine.checkpoint import save_checkpoint


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny images: a second thread only adds spin-waits on a busy machine
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_images=10, image_size=48,
                                      val_fraction=0.4, seed=3)


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """An untrained tiny model: its scores are low and arbitrary, which is all these tests need."""
    config = resolve_config("mask_rcnn_r18_fpn_tiny", num_classes=len(data.category_names),
                            overrides=["input.min_size_test=48", "input.max_size_test=48",
                                       "model.inference.detections_per_image=10", "model.rpn.pre_nms_topk_test=50",
                                       "model.rpn.post_nms_topk_test=20"])
    path = tmp_path_factory.mktemp("ckpt") / "untrained.pt"
    val = json.loads(Path(data.val_annotations).read_text())
    ids = sorted(c["id"] for c in val["categories"])
    names = {c["id"]: c["name"] for c in val["categories"]}
    save_checkpoint(path, build_from_config(config), config,
                    categories={"ids": ids, "names": [names[i] for i in ids]})
    return str(path)


def _folder_with_a_truncated_image(data, tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "images"
    shutil.copytree(data.val_images, folder)
    files = sorted(folder.glob("*.png"))
    bad = files[1]
    bad.write_bytes(bad.read_bytes()[:120])  # a truncated PNG: the header reads, the pixels do not
    return folder, bad


def test_predict_skips_an_unreadable_image_and_reports_it(data, checkpoint, tmp_path, capsys):
    folder, bad = _folder_with_a_truncated_image(data, tmp_path)
    count = len(list(folder.glob("*.png")))
    assert main(["predict", "--checkpoint", checkpoint, str(folder), "--out", str(tmp_path / "p"),
                 "--score-threshold", "0", "--no-overlays"]) == 0
    captured = capsys.readouterr()
    assert f"skipped 1 unreadable image" in captured.out and bad.name in captured.out + captured.err
    done = json.loads((tmp_path / "p" / "images.json").read_text())
    assert len(done) == count - 1 and bad.name not in {Path(d["file_name"]).name for d in done}
    results = json.loads((tmp_path / "p" / "results.json").read_text())
    assert {r["image_id"] for r in results} <= {d["id"] for d in done}


def test_predict_stopping_at_a_bad_image_keeps_the_finished_work(data, checkpoint, tmp_path, capsys):
    folder, bad = _folder_with_a_truncated_image(data, tmp_path)
    assert main(["predict", "--checkpoint", checkpoint, str(folder), "--out", str(tmp_path / "p"),
                 "--score-threshold", "0", "--no-overlays", "--no-skip-bad"]) == 2
    error = capsys.readouterr().err
    assert bad.name in error and "1 image done" in error and "--skip-bad" in error
    done = json.loads((tmp_path / "p" / "images.json").read_text())  # valid JSON: written image by image
    assert [Path(d["file_name"]).name for d in done] == [sorted(folder.glob("*.png"))[0].name]
    json.loads((tmp_path / "p" / "results.json").read_text())


def test_predict_with_the_dataset_json_writes_results_eval_can_score(data, checkpoint, tmp_path, capsys):
    gt = json.loads(Path(data.val_annotations).read_text())
    out = tmp_path / "p"
    assert main(["predict", "--checkpoint", checkpoint, str(data.val_images), "--out", str(out),
                 "--score-threshold", "0", "--no-overlays", "--json", str(data.val_annotations)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results and {r["image_id"] for r in results} <= {i["id"] for i in gt["images"]}
    assert {r["category_id"] for r in results} <= {c["id"] for c in gt["categories"]}
    done = json.loads((out / "images.json").read_text())
    by_name = {Path(i["file_name"]).name: i["id"] for i in gt["images"]}
    assert all(by_name[Path(d["file_name"]).name] == d["id"] for d in done)
    assert main(["eval", "--results", str(out / "results.json"), "--json", str(data.val_annotations)]) == 0


def test_predict_refuses_images_the_dataset_json_does_not_list(data, checkpoint, tmp_path, capsys):
    assert main(["predict", "--checkpoint", checkpoint, str(data.train_images), "--out", str(tmp_path / "p"),
                 "--json", str(data.val_annotations)]) == 2
    assert "not in" in capsys.readouterr().err


def test_predict_says_the_best_score_when_nothing_passes_the_threshold(data, checkpoint, tmp_path, capsys):
    assert main(["predict", "--checkpoint", checkpoint, str(data.val_images), "--out", str(tmp_path / "p"),
                 "--score-threshold", "0.999", "--no-overlays"]) == 0
    out = capsys.readouterr().out
    assert "0 detections" in out and "best score" in out and "--score-threshold" in out
    assert main(["predict", "--checkpoint", checkpoint, str(data.val_images), "--out", str(tmp_path / "q"),
                 "--no-overlays", "--set", "model.inference.score_thresh=0.9999"]) == 0
    assert "detected nothing at all" in capsys.readouterr().out


def test_predict_int8_calibrates_on_the_input_images_and_finds_what_float32_finds(data, checkpoint, tmp_path,
                                                                                 capsys):
    base = ["predict", "--checkpoint", checkpoint, str(data.val_images), "--score-threshold", "0", "--no-overlays"]
    assert main(base + ["--out", str(tmp_path / "float32")]) == 0
    assert main(base + ["--out", str(tmp_path / "int8"), "--int8"]) == 0
    said = capsys.readouterr().out
    assert "int8: backbone, FPN and head convolutions quantized, calibrated on 4 input image(s)" in said
    float32, int8 = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("float32", "int8"))
    assert len(int8) > 0 and {r["image_id"] for r in int8} == {r["image_id"] for r in float32}
    # an untrained model's scores are near-equal, so compare the best score of each image
    best = {name: {} for name in ("float32", "int8")}
    for name, results in (("float32", float32), ("int8", int8)):
        for r in results:
            best[name][r["image_id"]] = max(best[name].get(r["image_id"], 0.0), r["score"])
    assert all(abs(best["int8"][i] - best["float32"][i]) < 0.02 for i in best["float32"])
    assert main(base + ["--out", str(tmp_path / "cuda"), "--int8", "--device", "cuda"]) == 2
    assert "--int8 runs on the CPU" in capsys.readouterr().err
