"""COCO json end to end: non-contiguous category ids must still score AP 1 for perfect predictions,
and images without annotations are kept as negatives. (Per-entry validation messages are covered
in tests/data/test_coco.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instaseg.data.coco import CocoDataset
from instaseg.evaluation import evaluate_coco
from instaseg.evaluation.coco_eval import instances_to_coco_results
from instaseg.structures.instances import Instances

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CATEGORY_IDS = [40, 3, 17]  # unsorted, non-contiguous, not starting at 1


def _write(tmp_path: Path) -> Path:
    """Three 24x30 images with rectangles of each category; image 3 has no annotation."""
    (tmp_path / "img").mkdir()
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for image_id in (1, 2, 3):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 24, "width": 30})
        Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{image_id}.png")
        if image_id == 3:
            continue
        for k, category_id in enumerate(CATEGORY_IDS):
            x, y, w, h = 2 + 8 * k, 2 + 5 * image_id, 6 + image_id, 5 + k
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]}
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    return tmp_path / "gt.json"


def test_perfect_predictions_on_non_contiguous_categories_score_ap_1(tmp_path):
    dataset = CocoDataset(_write(tmp_path), tmp_path / "img")
    assert dataset.category_ids == sorted(CATEGORY_IDS) and len(dataset) == 3
    results = []
    for index in range(len(dataset)):
        sample = dataset[index]
        t = sample.targets
        instances = Instances(boxes=t.boxes, scores=torch.ones(len(t.labels)), labels=t.labels, masks=t.masks)
        results += instances_to_coco_results(instances, sample.image_id, dataset.category_ids)
    assert len(results) == 6 and {r["category_id"] for r in results} == set(CATEGORY_IDS)
    metrics = evaluate_coco(dataset.json_path, results, verbose=False)
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == pytest.approx(1.0)
    # a shifted label map (label k -> the k-th id in json order) must not also score 1
    wrong = [{**r, "category_id": CATEGORY_IDS[dataset.category_ids.index(r["category_id"])]} for r in results]
    assert evaluate_coco(dataset.json_path, wrong, verbose=False)["bbox"]["AP"] < 0.5


def test_image_without_annotations_is_a_negative(tmp_path):
    dataset = CocoDataset(_write(tmp_path), tmp_path / "img")
    sample = dataset[dataset.image_ids.index(3)]
    assert sample.image.shape == (3, 24, 30)
    assert sample.targets.boxes.shape == (0, 4) and sample.targets.masks.shape == (0, 24, 30)
    assert len(CocoDataset(dataset.json_path, tmp_path / "img", keep_negatives=False)) == 2
