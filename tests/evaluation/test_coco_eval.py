"""COCO AP checked against hand-computed values on tiny hand-built datasets, and against a slow
reference implementation of COCO's matching and 101-point interpolation on random data.

Hand computations use COCO's definitions: 10 IoU thresholds 0.50:0.05:0.95; precision made
monotone from the right; sampled at the 101 recall thresholds 0.00:0.01:1.00 (the precision at
recall threshold r is the envelope at the first rank whose recall reaches r, 0 if none does).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from instaseg.evaluation.coco_eval import (
    COCOEvaluator,
    evaluate_coco,
    format_metrics_table,
    format_per_category_table,
    instances_to_coco_results,
)
from instaseg.structures.instances import Instances

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# --------------------------------------------------------------------------------------------
# Helpers building tiny datasets by hand
# --------------------------------------------------------------------------------------------
def rect_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W) bool mask of pixel columns x0..x1-1, rows y0..y1-1 (box = continuous xyxy)."""
    mask = np.zeros(size, dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def rle(mask: np.ndarray) -> dict:
    out = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    out["counts"] = out["counts"].decode("ascii")
    return out


def make_gt(image_sizes: dict[int, tuple[int, int]], objects: list[tuple], categories: dict[int, str]) -> dict:
    """objects: (image_id, category_id, box_xyxy ints[, iscrowd]); masks are the box rectangles."""
    annotations = []
    for ann_id, obj in enumerate(objects, start=1):
        image_id, cat_id, box = obj[:3]
        iscrowd = obj[3] if len(obj) > 3 else 0
        mask = rect_mask(image_sizes[image_id], box)
        annotations.append({
            "id": ann_id, "image_id": image_id, "category_id": cat_id,
            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            "area": float(mask.sum()), "iscrowd": iscrowd, "segmentation": rle(mask),
        })
    return {
        "images": [{"id": i, "height": h, "width": w} for i, (h, w) in image_sizes.items()],
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in categories.items()],
    }


def det(image_id: int, cat_id: int, box: tuple, score: float, size: tuple[int, int],
        mask_box: tuple | None = None, mask_score: float | None = None) -> dict:
    """A result dict whose mask is the rectangle ``mask_box`` (default: the box)."""
    out = {
        "image_id": image_id, "category_id": cat_id, "score": score,
        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
        "segmentation": rle(rect_mask(size, mask_box if mask_box is not None else box)),
    }
    if mask_score is not None:
        out["mask_score"] = mask_score
    return out


def evaluate(gt, results, **kwargs) -> dict:
    kwargs.setdefault("verbose", False)
    return evaluate_coco(gt, results, **kwargs)


# --------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------
def test_perfect_detections_give_ap_one() -> None:
    # Areas 100 (small < 32^2), 1600 (medium), 10000 (large > 96^2): every bucket is exercised.
    sizes = {1: (128, 128), 2: (128, 128)}
    objects = [(1, 1, (0, 0, 10, 10)), (1, 2, (20, 20, 60, 60)), (2, 1, (5, 5, 105, 105))]
    gt = make_gt(sizes, objects, {1: "a", 2: "b"})
    results = [det(i, c, b, 0.9, sizes[i]) for i, c, b in objects]
    metrics = evaluate(gt, results)
    for iou_type in ("bbox", "segm"):
        for key in AP_KEYS:
            assert metrics[iou_type][key] == pytest.approx(1.0), (iou_type, key)


@pytest.mark.parametrize("det_height, expected_ap, expected_ap75", [(31, 0.3, 0.0), (36, 0.5, 0.0), (39, 0.6, 1.0)])
def test_single_detection_with_partial_overlap(det_height: int, expected_ap: float, expected_ap75: float) -> None:
    # gt 10x50 px, detection its top 10 x det_height px: IoU = det_height / 50 (boxes and masks).
    # IoU 0.62 is a TP at thresholds 0.50, 0.55, 0.60 (3 of 10), where precision is 1 at every
    # recall: AP = 0.3, AP50 = 1, AP75 = 0. IoU 0.72: 5 of 10 -> AP 0.5, AP75 = 0.
    # IoU 0.78: 6 of 10 -> AP 0.6, AP75 = 1. (IoUs sit between thresholds: no float ties.)
    # The object is small (500 px), so APm and APl have no ground truth: NaN.
    sizes = {1: (64, 64)}
    gt = make_gt(sizes, [(1, 1, (0, 0, 10, 50))], {1: "a"})
    metrics = evaluate(gt, [det(1, 1, (0, 0, 10, det_height), 0.9, sizes[1])])
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert m["AP"] == pytest.approx(expected_ap)
        assert m["AP50"] == pytest.approx(1.0)
        assert m["AP75"] == pytest.approx(expected_ap75)
        assert m["APs"] == pytest.approx(expected_ap)
        assert math.isnan(m["APm"]) and math.isnan(m["APl"])
        assert m["AR@100"] == pytest.approx(expected_ap)  # recall 1 at the same thresholds


def test_false_positive_ranked_above_the_only_true_positive() -> None:
    # Two gts; ranks: FP (0.9) then TP on gt1 (0.8); gt2 missed.
    # (precision, recall) per rank: (0, 0), (1/2, 1/2); envelope (1/2, 1/2).
    # Recall thresholds 0.00..0.50 (51 of 101) get precision 1/2, the 50 above get 0:
    # AP = 51 * 0.5 / 101 at every IoU threshold (the TP is exact).
    sizes = {1: (64, 64)}
    gt = make_gt(sizes, [(1, 1, (0, 0, 10, 10)), (1, 1, (30, 30, 40, 40))], {1: "a"})
    results = [det(1, 1, (50, 0, 60, 10), 0.9, sizes[1]), det(1, 1, (0, 0, 10, 10), 0.8, sizes[1])]
    expected = 51 * 0.5 / 101
    for iou_type, m in evaluate(gt, results).items():
        for key in ("AP", "AP50", "AP75", "APs"):
            assert m[key] == pytest.approx(expected), (iou_type, key)


def test_false_positive_between_two_true_positives() -> None:
    # Ranks: TP (0.9), FP (0.8), TP (0.7) over two gts in two images.
    # precision (1, 1/2, 2/3), recall (1/2, 1/2, 1); envelope (1, 2/3, 2/3).
    # Recall thresholds 0.00..0.50 (51) -> 1; 0.51..1.00 (50) -> 2/3.
    sizes = {1: (64, 64), 2: (64, 64)}
    gt = make_gt(sizes, [(1, 1, (0, 0, 10, 10)), (2, 1, (30, 30, 40, 40))], {1: "a"})
    results = [
        det(1, 1, (0, 0, 10, 10), 0.9, sizes[1]),
        det(2, 1, (0, 0, 10, 10), 0.8, sizes[2]),
        det(2, 1, (30, 30, 40, 40), 0.7, sizes[2]),
    ]
    expected = (51 * 1.0 + 50 * 2.0 / 3.0) / 101
    for m in evaluate(gt, results).values():
        assert m["AP"] == pytest.approx(expected)
        assert m["AP50"] == pytest.approx(expected)


def _three_class_case(category_ids: list[int]) -> tuple[dict, Instances]:
    sizes = {1: (32, 48)}
    boxes = [(0, 0, 10, 10), (20, 5, 30, 25), (35, 10, 45, 30)]
    gt = make_gt(sizes, [(1, c, b) for c, b in zip(category_ids, boxes)],
                 {c: f"c{c}" for c in category_ids})
    masks = torch.stack([torch.from_numpy(rect_mask(sizes[1], b)) for b in boxes])
    instances = Instances(
        boxes=torch.tensor(boxes, dtype=torch.float32), scores=torch.tensor([0.9, 0.8, 0.7]),
        labels=torch.tensor([0, 1, 2]), masks=masks,
    )
    return gt, instances


def test_category_ids_mapped_back_from_contiguous_labels() -> None:
    category_ids = [3, 7, 12]  # non-contiguous dataset ids; label k -> category_ids[k]
    gt, instances = _three_class_case(category_ids)
    results = instances_to_coco_results(instances, image_id=1, category_ids=category_ids)
    assert [r["category_id"] for r in results] == category_ids
    metrics = evaluate(gt, results)
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    # A wrong map (labels shifted by one class) gives AP 0: no detection has the right class.
    wrong = instances_to_coco_results(instances, image_id=1, category_ids=[7, 12, 3])
    assert evaluate(gt, wrong)["bbox"]["AP"] == pytest.approx(0.0)


def test_mask_score_ranks_masks_and_score_ranks_boxes() -> None:
    # One gt. Detection A: exact box, mask elsewhere; detection B: box elsewhere, exact mask.
    # Boxes ranked by score: A (TP) first -> bbox AP 1 (a later FP does not lower it).
    # Masks ranked by mask_score: B (TP) first -> segm AP 1. Ranking masks by score instead
    # puts the FP mask first: precision 1/2 at recall 1 -> AP 0.5.
    sizes = {1: (64, 64)}
    gt_box, far_box = (0, 0, 20, 20), (40, 40, 60, 60)
    gt = make_gt(sizes, [(1, 1, gt_box)], {1: "a"})
    a = det(1, 1, gt_box, 0.9, sizes[1], mask_box=far_box, mask_score=0.1)
    b = det(1, 1, far_box, 0.8, sizes[1], mask_box=gt_box, mask_score=0.95)
    metrics = evaluate(gt, [a, b])
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    without_mask_scores = [{k: v for k, v in r.items() if k != "mask_score"} for r in (a, b)]
    assert evaluate(gt, without_mask_scores)["segm"]["AP"] == pytest.approx(0.5)
    # Box AP must not use mask_score: swap which detection has the exact box.
    a2, b2 = dict(a, bbox=b["bbox"]), dict(b, bbox=a["bbox"])
    assert evaluate(gt, [a2, b2])["bbox"]["AP"] == pytest.approx(0.5)


def test_detection_on_crowd_region_is_neither_tp_nor_fp() -> None:
    # A detection inside an iscrowd region, scored above the true positive, is ignored:
    # AP 1. Without the crowd annotation the same detection is an FP ranked first: AP 0.5.
    sizes = {1: (64, 64)}
    person, crowd = (0, 0, 10, 10), (30, 30, 60, 60)
    results = [det(1, 1, (35, 35, 45, 45), 0.9, sizes[1]), det(1, 1, person, 0.8, sizes[1])]
    with_crowd = make_gt(sizes, [(1, 1, person), (1, 1, crowd, 1)], {1: "a"})
    without = make_gt(sizes, [(1, 1, person)], {1: "a"})
    for iou_type in ("bbox", "segm"):
        assert evaluate(with_crowd, results)[iou_type]["AP"] == pytest.approx(1.0)
        assert evaluate(without, results)[iou_type]["AP"] == pytest.approx(0.5)


def test_empty_results_give_zero_ap(tmp_path) -> None:
    sizes = {1: (64, 64)}
    gt = make_gt(sizes, [(1, 1, (0, 0, 10, 10)), (1, 2, (20, 20, 30, 30))], {1: "a", 2: "b"})
    path = tmp_path / "empty.json"
    path.write_text("[]")
    for results in ([], path):
        metrics = evaluate(gt, results, per_category=True)
        for m in metrics.values():
            assert m["AP"] == 0.0 and m["AP50"] == 0.0 and m["APs"] == 0.0
            assert math.isnan(m["APl"])  # no large objects at all
            assert m["per_category"] == {"a": 0.0, "b": 0.0}


def test_max_dets_caps_detections_per_image() -> None:
    # Three exact detections of three gts. Capped at 2 per image: recall 2/3, precision 1, so
    # recall thresholds 0.00..0.66 (67 of 101) get 1: AP = 67/101. AR@1 = 1/3, AR@2 = 2/3.
    sizes = {1: (64, 64)}
    boxes = [(0, 0, 10, 10), (20, 0, 30, 10), (40, 0, 50, 10)]
    gt = make_gt(sizes, [(1, 1, b) for b in boxes], {1: "a"})
    results = [det(1, 1, b, s, sizes[1]) for b, s in zip(boxes, (0.9, 0.8, 0.7))]
    assert evaluate(gt, results)["bbox"]["AP"] == pytest.approx(1.0)
    capped = evaluate(gt, results, max_dets=(1, 2))
    for m in capped.values():
        assert m["AP"] == pytest.approx(67 / 101)
        assert m["AR@1"] == pytest.approx(1 / 3) and m["AR@2"] == pytest.approx(2 / 3)


def test_ap_uses_the_largest_max_dets() -> None:
    # 120 exact detections of 120 gts on one image. With (1, 10, 100) recall stops at 100/120:
    # recall thresholds 0.00..0.83 (84) -> AP = 84/101. With (100, 300, 1000): AP = 1
    # (pycocotools' summarize() would still report the maxDets=100 value for AP).
    sizes = {1: (40, 48)}
    boxes = [(4 * (k % 12), 4 * (k // 12), 4 * (k % 12) + 3, 4 * (k // 12) + 3) for k in range(120)]
    gt = make_gt(sizes, [(1, 1, b) for b in boxes], {1: "a"})
    results = [{"image_id": 1, "category_id": 1, "bbox": [b[0], b[1], 3, 3], "score": 1.0 - k / 1000}
               for k, b in enumerate(boxes)]
    default = evaluate(gt, results, iou_types=("bbox",))["bbox"]
    dense = evaluate(gt, results, iou_types=("bbox",), max_dets=(100, 300, 1000))["bbox"]
    assert default["AP"] == pytest.approx(84 / 101)
    assert dense["AP"] == pytest.approx(1.0) and dense["AR@1000"] == pytest.approx(1.0)
    assert dense["AR@100"] == pytest.approx(100 / 120)


def test_per_category_ap_and_tables() -> None:
    # "cat": exact detection (AP 1); "dog": IoU 0.62 detection (AP 0.3); mean AP 0.65.
    sizes = {1: (64, 64)}
    gt = make_gt(sizes, [(1, 5, (0, 0, 20, 20)), (1, 9, (30, 0, 40, 50))], {5: "cat", 9: "dog"})
    results = [det(1, 5, (0, 0, 20, 20), 0.9, sizes[1]), det(1, 9, (30, 0, 40, 31), 0.8, sizes[1])]
    metrics = evaluate(gt, results, per_category=True)
    for m in metrics.values():
        assert m["per_category"] == pytest.approx({"cat": 1.0, "dog": 0.3})
        assert m["AP"] == pytest.approx(0.65)
    table = format_per_category_table(metrics)
    assert "| cat | 1.000 | 1.000 |" in table and "| dog | 0.300 | 0.300 |" in table  # fractions, as metrics.json
    summary = format_metrics_table(metrics)
    assert "| bbox | 0.650 | 1.000 | 0.500 | 0.650 | - | - |" in summary
    assert summary.count("\n") == 3  # header, rule, bbox, segm


def test_verbose_prints_table_and_quiet_prints_nothing(capsys) -> None:
    sizes = {1: (32, 32)}
    gt = make_gt(sizes, [(1, 1, (0, 0, 10, 10))], {1: "a"})
    results = [det(1, 1, (0, 0, 10, 10), 0.9, sizes[1])]
    evaluate_coco(gt, results, verbose=False)
    assert capsys.readouterr().out == ""
    evaluate_coco(gt, results, iou_types=("bbox",), verbose=True)
    out = capsys.readouterr().out
    assert out.count("Average Precision") == 6 and out.count("Average Recall") == 6


def test_invalid_results_raise_clear_errors() -> None:
    sizes = {1: (32, 32)}
    gt = make_gt(sizes, [(1, 1, (0, 0, 10, 10))], {1: "a"})
    with pytest.raises(ValueError, match="image ids"):
        evaluate(gt, [det(99, 1, (0, 0, 10, 10), 0.9, sizes[1])])
    with pytest.raises(ValueError, match="category ids"):
        evaluate(gt, [det(1, 4, (0, 0, 10, 10), 0.9, sizes[1])])
    with pytest.raises(ValueError, match="size"):  # mask in a resized frame
        evaluate(gt, [det(1, 1, (0, 0, 10, 10), 0.9, (64, 64))])
    with pytest.raises(ValueError, match="max_dets"):
        evaluate(gt, [], max_dets=(100, 10))


def test_gt_dict_is_not_modified() -> None:
    sizes = {1: (32, 32)}
    gt = make_gt(sizes, [(1, 1, (0, 0, 10, 10))], {1: "a"})
    before = json.dumps(gt, sort_keys=True)
    evaluate(gt, [det(1, 1, (0, 0, 10, 10), 0.9, sizes[1])])
    assert json.dumps(gt, sort_keys=True) == before


# --------------------------------------------------------------------------------------------
# Results files made by anything: masks only, boxes only, polygons (as pycocotools' loadRes)
# --------------------------------------------------------------------------------------------
def results_case() -> tuple[dict, list[dict]]:
    """Three images, three categories; every result's mask differs from its box, so box AP of
    the boxes and box AP of boxes taken from the masks (toBbox) differ."""
    sizes = {1: (64, 64), 2: (48, 80), 3: (64, 64)}
    objects = [(1, 1, (0, 0, 20, 20)), (1, 2, (30, 30, 60, 50)), (2, 1, (10, 5, 40, 40)),
               (2, 3, (50, 10, 70, 30)), (3, 3, (5, 5, 15, 15)), (3, 2, (20, 20, 60, 60))]
    gt = make_gt(sizes, objects, {1: "a", 2: "b", 3: "c"})
    results = [
        det(1, 1, (0, 0, 20, 20), 0.9, sizes[1], mask_box=(0, 0, 20, 16)),
        det(1, 2, (28, 30, 60, 50), 0.6, sizes[1], mask_box=(30, 32, 60, 50)),
        det(1, 1, (40, 0, 60, 20), 0.7, sizes[1], mask_box=(40, 0, 58, 20)),  # a false positive
        det(2, 1, (10, 5, 40, 34), 0.8, sizes[2], mask_box=(10, 5, 40, 40)),
        det(2, 3, (50, 10, 66, 30), 0.5, sizes[2], mask_box=(52, 10, 70, 30)),
        det(3, 3, (5, 5, 15, 15), 0.4, sizes[3], mask_box=(6, 6, 15, 15)),
        det(3, 2, (20, 20, 60, 60), 0.95, sizes[3], mask_box=(20, 26, 60, 60)),
        det(3, 2, (0, 40, 16, 64), 0.3, sizes[3], mask_box=(0, 44, 16, 64)),  # a false positive
    ]
    return gt, results


def without(results: list[dict], key: str) -> list[dict]:
    return [{k: v for k, v in r.items() if k != key} for r in results]


def boxes_from_masks(results: list[dict]) -> list[dict]:
    """The results with ``bbox`` replaced by pycocotools' toBbox of the mask."""
    return [{**r, "bbox": mask_util.toBbox(r["segmentation"]).tolist()} for r in results]


def same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN == NaN here


def pycocotools_ap(gt: dict, results: list[dict], iou_type: str) -> float:
    """AP (IoU 0.50:0.95, all areas, 100 detections) of pycocotools' own loadRes + COCOeval."""
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return float(coco_eval.stats[0])


def test_masks_only_results_score_boxes_taken_from_the_masks() -> None:
    # cocoapi's instances_val2014_fakesegm100_results.json has no "bbox": loadRes takes toBbox(mask)
    gt, results = results_case()
    masks_only = without(results, "bbox")
    metrics = evaluate(gt, masks_only)
    assert same(metrics["segm"], evaluate(gt, results)["segm"])  # masks scored exactly as before
    assert same(metrics["bbox"], evaluate(gt, boxes_from_masks(results))["bbox"])
    assert metrics["bbox"]["AP"] != pytest.approx(evaluate(gt, results)["bbox"]["AP"])  # the case tells them apart
    assert 0.0 < metrics["bbox"]["AP"] < 1.0 and 0.0 < metrics["segm"]["AP"] < 1.0
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == pytest.approx(pycocotools_ap(gt, masks_only, iou_type))


def test_boxes_only_results_score_boxes_and_cannot_score_masks() -> None:
    gt, results = results_case()
    boxes_only = without(results, "segmentation")
    assert same(evaluate(gt, boxes_only, iou_types=("bbox",))["bbox"], evaluate(gt, results)["bbox"])
    assert list(evaluate(gt, boxes_only)) == ["bbox"]  # the default types follow what the results carry
    with pytest.raises(ValueError, match="segm evaluation needs 'segmentation'.*result 0 has none"):
        evaluate(gt, boxes_only, iou_types=("bbox", "segm"))


@pytest.mark.parametrize("edit, message", [
    (lambda rs: rs[3].pop("bbox"), r"result 3 has no 'bbox' \(result 0 has one"),
    (lambda rs: rs[0].pop("bbox"), r"result 1 has a 'bbox' but result 0 has none"),
    (lambda rs: rs[5].pop("segmentation"), r"result 5 has no 'segmentation' \(result 0 has one"),
    (lambda rs: [rs[2].pop("bbox"), rs[2].pop("segmentation")], r"result 2 has neither 'bbox' nor 'segmentation'"),
    (lambda rs: rs[4].pop("score"), r"result 4 has no 'score'"),
    (lambda rs: rs[6].update(segmentation=[[1, 2, 3]]), r"result 6 has a bad 'segmentation'"),
], ids=["no-bbox", "first-without-bbox", "no-segmentation", "neither", "no-score", "bad-polygon"])
def test_results_mixing_fields_name_the_first_offending_entry(edit, message) -> None:
    gt, results = results_case()
    edit(results)
    with pytest.raises(ValueError, match=message):
        evaluate(gt, results)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of an (H, W) mask: run lengths in column-major order, zeros first."""
    flat = mask.ravel(order="F").astype(np.int8)
    counts = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + counts}


def polygon(box: tuple) -> list[list[float]]:
    x0, y0, x1, y1 = box
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def test_polygon_and_uncompressed_rle_results_are_rasterized_at_the_image_size() -> None:
    # pycocotools accepts them beside a bbox (COCOeval rasterizes them with annToRLE) but its loadRes
    # fails on polygons without a bbox; here the box is then taken from the rasterized polygon.
    gt, results = results_case()
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    boxes = [(r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]) for r in results]
    polygons = [{**r, "segmentation": polygon(b)} for r, b in zip(results, boxes)]
    rasterized = [{**r, "segmentation": rle(mask_util.decode(mask_util.merge(
        mask_util.frPyObjects(r["segmentation"], *sizes[r["image_id"]]))).astype(bool))} for r in polygons]
    metrics = evaluate(gt, polygons)
    assert same(metrics, evaluate(gt, rasterized))
    assert metrics["segm"]["AP"] == pytest.approx(pycocotools_ap(gt, polygons, "segm"))
    assert same(evaluate(gt, without(polygons, "bbox")), evaluate(gt, boxes_from_masks(rasterized)))
    uncompressed = [{**r, "segmentation": uncompressed_rle(mask_util.decode(r["segmentation"]))} for r in rasterized]
    assert same(evaluate(gt, uncompressed), metrics)


# --------------------------------------------------------------------------------------------
# instances_to_coco_results
# --------------------------------------------------------------------------------------------
# pycocotools' decode wraps its buffer in an object numpy 2 warns about; not our code.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_instances_to_coco_results_round_trip() -> None:
    n, h, w = 4, 13, 17
    masks = torch.rand(n, h, w) > 0.5
    x0y0 = torch.rand(n, 2) * 5
    boxes = torch.cat([x0y0, x0y0 + 1 + torch.rand(n, 2) * 8], dim=1)
    instances = Instances(boxes=boxes, scores=torch.rand(n), labels=torch.tensor([1, 0, 1, 0]),
                          masks=masks, mask_scores=torch.rand(n))
    results = instances_to_coco_results(instances, image_id=42, category_ids=[10, 20])
    json.dumps(results)  # JSON-serializable (RLE counts as str)
    assert len(results) == n
    for i, r in enumerate(results):
        decoded = mask_util.decode(r["segmentation"])
        assert decoded.shape == (h, w) and np.array_equal(decoded.astype(bool), masks[i].numpy())
        assert isinstance(r["segmentation"]["counts"], str)
        x1, y1, x2, y2 = boxes[i].double().tolist()
        assert r["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
        assert r["image_id"] == 42 and r["category_id"] == [20, 10, 20, 10][i]
        assert r["score"] == pytest.approx(float(instances.scores[i]))
        assert r["mask_score"] == pytest.approx(float(instances.mask_scores[i]))
    assert instances_to_coco_results(Instances.empty((h, w)), 1, [10, 20]) == []
    no_mask_score = instances_to_coco_results(Instances(boxes, instances.scores, instances.labels, masks), 1, [10, 20])
    assert all("mask_score" not in r for r in no_mask_score)
    with pytest.raises(ValueError, match="labels"):
        instances_to_coco_results(instances, 1, [10])
    # Float masks are probabilities: thresholded at 0.5.
    probs = torch.rand(n, h, w, dtype=torch.float64)
    from_probs = instances_to_coco_results(Instances(boxes, instances.scores, instances.labels, probs), 1, [10, 20])
    for i, r in enumerate(from_probs):
        expected = np.array([[probs[i, y, x].item() >= 0.5 for x in range(w)] for y in range(h)])
        assert np.array_equal(mask_util.decode(r["segmentation"]).astype(bool), expected)


# --------------------------------------------------------------------------------------------
# COCOEvaluator
# --------------------------------------------------------------------------------------------
def _evaluator_case(tmp_path) -> tuple[COCOEvaluator, dict[int, Instances]]:
    sizes = {1: (32, 32), 2: (32, 32), 3: (32, 32)}
    boxes = {1: (0, 0, 10, 10), 2: (10, 10, 20, 30), 3: (5, 5, 25, 15)}
    gt = make_gt(sizes, [(i, 4, b) for i, b in boxes.items()], {4: "a"})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    outputs = {
        i: Instances(boxes=torch.tensor([b], dtype=torch.float32), scores=torch.tensor([0.9]),
                     labels=torch.tensor([0]), masks=torch.from_numpy(rect_mask(sizes[i], b))[None])
        for i, b in boxes.items()
    }
    outputs[3] = Instances.empty(sizes[3])  # image 3: its object is missed
    return COCOEvaluator(path), outputs


def test_coco_evaluator_process_evaluate_save(tmp_path) -> None:
    evaluator, outputs = _evaluator_case(tmp_path)
    evaluator.process([1], [outputs[1]])
    # Only image 1 was processed: it alone is evaluated, and it is perfect.
    assert evaluator.evaluate(verbose=False)["segm"]["AP"] == pytest.approx(1.0)
    evaluator.process([2, 3], [outputs[2], outputs[3]])
    evaluator.process([1], [outputs[3]])  # a repeated image keeps its first results
    assert evaluator.image_ids == [1, 2, 3] and len(evaluator.results) == 2
    # Two TPs (score 0.9 each), gt of image 3 missed: recall 2/3 at precision 1 -> 67/101.
    metrics = evaluator.evaluate(verbose=False)
    assert metrics["bbox"]["AP"] == pytest.approx(67 / 101)
    evaluator.save_results(tmp_path / "results.json")
    from_file = evaluate(evaluator.coco_gt, tmp_path / "results.json")
    assert from_file["bbox"]["AP"] == pytest.approx(67 / 101)
    evaluator.reset()
    assert evaluator.results == [] and evaluator.image_ids == []


def test_coco_evaluator_merge_matches_single_process(tmp_path) -> None:
    single, outputs = _evaluator_case(tmp_path)
    single.process(list(outputs), list(outputs.values()))
    rank0, _ = _evaluator_case(tmp_path)
    rank1, _ = _evaluator_case(tmp_path)
    rank0.process([1], [outputs[1]])
    rank1.process([2, 3, 1], [outputs[2], outputs[3], outputs[1]])  # padded with a repeat
    rank0.merge(rank1.results, rank1.image_ids)
    assert rank0.image_ids == single.image_ids and rank0.results == single.results
    # json text compares NaN buckets (no large objects) as equal, unlike dict ==.
    assert json.dumps(rank0.evaluate(verbose=False)) == json.dumps(single.evaluate(verbose=False))


# --------------------------------------------------------------------------------------------
# Random data against a slow reference of COCO AP (greedy matching, 101-point interpolation)
# --------------------------------------------------------------------------------------------
def reference_ap(gts: list, dets: list, iou, iou_thr: float, max_det: int) -> float | None:
    """AP of one category at one IoU threshold; gts: [(image, obj)], dets: [(image, obj, score)]."""
    if not gts:
        return None
    kept = []  # (score, is_tp) of every detection kept
    for image in sorted({g[0] for g in gts} | {d[0] for d in dets}):
        image_gts = [g[1] for g in gts if g[0] == image]
        image_dets = sorted([d for d in dets if d[0] == image], key=lambda d: -d[2])[:max_det]
        used = [False] * len(image_gts)
        for _, obj, score in image_dets:
            best, best_iou = -1, min(iou_thr, 1 - 1e-10)
            for j, g in enumerate(image_gts):
                value = iou(obj, g)
                if not used[j] and value >= best_iou:
                    best, best_iou = j, value
            if best >= 0:
                used[best] = True
            kept.append((score, best >= 0))
    kept.sort(key=lambda k: -k[0])
    tp = 0
    precision, recall = [], []
    for rank, (_, is_tp) in enumerate(kept, start=1):
        tp += is_tp
        precision.append(tp / rank)
        recall.append(tp / len(gts))
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = max(precision[i], precision[i + 1])
    total = 0.0
    for r in np.linspace(0.0, 1.0, 101):  # COCO's recall thresholds
        first = next((i for i, rc in enumerate(recall) if rc >= r), None)
        total += 0.0 if first is None else precision[first]
    return total / 101


def box_iou_xywh(a: list, b: list) -> float:
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = union = 0
    for x, y in zip(a.ravel().tolist(), b.ravel().tolist()):
        inter += x and y
        union += x or y
    return inter / union if union else 0.0


def _random_case(rng: np.random.Generator, size: tuple[int, int]) -> tuple[dict, list, list, list]:
    """3 images, 2 categories; detections are jittered gts, duplicates and random FPs."""
    h, w = size
    gt_objs, dets = [], []
    for image_id in (1, 2, 3):
        for cat_id in (1, 2):
            for _ in range(rng.integers(0, 4)):
                x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
                box = (x0, y0, min(w, x0 + rng.integers(4, 12)), min(h, y0 + rng.integers(4, 12)))
                gt_objs.append((image_id, cat_id, box))
                for _ in range(rng.integers(0, 3)):  # 0-2 detections per gt, jittered
                    j = rng.integers(-2, 3, size=4)
                    jb = (max(0, box[0] + j[0]), max(0, box[1] + j[1]),
                          min(w, max(box[0] + j[0] + 1, box[2] + j[2])), min(h, max(box[1] + j[1] + 1, box[3] + j[3])))
                    dets.append((image_id, cat_id, jb, float(rng.random())))
            for _ in range(rng.integers(0, 3)):  # random false positives
                x0, y0 = rng.integers(0, w - 4), rng.integers(0, h - 4)
                dets.append((image_id, cat_id, (x0, y0, x0 + 4, y0 + 4), float(rng.random())))
    sizes = {i: size for i in (1, 2, 3)}
    gt = make_gt(sizes, gt_objs, {1: "a", 2: "b"})
    results = [det(i, c, b, s, size) for i, c, b, s in dets]
    return gt, gt_objs, dets, results


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("max_dets", [(1, 10, 100), (1, 2, 3)])
def test_random_case_matches_reference(iou_type: str, max_dets: tuple) -> None:
    rng = np.random.default_rng(7)
    size = (20, 24)
    gt, gt_objs, dets, results = _random_case(rng, size)
    metrics = evaluate(gt, results, iou_types=(iou_type,), max_dets=max_dets, per_category=True)[iou_type]

    def obj(box):
        if iou_type == "bbox":
            return [box[0], box[1], box[2] - box[0], box[3] - box[1]]
        return rect_mask(size, box)

    iou = box_iou_xywh if iou_type == "bbox" else mask_iou
    iou_thrs = np.linspace(0.5, 0.95, 10)
    per_cat = {}
    for cat_id, name in ((1, "a"), (2, "b")):
        g = [(i, obj(b)) for i, c, b in gt_objs if c == cat_id]
        d = [(i, obj(b), s) for i, c, b, s in dets if c == cat_id]
        per_cat[name] = [reference_ap(g, d, iou, t, max_dets[-1]) for t in iou_thrs]
    assert metrics["per_category"] == pytest.approx({k: float(np.mean(v)) for k, v in per_cat.items()})
    assert metrics["AP"] == pytest.approx(np.mean([v for vs in per_cat.values() for v in vs]))
    assert metrics["AP50"] == pytest.approx(np.mean([vs[0] for vs in per_cat.values()]))
    assert metrics["AP75"] == pytest.approx(np.mean([vs[5] for vs in per_cat.values()]))
    assert 0.0 < metrics["AP"] < 1.0  # the case is neither trivial nor empty


def test_results_of_masks_kept_as_crops_equal_those_of_full_masks() -> None:
    from instaseg.structures.instances import CroppedInstances

    masks = torch.zeros(3, 30, 40, dtype=torch.bool)
    masks[0, 2:9, 5:30] = True
    masks[1, :, 39] = True
    masks[2, 10:11, 0:1] = True
    instances = Instances(torch.tensor([[5.0, 2, 30, 9], [39, 0, 40, 30], [0, 10, 1, 11]]), torch.tensor([0.9, 0.5, 0.2]),
                          torch.tensor([0, 1, 0]), masks, torch.tensor([0.8, 0.4, 0.1]))
    cropped = CroppedInstances.from_instances(instances)
    assert instances_to_coco_results(cropped, 7, [3, 9]) == instances_to_coco_results(instances, 7, [3, 9])
