"""``instaseg data stats | show`` on a small hand-made COCO dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instaseg.cli.main import main


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    """Two 40x50 images named image01.png and sub/image02.png (ids 7 and 9); categories 'cat' (two
    instances), 'dog' (one) and 'cow' (none)."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("image01.png", "sub/image02.png"):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(images / name)

    def ann(ann_id: int, image_id: int, category_id: int) -> dict:
        return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [5, 20, 20, 10],
                "iscrowd": 0, "area": 200.0, "segmentation": [[5, 20, 25, 20, 25, 30, 5, 30]]}

    doc = {"images": [{"id": 7, "file_name": "image01.png", "height": 40, "width": 50},
                      {"id": 9, "file_name": "sub/image02.png", "height": 40, "width": 50}],
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cow"}],
           "annotations": [ann(1, 7, 1), ann(2, 9, 1), ann(3, 9, 2)]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    return path, images


def test_data_stats_prints_counts_as_integers_and_every_category(dataset, capsys):
    json_path, images = dataset
    assert main(["data", "stats", "--json", str(json_path), "--images", str(images)]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["cat", "2"] in lines and ["dog", "1"] in lines and ["cow", "0"] in lines
    assert ["images:", "2"] in lines and ["crowd_regions:", "0"] in lines and ["boxes_small:", "3"] in lines
    assert ["height_max:", "40"] in lines and ["instances_mean:", "1.5"] in lines


def test_data_show_keeps_each_file_name_and_says_its_limit(dataset, tmp_path, capsys):
    json_path, images = dataset
    out = tmp_path / "gt"
    assert main(["data", "show", "--json", str(json_path), "--images", str(images), "--out", str(out)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["image01.png", "sub/image02.png"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["data", "show", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--max-images N" in help_text and "(default 16)" in help_text and "--no-labels" in help_text


def test_data_show_no_labels_draws_masks_and_boxes_only(dataset, tmp_path):
    json_path, images = dataset
    pictures = {}
    for flag in ([], ["--no-labels"]):
        out = tmp_path / ("bare" if flag else "labelled")
        assert main(["data", "show", "--json", str(json_path), "--images", str(images), "--out", str(out),
                     "--max-images", "1", *flag]) == 0
        pictures[bool(flag)] = np.asarray(Image.open(out / "image01.png"))
    assert pictures[True].shape == pictures[False].shape
    label_band = (slice(8, 20), slice(5, 45))  # above the box (x 5..25, y 20..30), where its label goes
    assert (pictures[True][label_band] != pictures[False][label_band]).any()
    inside = (slice(23, 28), slice(8, 23))  # the mask: the same with and without labels
    assert (pictures[True][inside] == pictures[False][inside]).all()


def test_data_synth_keypoints_then_show_draws_the_figures(tmp_path, capsys):
    root = tmp_path / "figures"
    assert main(["data", "synth", "--out", str(root), "--images", "3", "--size", "48", "--keypoints"]) == 0
    assert "classes: figure" in capsys.readouterr().out
    doc = json.loads((root / "annotations" / "train.json").read_text())
    assert len(doc["categories"][0]["keypoints"]) == 13 and doc["annotations"][0]["num_keypoints"] > 0
    assert main(["data", "stats", "--json", str(root / "annotations" / "train.json"), "--images",
                 str(root / "train")]) == 0
    assert "keypoints: 13 (head, neck, left_shoulder," in capsys.readouterr().out
    out = tmp_path / "show"
    assert main(["data", "show", "--json", str(root / "annotations" / "train.json"), "--images",
                 str(root / "train"), "--out", str(out), "--no-labels"]) == 0
    first = doc["annotations"][0]
    ann = [a for a in doc["annotations"] if a["image_id"] == first["image_id"]][-1]  # drawn last
    image_name = next(i["file_name"] for i in doc["images"] if i["id"] == ann["image_id"])
    picture = np.asarray(Image.open(out / image_name))
    x, y, v = [p for p in zip(*[iter(ann["keypoints"])] * 3) if p[2] > 0][-1]  # its joint drawn last
    assert (picture[y, x] == 255).all()  # a white joint dot
