"""The ``instaseg`` command end to end on tiny synthetic data (a few iterations, 64 px images)."""

import json

import numpy as np
import pytest

from instaseg.cli.main import main
from instaseg.engine.evaluate import read_metrics_json

from tests.evaluation.test_coco_eval import boxes_from_masks, results_case, without

TINY = [
    "--set", "train.max_iter=4", "--set", "train.ims_per_batch=2", "--set", "train.warmup_iters=2",
    "--set", "train.checkpoint_period=2", "--set", "train.num_workers=0",
    "--set", "input.min_size_train=[64]", "--set", "input.min_size_test=64", "--set", "input.max_size_test=64",
]


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    args = ["train", "--preset", "mask_rcnn_r18_fpn_tiny", "--train-json", str(dataset / "annotations/train.json"),
            "--train-images", str(dataset / "train"), "--val-json", str(dataset / "annotations/val.json"),
            "--val-images", str(dataset / "val"), "--out", str(run), "--no-progress", *TINY]
    assert main(args) == 0
    return run, args


def test_data_stats_and_show(dataset, tmp_path, capsys):
    assert main(["data", "stats", "--json", str(dataset / "annotations/train.json"), "--images", str(dataset / "train")]) == 0
    out = capsys.readouterr().out
    assert "triangle" in out and "images" in out
    assert main(["data", "show", "--json", str(dataset / "annotations/val.json"), "--images", str(dataset / "val"),
                 "--out", str(tmp_path / "gt"), "--max-images", "2"]) == 0
    assert len(list((tmp_path / "gt").glob("*.png"))) == 2


def test_train_writes_checkpoints_metrics_and_resumes(trained, capsys):
    run, args = trained
    assert (run / "checkpoints" / "last.pt").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"bbox", "segm"} and set(metrics["segm"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines and all("iteration" in line for line in lines)
    # another max_iter under cosine decay would change the learning rates done: refused, naming both values
    capsys.readouterr()
    assert main([a if a != "train.max_iter=4" else "train.max_iter=6" for a in args] + ["--resume"]) == 2
    assert "train.max_iter 4 -> 6" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0  # the same schedule: a finished run stays finished
    assert "iteration 4/4" in capsys.readouterr().out


def test_eval_checkpoint_and_results_file(trained, dataset, tmp_path, capsys):
    run, _ = trained
    gt = str(dataset / "annotations/val.json")
    assert main(["eval", "--checkpoint", str(run / "checkpoints/last.pt"), "--json", gt,
                 "--images", str(dataset / "val"), "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0.0 <= metrics["segm"]["AP"] <= 1.0
    # a results file made by anything: here the ground truth itself, which scores AP 1
    data = json.loads((dataset / "annotations/val.json").read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in data["annotations"] if not a["iscrowd"]]
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert main(["eval", "--results", str(tmp_path / "r.json"), "--json", gt, "--out", str(tmp_path / "ev2")]) == 0
    scored = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert scored["bbox"]["AP"] == pytest.approx(1.0)


def test_predict_folder_empty_folder_and_video(trained, dataset, tmp_path, capsys):
    run, _ = trained
    ckpt = str(run / "checkpoints/last.pt")
    assert main(["predict", "--checkpoint", ckpt, str(dataset / "val"), "--out", str(tmp_path / "p"),
                 "--score-threshold", "0.0"]) == 0
    assert len(list((tmp_path / "p").glob("*.png"))) == len(list((dataset / "val").glob("*.png")))
    json.loads((tmp_path / "p" / "results.json").read_text())
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--checkpoint", ckpt, str(tmp_path / "empty"), "--out", str(tmp_path / "q")]) == 2
    assert "no images found" in capsys.readouterr().err
    imageio = pytest.importorskip("imageio.v2")
    frames = [np.full((64, 64, 3), 40 * k, dtype=np.uint8) for k in range(3)]
    imageio.mimwrite(tmp_path / "clip.mp4", frames, fps=5, macro_block_size=1)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", ckpt, str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "v")]) == 0
    assert len(imageio.mimread(tmp_path / "v" / "clip_overlay.mp4")) == 3
    assert "3/3" in capsys.readouterr().err  # the progress bar knows the frame count


@pytest.mark.parametrize("argv, message", [
    (["train", "--preset", "nope", "--train-json", "x", "--train-images", "y", "--out", "z"], "unknown preset"),
    (["presets", "--show", "mask_rcnn_r5O_fpn"], "unknown preset"),
    (["eval", "--results", "missing.json", "--json", "missing.json"], "cannot score"),
])
def test_user_errors_are_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.fixture
def results_files(tmp_path):
    """A tiny ground truth with masks and results files holding boxes and masks, masks only (RLE with
    str counts, as cocoapi's instances_val2014_fakesegm100_results.json), boxes only, or boxes that are
    toBbox of the masks."""
    gt, results = results_case()
    files = {"gt": gt, "both": results, "masks": without(results, "bbox"), "boxes": without(results, "segmentation"),
             "from_masks": boxes_from_masks(results), "empty": [],
             "mixed": [r if i != 2 else without([r], "bbox")[0] for i, r in enumerate(results)],
             "unknown_image": [{**r, "image_id": 99} for r in results]}
    for name, content in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    return tmp_path


def _eval_results(folder, name: str, capsys) -> tuple[dict, str]:
    """``instaseg eval --results <name>.json``: its metrics.json and what it printed."""
    out = folder / f"ev_{name}"
    assert main(["eval", "--results", str(folder / f"{name}.json"), "--json", str(folder / "gt.json"),
                 "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text()), capsys.readouterr().out


def test_eval_masks_only_results_file_scores_boxes_from_the_masks(results_files, capsys):
    masks, printed = _eval_results(results_files, "masks", capsys)
    note = "computed from the masks (results have no 'bbox')"
    assert f"bbox: {note}" in printed and "| bbox |" in printed and "| segm |" in printed
    assert masks["notes"] == {"bbox": note}
    assert set(read_metrics_json(results_files / "ev_masks" / "metrics.json")) == {"bbox", "segm"}
    both, printed_both = _eval_results(results_files, "both", capsys)
    from_masks, _ = _eval_results(results_files, "from_masks", capsys)
    assert "notes" not in both and "computed from" not in printed_both
    assert masks["segm"] == both["segm"]  # the masks are scored exactly as with boxes beside them
    assert masks["bbox"] == from_masks["bbox"] and masks["bbox"] != both["bbox"]


def test_eval_boxes_only_results_file_skips_segm_and_says_why(results_files, capsys):
    boxes, printed = _eval_results(results_files, "boxes", capsys)
    both, _ = _eval_results(results_files, "both", capsys)
    assert "segm: skipped (results have no 'segmentation')" in printed and "| segm |" not in printed
    assert set(boxes) == {"bbox", "notes"} and boxes["bbox"] == both["bbox"]
    empty, printed = _eval_results(results_files, "empty", capsys)  # nothing detected: AP 0, not an error
    assert empty["bbox"]["AP"] == 0.0 and "segm: skipped (the results are empty)" in printed


@pytest.mark.parametrize("name, message", [
    ("mixed", "result 2 has no 'bbox' (result 0 has one"),
    ("unknown_image", "image ids not in the ground truth: [99]"),
])
def test_eval_bad_results_file_is_one_clear_line(results_files, name, message, capsys):
    argv = ["eval", "--results", str(results_files / f"{name}.json"), "--json", str(results_files / "gt.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_set_key_is_refused(dataset, tmp_path, capsys):
    argv = ["train", "--preset", "mask_rcnn_r18_fpn_tiny", "--train-json", str(dataset / "annotations/train.json"),
            "--train-images", str(dataset / "train"), "--out", str(tmp_path / "r"), "--set", "model.rpn.nms_tresh=0.5"]
    assert main(argv) == 2
    assert "nms_tresh" in capsys.readouterr().err
    assert main(argv[:-1] + ["model.num_classes=x"]) == 2
    assert "expected an integer" in capsys.readouterr().err
    assert main(argv[:-1] + ["model.inference.nms=greedy"]) == 2
    err = capsys.readouterr().err
    assert "model.inference.nms: expected one of 'nms', 'soft_nms', 'fast_nms', got 'greedy'" in err
    assert "Traceback" not in err


def test_presets_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "mask_rcnn_r50_fpn" in out and "ms_rcnn_r50_fpn" in out


def test_ms_rcnn_trains_evaluates_and_predicts_from_the_cli(dataset, tmp_path):
    run = tmp_path / "ms"
    gt, images = str(dataset / "annotations/val.json"), str(dataset / "val")
    argv = ["train", "--preset", "ms_rcnn_r18_fpn_tiny", "--train-json", str(dataset / "annotations/train.json"),
            "--train-images", str(dataset / "train"), "--out", str(run), "--no-progress",
            *[a if a != "train.max_iter=4" else "train.max_iter=2" for a in TINY]]
    assert main(argv) == 0
    ckpt = str(run / "checkpoints/last.pt")
    assert main(["eval", "--checkpoint", ckpt, "--json", gt, "--images", images, "--out", str(tmp_path / "ev")]) == 0
    assert set(json.loads((tmp_path / "ev" / "metrics.json").read_text())) == {"bbox", "segm"}
    assert main(["predict", "--checkpoint", ckpt, images, "--out", str(tmp_path / "p"), "--score-threshold", "0",
                 "--no-overlays"]) == 0
    results = json.loads((tmp_path / "p" / "results.json").read_text())
    assert results and all("mask_score" in r for r in results)  # S_mask = S_cls x S_iou


@pytest.mark.parametrize("rank, reported", [("0", True), ("1", False)])
def test_train_reports_once_under_torchrun(dataset, tmp_path, monkeypatch, capsys, rank, reported):
    import instaseg.hub.training as hub_training

    summary = {"status": "finished", "iteration": 3, "max_iter": 3, "seconds": 1.0, "last_checkpoint": "x.pt"}
    monkeypatch.setattr(hub_training, "train_on_dataset", lambda *args, **kwargs: summary)
    monkeypatch.setenv("RANK", rank)
    argv = ["train", "--preset", "mask_rcnn_r18_fpn_tiny", "--train-json", str(dataset / "annotations/train.json"),
            "--train-images", str(dataset / "train"), "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    assert ("finished at iteration 3/3" in capsys.readouterr().out) == reported
