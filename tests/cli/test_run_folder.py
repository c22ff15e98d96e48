"""``instaseg train`` leaves a run folder a person can read at a glance; ``instaseg eval`` prints and
writes the per-class table and the same pictures; ``instaseg report`` redraws them from the files."""

import csv
import json

import numpy as np
import pytest

from instaseg.cli.main import main
from instaseg.evaluation.curves import load_curves, mean_ap

from tests.cli.test_cli import TINY
from tests.viz.test_plots import assert_png

PICTURES = ["results.png", "pr_curves_box.png", "pr_curves_mask.png", "f1_curves_box.png", "f1_curves_mask.png",
            "confusion_matrix.png", "labels.png", "train_batch_0.png", "train_batch_1.png", "train_batch_2.png"]


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    """4 iterations with an evaluation at 2 and at 4."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--preset", "mask_rcnn_r18_fpn_tiny", "--train-json", str(dataset / "annotations/train.json"),
                 "--train-images", str(dataset / "train"), "--val-json", str(dataset / "annotations/val.json"),
                 "--val-images", str(dataset / "val"), "--out", str(out), "--no-progress", *TINY,
                 "--set", "train.eval_period=2"]) == 0
    return out


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_picture_and_table_is_there(run, dataset):
    for name in PICTURES:
        assert_png(run / name)
    predictions = sorted((run / "val_predictions").glob("*.png"))
    annotations = json.loads((dataset / "annotations/val.json").read_text())["annotations"]
    holding = sorted({a["image_id"] for a in annotations if not a["iscrowd"]})
    assert sorted(int(p.stem) for p in predictions) == holding[:4] and predictions
    for path in predictions:
        width, height = assert_png(path)
        assert width > 2 * height * 0.9  # ground truth beside prediction
    classes = json.loads((dataset / "annotations/val.json").read_text())["categories"]
    rows = _csv(run / "per_class.csv")
    assert [r["name"] for r in rows][0] == "all" and len(rows) == len(classes) + 1
    assert list(rows[0]) == ["name", "images", "instances", "box_ap", "box_ap50", "mask_ap", "mask_ap50"]


def test_results_csv_equals_metrics_jsonl(run):
    rows = {int(r["iteration"]): r for r in _csv(run / "results.csv")}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(rows) == sorted({r["iteration"] for r in records}) == [2, 4]
    for record in records:
        row = rows[record["iteration"]]
        logged = {**record.get("losses", {}), **{k: record[k] for k in ("lr", "total_loss") if k in record}}
        for key, value in logged.items():
            assert float(row[key]) == value
        for iou_type, values in record.get("eval", {}).items():
            for key, value in values.items():
                assert (row[f"{iou_type}_{key}"] == "") if value is None else float(row[f"{iou_type}_{key}"]) == value


def test_pr_arrays_reproduce_the_ap_of_metrics_json(run):
    metrics = json.loads((run / "metrics.json").read_text())
    for iou_type, name in (("bbox", "pr_box.npz"), ("segm", "pr_mask.npz")):
        curves = load_curves(run / "plot_data" / name)
        assert curves.precision.shape[:2] == (10, 101)  # COCO's 10 IoU thresholds x 101 recall points
        valid = curves.precision[curves.precision > -1]
        assert abs(valid.mean() - metrics[iou_type]["AP"]) < 1e-6
        assert abs(mean_ap(curves, 0.5) - metrics[iou_type]["AP50"]) < 1e-6
    counts = json.loads((run / "plot_data" / "confusion.json").read_text())
    assert counts["rows"] == "ground truth" and counts["score_thresh"] == 0.5 and counts["iou_thresh"] == 0.5
    objects = np.array(counts["counts"])[:-1].sum()
    assert objects == load_curves(run / "plot_data" / "pr_mask.npz").gt_instances.sum()


def test_report_redraws_every_picture_from_the_files(run, tmp_path, capsys):
    assert main(["report", str(run), "--out", str(tmp_path / "again")]) == 0
    for name in PICTURES + ["results.csv", "per_class.csv"]:
        assert (tmp_path / "again" / name).is_file(), name
    redrawn = list((tmp_path / "again" / "val_predictions").glob("*.png"))
    assert len(redrawn) == len(list((run / "val_predictions").glob("*.png")))
    assert (tmp_path / "again" / "results.csv").read_text() == (run / "results.csv").read_text()
    assert "files in" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "nothing to draw" in capsys.readouterr().err


def test_eval_prints_the_sorted_per_class_table_and_writes_the_pictures(run, dataset, tmp_path, capsys):
    gt = str(dataset / "annotations/val.json")
    assert main(["eval", "--checkpoint", str(run / "checkpoints/last.pt"), "--json", gt,
                 "--images", str(dataset / "val"), "--out", str(tmp_path / "ev"), "--sort", "instances"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("class ") :].splitlines()
    assert table[0].split() == ["class", "images", "instances", "box", "AP", "AP50", "mask", "AP", "AP50"]
    assert table[1].startswith("all")
    counts = [int(line.split()[2]) for line in table[2:] if line.strip() and not line.startswith("wrote")]
    assert counts == sorted(counts, reverse=True)
    for name in ("per_class.csv", "pr_curves_box.png", "pr_curves_mask.png", "confusion_matrix.png", "metrics.json"):
        assert (tmp_path / "ev" / name).is_file(), name
    assert list((tmp_path / "ev" / "val_predictions").glob("*.png"))
    rows = _csv(tmp_path / "ev" / "per_class.csv")
    assert [int(r["instances"]) for r in rows[1:]] == counts
    # by name
    assert main(["eval", "--checkpoint", str(run / "checkpoints/last.pt"), "--json", gt,
                 "--images", str(dataset / "val"), "--sort", "name"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out[out.index("class ") :].splitlines()[2:] if line.strip()]
    assert names == sorted(names)


def test_eval_of_a_results_file_writes_pr_curves_and_confusion(dataset, tmp_path, capsys):
    data = json.loads((dataset / "annotations/val.json").read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
                "segmentation": a["segmentation"]} for a in data["annotations"] if not a["iscrowd"]]
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert main(["eval", "--results", str(tmp_path / "r.json"), "--json", str(dataset / "annotations/val.json"),
                 "--out", str(tmp_path / "ev")]) == 0
    rows = _csv(tmp_path / "ev" / "per_class.csv")
    assert float(rows[0]["mask_ap"]) == pytest.approx(1.0) and float(rows[0]["box_ap"]) == pytest.approx(1.0)
    counts = np.array(json.loads((tmp_path / "ev" / "plot_data" / "confusion.json").read_text())["counts"])
    assert counts[:-1, :-1].trace() == len(results) and counts.sum() == len(results)  # all on the diagonal
    assert_png(tmp_path / "ev" / "confusion_matrix.png")
    assert "all " in capsys.readouterr().out
