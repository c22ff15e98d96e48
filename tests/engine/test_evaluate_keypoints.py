"""Evaluation of a boxes + keypoints model (no masks): bbox and keypoint AP, metrics.json, the main
metric that ranks checkpoints, and the run folder's keypoint PR data."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from instaseg.data.coco import CocoDataset
from instaseg.data.synthetic_keypoints import generate_keypoint_dataset
from instaseg.engine.evaluate import evaluate_model, main_metric_type, read_metrics_json, write_metrics_json
from instaseg.structures.instances import Instances

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


class _KeypointOracle:
    """Predicts each image's ground truth (boxes and keypoints, no masks), in the test loader's order."""

    def __init__(self, dataset: CocoDataset) -> None:
        self.queue = []
        for i in range(len(dataset)):
            t = dataset[i].targets
            keypoints = t.keypoints.clone()
            keypoints[:, :, 2] = 1.0  # a score in place of the visibility
            self.queue.append(Instances(t.boxes, torch.ones(len(t)), t.labels, None, keypoints=keypoints))

    def predict(self, images: list[torch.Tensor]) -> list[Instances]:
        out, self.queue = self.queue[:len(images)], self.queue[len(images):]
        return out


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> CocoDataset:
    data = generate_keypoint_dataset(tmp_path_factory.mktemp("fig"), num_images=5, image_size=80, seed=2,
                                     val_fraction=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        return CocoDataset(data.train_annotations, data.train_images)


def test_a_keypoint_model_is_scored_for_boxes_and_keypoints(figures: CocoDataset, tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the figures' sigmas are in the json: no default
        metrics = evaluate_model(_KeypointOracle(figures), figures, progress=False, plots_dir=tmp_path)
    assert list(metrics) == ["bbox", "keypoints"]
    assert metrics["keypoints"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert main_metric_type(metrics) == "keypoints"
    assert (tmp_path / "plot_data" / "pr_keypoints.npz").is_file() and (tmp_path / "plot_data" / "pr_box.npz").is_file()
    write_metrics_json(metrics, tmp_path / "metrics.json")
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert set(written["keypoints"]) == {"AP", "AP50", "AP75", "APm", "APl", "AR@20", "ARm", "ARl"}
    back = read_metrics_json(tmp_path / "metrics.json")
    assert back["keypoints"]["AP"] == pytest.approx(1.0) and math.isnan(back["keypoints"]["APm"])  # all under 32^2


def test_main_metric_is_segm_with_masks_then_keypoints_then_bbox() -> None:
    assert main_metric_type({"bbox": {}, "segm": {}, "keypoints": {}}) == "segm"
    assert main_metric_type({"bbox": {}, "keypoints": {}}) == "keypoints"
    assert main_metric_type({"bbox": {}}) == "bbox"
    with pytest.raises(ValueError, match="no bbox, segm or keypoints"):
        main_metric_type({})
