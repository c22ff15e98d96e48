"""COCO keypoint AP (OKS): the frame of keypoint results, the sigmas, and hand cases checked against
an independent float64 reference of pycocotools' ``computeOks`` and COCO's matching.

The reference (written from the definition in pycocotools' ``COCOeval.computeOks``): for a ground
truth g with labelled keypoints (v > 0), ``OKS = mean over labelled k of exp(-e_k)`` with
``e_k = (dx_k^2 + dy_k^2) / (2 * (area_g + eps) * (2 * sigma_k)^2)``; for a ground truth without a
labelled keypoint, ``dx_k`` / ``dy_k`` are the distances of the detection's keypoint k outside g's box
grown by one box size on every side, averaged over all K. A ground truth with ``num_keypoints == 0``
is ignored: a detection matched to it is neither a true nor a false positive.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import Params

from instaseg.data.coco import CocoDataset
from instaseg.data.synthetic_keypoints import FIGURE_KEYPOINT_SIGMAS, generate_keypoint_dataset
from instaseg.evaluation.coco_eval import COCOEvaluator, evaluate_coco, instances_to_coco_results
from instaseg.evaluation.keypoint_eval import (
    COCO_PERSON_SIGMAS,
    DEFAULT_KEYPOINT_SIGMA,
    keypoint_sigmas,
    keypoints_to_coco,
)
from instaseg.evaluation.tables import format_metrics_table
from instaseg.structures.instances import Instances
from instaseg.structures.keypoints import COCO_PERSON_KEYPOINT_NAMES

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

KEYPOINT_SUMMARY = {"AP", "AP50", "AP75", "APm", "APl", "AR@20", "ARm", "ARl"}
OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)


# --------------------------------------------------------------------------------------------
# A slow float64 reference of OKS and of COCO's matching with ignored ground truth
# --------------------------------------------------------------------------------------------
def reference_oks(det: list[float], gt: dict, sigmas: list[float]) -> float:
    """OKS of one detection's flat keypoints against one ground-truth annotation, in a plain loop."""
    x0, y0, w, h = (float(v) for v in gt["bbox"])
    labelled = [k for k in range(len(sigmas)) if gt["keypoints"][3 * k + 2] > 0]
    total = 0.0
    for k in labelled or range(len(sigmas)):
        xd, yd = float(det[3 * k]), float(det[3 * k + 1])
        if labelled:
            dx, dy = xd - gt["keypoints"][3 * k], yd - gt["keypoints"][3 * k + 1]
        else:  # outside the box grown by one box size on every side
            dx = max(0.0, (x0 - w) - xd) + max(0.0, xd - (x0 + 2 * w))
            dy = max(0.0, (y0 - h) - yd) + max(0.0, yd - (y0 + 2 * h))
        total += math.exp(-(dx * dx + dy * dy) / (2.0 * (gt["area"] + np.spacing(1)) * (2.0 * sigmas[k]) ** 2))
    return total / len(labelled or range(len(sigmas)))


def reference_ap(oks: np.ndarray, scores: list[float], ignored: list[bool], threshold: float) -> float:
    """AP of one image and category at one OKS threshold: detections by score, each taking the best
    free non-ignored ground truth at OKS >= threshold, else an ignored one (then it is ignored)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    taken = [False] * len(ignored)
    outcomes = []  # True / False for true / false positives; ignored detections left out
    for i in order:
        best, best_oks = -1, threshold
        for prefer_ignored in (False, True):
            for j in (j for j in range(len(ignored)) if ignored[j] == prefer_ignored and not taken[j]):
                if oks[i, j] >= best_oks:
                    best, best_oks = j, oks[i, j]
            if best >= 0:
                break
        if best >= 0:
            taken[best] = True
        if best < 0 or not ignored[best]:
            outcomes.append(best >= 0)
    num_gt = ignored.count(False)
    precision = [sum(outcomes[:n + 1]) / (n + 1) for n in range(len(outcomes))]
    recall = [sum(outcomes[:n + 1]) / num_gt for n in range(len(outcomes))]
    envelope = [max(precision[n:]) for n in range(len(precision))]
    return sum(next((envelope[n] for n in range(len(recall)) if recall[n] >= r), 0.0)
               for r in np.linspace(0.0, 1.0, 101)) / 101


def keypoint_gt(annotations: list[dict], names: list[str], sigmas: list[float] | None = None,
                size: tuple[int, int] = (100, 100)) -> dict:
    category = {"id": 1, "name": "thing", "keypoints": names, "skeleton": []}
    if sigmas is not None:
        category["sigmas"] = sigmas
    anns = [{"id": i, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "num_keypoints": sum(v > 0 for v in a["keypoints"][2::3]), **a} for i, a in enumerate(annotations, 1)]
    return {"images": [{"id": 1, "height": size[0], "width": size[1]}], "annotations": anns, "categories": [category]}


def shifted(keypoints: list[float], dx: float, dy: float, only: int | None = None) -> list[float]:
    """Flat keypoints moved by (dx, dy): every keypoint, or keypoint ``only``."""
    out = list(map(float, keypoints))
    for k in range(len(out) // 3):
        if only is None or k == only:
            out[3 * k] += dx
            out[3 * k + 1] += dy
    return out


# --------------------------------------------------------------------------------------------
# (b) a hand case against the reference
# --------------------------------------------------------------------------------------------
def test_shifted_keypoints_give_the_reference_oks_and_ap() -> None:
    names, sigmas = ["a", "b", "c"], [0.05, 0.1, 0.2]
    gt = keypoint_gt([
        {"bbox": [10, 10, 30, 30], "area": 900.0, "keypoints": [15, 15, 2, 30, 15, 2, 20, 35, 1]},
        {"bbox": [50, 10, 20, 20], "area": 400.0, "keypoints": [55, 15, 2, 65, 15, 2, 0, 0, 0]},
        {"bbox": [60, 60, 10, 10], "area": 100.0, "keypoints": [0, 0, 0] * 3},  # no labels: ignored
    ], names, sigmas)
    a, b, c = (ann["keypoints"] for ann in gt["annotations"])
    detections = [  # (flat keypoints, score)
        (shifted(a, 1.0, 0.0), 0.9),  # every keypoint 1 px right
        (shifted(shifted(b, 0.0, 2.0, only=1), 40.0, 40.0, only=2), 0.8),  # one 2 px off; the unlabelled anywhere
        ([75.0, 75.0, 1.0, 82.0, 60.0, 1.0, 64.0, 77.0, 1.0], 0.95),  # near the ignored one, partly outside its 3x box
    ]
    results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": s, "keypoints": k}
               for k, s in detections]
    oks = np.array([[reference_oks(k, g, sigmas) for g in gt["annotations"]] for k, _ in detections])
    # closed forms of the two shifted detections: 1 px over all three keypoints of a, 2 px on one of two of b
    assert oks[0, 0] == pytest.approx(np.mean([math.exp(-1 / (2 * 900 * (2 * s) ** 2)) for s in sigmas]))
    assert oks[1, 1] == pytest.approx((1 + math.exp(-4 / (2 * 400 * 0.2 ** 2))) / 2)
    assert 0.5 < oks[2, 2] < 0.95 and oks[2, :2].max() < 0.5  # the ignore rule decides at some thresholds only
    assert np.abs(oks[:, :, None] - OKS_THRESHOLDS).min() > 1e-4  # no value on a threshold

    metrics = evaluate_coco(gt, results, iou_types=("keypoints",), verbose=False)["keypoints"]
    per_threshold = [reference_ap(oks, [s for _, s in detections], [False, False, True], t) for t in OKS_THRESHOLDS]
    assert set(metrics) == KEYPOINT_SUMMARY
    assert metrics["AP"] == pytest.approx(np.mean(per_threshold))
    assert metrics["AP50"] == pytest.approx(per_threshold[0]) and metrics["AP75"] == pytest.approx(per_threshold[5])
    assert len(set(np.round(per_threshold, 6))) >= 3  # the thresholds tell the detections apart
    # the ignored ground truth matters: it absorbs the best-scored detection up to OKS 0.87 (AP 1 up to
    # threshold 0.85); without it that detection is a false positive at every threshold (AP 2/3 there)
    assert per_threshold[:8] == pytest.approx([1.0] * 8) and per_threshold[8] == pytest.approx(2 / 3)
    without = [reference_ap(oks[:, :2], [s for _, s in detections], [False, False], t) for t in OKS_THRESHOLDS]
    assert without[0] == pytest.approx(2 / 3) and metrics["AP"] > np.mean(without) + 0.2


# --------------------------------------------------------------------------------------------
# (c) the frame: continuous coordinates in, COCO pixel indices out
# --------------------------------------------------------------------------------------------
def test_a_prediction_at_the_ground_truth_pixel_centres_scores_oks_one() -> None:
    # a tiny object (area 16) with tight sigmas: the half-pixel frame shift alone costs nearly all OKS
    labels = [3, 4, 2, 6, 5, 2]  # pixel indices (x, y, v) of two keypoints, as a COCO file holds them
    gt = keypoint_gt([{"bbox": [2, 3, 4, 4], "area": 16.0, "keypoints": labels}], ["p", "q"], [0.025, 0.025])
    centres = torch.tensor([[[3.5, 4.5, 0.75], [6.5, 5.5, 0.25]]])  # the dataset's frame: index + 0.5
    instances = Instances(torch.tensor([[2.0, 3, 6, 7]]), torch.tensor([0.9]), torch.tensor([0]), None,
                          keypoints=centres)
    results = instances_to_coco_results(instances, 1, [1])
    assert results[0]["keypoints"] == [3.0, 4.0, 0.75, 6.0, 5.0, 0.25] and "segmentation" not in results[0]
    assert reference_oks(results[0]["keypoints"], gt["annotations"][0], [0.025, 0.025]) == pytest.approx(1.0)
    metrics = evaluate_coco(gt, results, verbose=False)
    assert set(metrics) == {"bbox", "keypoints"} and metrics["keypoints"]["AP"] == pytest.approx(1.0)
    unshifted = [{**results[0], "keypoints": centres.reshape(-1).tolist()}]  # what forgetting the -0.5 writes
    assert reference_oks(unshifted[0]["keypoints"], gt["annotations"][0], [0.025, 0.025]) < 0.01
    assert evaluate_coco(gt, unshifted, verbose=False)["keypoints"]["AP"] == 0.0
    assert keypoints_to_coco(torch.zeros(0, 2, 3)) == []


# --------------------------------------------------------------------------------------------
# (a) perfect predictions on the synthetic stick figures; (f) boxes + keypoints without masks
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> CocoDataset:
    data = generate_keypoint_dataset(tmp_path_factory.mktemp("fig"), num_images=10, image_size=96, seed=5,
                                     val_fraction=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return CocoDataset(data.train_annotations, data.train_images)


def perfect_predictions(dataset: CocoDataset) -> dict[int, Instances]:
    """The ground truth as a boxes + keypoints model would predict it: keypoints in the dataset's
    continuous frame, the visibility column replaced by a score."""
    out = {}
    for i in range(len(dataset)):
        sample = dataset[i]
        t = sample.targets
        keypoints = t.keypoints.clone()
        keypoints[:, :, 2] = (t.keypoints[:, :, 2] > 0).float() * 0.9
        out[sample.image_id] = Instances(t.boxes, torch.linspace(0.9, 0.5, len(t)), t.labels, None,
                                         keypoints=keypoints)
    return out


def test_perfect_predictions_give_keypoint_ap_one(figures: CocoDataset) -> None:
    evaluator = COCOEvaluator(figures.json_path, figures.category_ids)
    predictions = perfect_predictions(figures)
    evaluator.process(list(predictions), list(predictions.values()))
    assert evaluator.iou_types == ("bbox", "keypoints")  # no masks: no segm
    metrics = evaluator.evaluate(verbose=False, per_category=True)
    assert set(metrics) == {"bbox", "keypoints"}
    keypoints = metrics["keypoints"]
    assert set(keypoints) - {"per_category"} == KEYPOINT_SUMMARY
    assert keypoints["AP"] == 1.0 and keypoints["AP50"] == 1.0 and keypoints["AP75"] == 1.0
    assert keypoints["AR@20"] == 1.0 and keypoints["per_category"] == {"figure": 1.0}
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert all("segmentation" not in r and len(r["keypoints"]) == 39 for r in evaluator.results)


def test_boxes_and_keypoints_without_masks_score_bbox_and_keypoints_only(figures: CocoDataset) -> None:
    predictions = perfect_predictions(figures)
    image_id, instances = next((i, p) for i, p in predictions.items() if len(p) >= 2)
    one_pixel = instances.keypoints.clone()
    one_pixel[0, :, 0] += 1.0  # the first figure's joints 1 px right: below OKS 1, above OKS 0.5
    moved = Instances(instances.boxes, instances.scores, instances.labels, None, keypoints=one_pixel)
    evaluator = COCOEvaluator(figures.json_path, figures.category_ids)
    evaluator.process([image_id], [moved])
    metrics = evaluator.evaluate(verbose=False)
    assert list(metrics) == ["bbox", "keypoints"]
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert 0.0 < metrics["keypoints"]["AP"] < 1.0 and metrics["keypoints"]["AP50"] == 1.0
    with pytest.raises(ValueError, match="segm evaluation needs 'segmentation'"):
        evaluate_coco(figures.json_path, evaluator.results, iou_types=("segm",), verbose=False)
    table = format_metrics_table(metrics)
    header, _, bbox_row, keypoints_row = table.splitlines()
    assert "| AR@20 | AR@100 |" in header and "| APs |" in header
    assert keypoints_row.startswith("| keypoints | ")
    cells = dict(zip(header.strip("|").split("|"), keypoints_row.strip("|").split("|")))
    assert cells[" APs "].strip() == "-" and cells[" AR@100 "].strip() == "-"
    assert cells[" AR@20 "].strip() == f"{metrics['keypoints']['AR@20']:.3f}"


def test_keypoint_results_need_keypoint_ground_truth_and_three_values_per_keypoint(figures: CocoDataset) -> None:
    results = instances_to_coco_results(next(iter(perfect_predictions(figures).values())), 1, figures.category_ids)
    gt = json.loads(figures.json_path.read_text())
    broken = [dict(r) for r in results]
    broken[-1]["keypoints"] = broken[-1]["keypoints"][:-3]
    with pytest.raises(ValueError, match=r"result \d+ has 'keypoints' of 36 values: expected 3 x 13"):
        evaluate_coco(gt, broken, verbose=False)
    no_keypoint_names = {**gt, "categories": [{"id": 4, "name": "figure"}]}
    assert list(evaluate_coco(no_keypoint_names, results, verbose=False)) == ["bbox"]  # default: not asked
    with pytest.raises(ValueError, match="categories declare keypoint names"):
        evaluate_coco(no_keypoint_names, results, iou_types=("keypoints",), verbose=False)


def test_verbose_keypoint_table_has_no_small_objects(capsys) -> None:
    gt = keypoint_gt([{"bbox": [10, 10, 40, 40], "area": 1500.0, "keypoints": [20, 20, 2, 30, 30, 2]}],
                     ["p", "q"], [0.05, 0.05])
    results = [{"image_id": 1, "category_id": 1, "score": 0.9, "keypoints": [20, 20, 1, 30, 30, 1]}]
    metrics = evaluate_coco(gt, results, verbose=True)  # keypoints only: no box to score
    out = capsys.readouterr().out
    assert list(metrics) == ["keypoints"] and metrics["keypoints"]["APm"] == pytest.approx(1.0)
    assert "maxDets= 20" in out and "area= small" not in out
    assert out.count("Average Precision") == 5 and out.count("Average Recall") == 3


# --------------------------------------------------------------------------------------------
# (d) sigmas
# --------------------------------------------------------------------------------------------
def _category(names: list[str] | tuple[str, ...], sigmas: list | None = None, cid: int = 1) -> dict:
    category = {"id": cid, "name": f"c{cid}", "keypoints": list(names)}
    return category if sigmas is None else {**category, "sigmas": sigmas}


def test_sigmas_come_from_the_category_then_coco_person_names_then_the_default() -> None:
    assert keypoint_sigmas([_category(["a", "b"], [0.1, 0.3])]).tolist() == [0.1, 0.3]
    person = keypoint_sigmas([{"id": 9, "name": "cup"}, _category(COCO_PERSON_KEYPOINT_NAMES)])
    assert person.tolist() == list(COCO_PERSON_SIGMAS)
    np.testing.assert_allclose(person, Params(iouType="keypoints").kpt_oks_sigmas, rtol=0, atol=1e-15)
    with pytest.warns(UserWarning, match=rf"sigma {DEFAULT_KEYPOINT_SIGMA} for each of its 2 keypoints.*\"sigmas\""):
        default = keypoint_sigmas([_category(["a", "b"])])
    assert default.tolist() == [DEFAULT_KEYPOINT_SIGMA] * 2
    with pytest.warns(UserWarning, match="sigma"):  # COCO's names in another order are not COCO's keypoints
        assert keypoint_sigmas([_category(COCO_PERSON_KEYPOINT_NAMES[::-1])]).tolist() == [DEFAULT_KEYPOINT_SIGMA] * 17
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sigmas of its own, or COCO's names: no warning
        keypoint_sigmas([_category(["a"], [0.2])])
        keypoint_sigmas([_category(COCO_PERSON_KEYPOINT_NAMES)])


@pytest.mark.parametrize("categories, message", [
    ([_category(["a", "b"], [0.1])], r"'sigmas' \[0.1\]: expected a list of 2 positive numbers"),
    ([_category(["a", "b"], [0.1, -0.1])], "expected a list of 2 positive numbers"),
    ([_category(["a", "b"], [0.1, 0.2]), _category(["a", "b"], [0.1, 0.3], cid=2)], "one sigma vector"),
    ([_category(["a", "b"], [0.1, 0.2]), _category(["a", "b", "c"], [0.1, 0.2, 0.3], cid=2)], "2 vs 3 keypoints"),
    ([{"id": 1, "name": "cup", "keypoints": []}], "declares keypoint names"),
], ids=["length", "negative", "different-sigmas", "different-k", "none"])
def test_bad_or_disagreeing_sigmas_raise(categories: list[dict], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        keypoint_sigmas(categories)


def test_the_category_sigmas_are_the_ones_oks_uses() -> None:
    gt = keypoint_gt([{"bbox": [10, 10, 40, 40], "area": 1600.0, "keypoints": [20, 20, 2]}], ["p"], [0.05])
    results = [{"image_id": 1, "category_id": 1, "score": 0.9, "keypoints": [23.0, 20.0, 1.0]}]  # 3 px off
    ap = {}
    for sigma in (0.02, 0.05, 0.2):
        gt["categories"][0]["sigmas"] = [sigma]
        oks = reference_oks(results[0]["keypoints"], gt["annotations"][0], [sigma])
        ap[sigma] = evaluate_coco(gt, results, verbose=False)["keypoints"]["AP"]
        assert ap[sigma] == pytest.approx(float(np.mean(oks >= OKS_THRESHOLDS - 1e-12)))
    assert ap[0.02] < ap[0.05] < ap[0.2] == pytest.approx(1.0)


def test_the_synthetic_figures_declare_their_sigmas(figures: CocoDataset) -> None:
    categories = json.loads(figures.json_path.read_text())["categories"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the default
        assert keypoint_sigmas(categories).tolist() == list(FIGURE_KEYPOINT_SIGMAS) == [0.05] * 13
    assert figures.keypoint_schema is not None and figures.num_keypoints == len(FIGURE_KEYPOINT_SIGMAS)


def test_ground_truth_without_keypoints_or_num_keypoints_is_completed() -> None:
    gt = keypoint_gt([{"bbox": [10, 10, 40, 40], "area": 1600.0, "keypoints": [20, 20, 2, 40, 40, 2]},
                      {"bbox": [60, 60, 20, 20], "area": 400.0, "keypoints": [0, 0, 0] * 2}], ["p", "q"], [0.05, 0.05])
    del gt["annotations"][0]["num_keypoints"]  # counted from the visibilities: 2, so not ignored
    del gt["annotations"][1]["num_keypoints"], gt["annotations"][1]["keypoints"]  # nothing labelled: ignored
    results = [{"image_id": 1, "category_id": 1, "score": 0.9, "keypoints": [20, 20, 1, 40, 40, 1]}]
    assert evaluate_coco(gt, results, verbose=False)["keypoints"]["AP"] == pytest.approx(1.0)  # not 0.5: 1 of 1
    gt["annotations"][0]["keypoints"] = [20, 20, 2]  # one keypoint short of K = 2
    with pytest.raises(ValueError, match="ground-truth annotation 1 has 'keypoints' of 3 values: expected 3 x 2"):
        evaluate_coco(gt, results, verbose=False)
