"""``instaseg eval --results`` of keypoint results: a ``keypoints`` row beside ``bbox`` (and ``segm``),
and ``keypoints`` in metrics.json."""

from __future__ import annotations

import json

import pytest

from instaseg.cli.main import main
from instaseg.data.synthetic_keypoints import generate_keypoint_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    """A tiny stick-figure dataset and results made from its ground truth (COCO's pixel-index frame),
    one figure's joints moved 2 px so that keypoint AP is below 1."""
    root = tmp_path_factory.mktemp("fig")
    data = generate_keypoint_dataset(root / "data", num_images=6, image_size=96, seed=1, val_fraction=0.0)
    gt = json.loads(data.train_annotations.read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 0.9 - 0.01 * k, "segmentation": a["segmentation"],
                "keypoints": [float(v) + 2.0 * (k == 0 and i % 3 == 0) for i, v in enumerate(a["keypoints"])]}
               for k, a in enumerate(gt["annotations"])]
    for name, keep in (("full", ("bbox", "segmentation", "keypoints")), ("boxes_keypoints", ("bbox", "keypoints")),
                       ("keypoints_only", ("keypoints",)), ("boxes", ("bbox",))):
        fields = {"image_id", "category_id", "score", *keep}
        (root / f"{name}.json").write_text(json.dumps([{k: v for k, v in r.items() if k in fields} for r in results]))
    return root, data.train_annotations


def _eval(root, gt, name: str, capsys) -> tuple[dict, str]:
    out = root / f"ev_{name}"
    assert main(["eval", "--results", str(root / f"{name}.json"), "--json", str(gt), "--out", str(out)]) == 0
    return json.loads((out / "metrics.json").read_text()), capsys.readouterr().out


def _row(printed: str, iou_type: str) -> dict[str, str]:
    lines = printed.splitlines()
    header = next(line for line in lines if line.startswith("| type |"))
    row = next(line for line in lines if line.startswith(f"| {iou_type} |"))
    return dict(zip((c.strip() for c in header.strip("|").split("|")), (c.strip() for c in row.strip("|").split("|"))))


def test_keypoint_results_print_a_keypoints_row_beside_bbox_and_segm(figures, capsys) -> None:
    root, gt = figures
    metrics, printed = _eval(root, gt, "full", capsys)
    assert set(metrics) == {"bbox", "segm", "keypoints"}
    keypoints = metrics["keypoints"]
    assert set(keypoints) == {"AP", "AP50", "AP75", "APm", "APl", "AR@20", "ARm", "ARl"}
    assert 0.5 < keypoints["AP"] < 1.0 and metrics["bbox"]["AP"] == pytest.approx(1.0)
    row = _row(printed, "keypoints")
    assert row["AP"] == f"{keypoints['AP']:.3f}" and row["AR@20"] == f"{keypoints['AR@20']:.3f}"
    assert row["APs"] == "-" and row["AR@100"] == "-" and _row(printed, "segm")["AR@20"] == "-"
    assert (root / "ev_full" / "plot_data" / "pr_keypoints.npz").is_file()


def test_boxes_and_keypoints_score_bbox_and_keypoints(figures, capsys) -> None:
    root, gt = figures
    full, _ = _eval(root, gt, "full", capsys)
    metrics, printed = _eval(root, gt, "boxes_keypoints", capsys)
    assert set(metrics) == {"bbox", "keypoints", "notes"} and "| segm |" not in printed
    assert metrics["keypoints"] == full["keypoints"]
    assert "segm: skipped (results have no 'segmentation')" in printed


def test_keypoints_only_results_score_keypoints_alone(figures, capsys) -> None:
    root, gt = figures
    full, _ = _eval(root, gt, "full", capsys)
    metrics, printed = _eval(root, gt, "keypoints_only", capsys)
    assert metrics["keypoints"] == full["keypoints"] and "bbox" not in metrics
    assert "bbox: skipped (results have neither 'bbox' nor 'segmentation')" in printed
    assert "| keypoints |" in printed and "| bbox |" not in printed


def test_keypoint_results_on_ground_truth_without_keypoint_names(figures, tmp_path, capsys) -> None:
    root, gt = figures
    data = json.loads(gt.read_text())
    for category in data["categories"]:
        del category["keypoints"], category["skeleton"], category["sigmas"]
    (tmp_path / "gt.json").write_text(json.dumps(data))
    metrics, printed = _eval(root, tmp_path / "gt.json", "boxes_keypoints", capsys)
    assert "keypoints" not in metrics
    assert "keypoints: skipped (no category of --json declares keypoint names)" in printed
    assert main(["eval", "--results", str(root / "keypoints_only.json"), "--json", str(tmp_path / "gt.json")]) != 0
    assert "nothing to score" in capsys.readouterr().err
