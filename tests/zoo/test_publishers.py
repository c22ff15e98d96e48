"""Download -> integrity check -> conversion -> prediction, for a synthetic file in each publisher's
layout served from 127.0.0.1 under the catalogue entry's own file name.

The files have the real shapes (each converter builds the real preset); prediction runs at 64 px
(``overrides``) to stay quick. A second use reads the converted checkpoint from the cache, with no
network and no second conversion.
"""

from __future__ import annotations

import pytest
import torch

from instaseg.engine.checkpoint import load_checkpoint
from instaseg.hub import Predictor, resolve_checkpoint
from instaseg.structures.instances import Instances
from instaseg.structures.keypoints import COCO_PERSON_KEYPOINT_NAMES
from instaseg.zoo import cache_state, converted_path, weights_dir

from tests.zoo._server import closed_port_url
from tests.zoo._synthetic import (detectron2_keypoint_pkl, detectron2_pkl, torchvision_coco_file,
                                  torchvision_keypoint_file, yolact_file)

SMALL = {"rcnn": ["input.min_size_test=64", "input.max_size_test=96"], "yolact": ["input.square=96"]}
CASES = {  # entry -> (synthetic file, config name, first category name, small-input overrides)
    "maskrcnn_r50_fpn_coco_tv": (torchvision_coco_file, "mask_rcnn_r50_fpn_torchvision", "person", "rcnn"),
    "maskrcnn_r50_c4_1x_coco_d2": (lambda: detectron2_pkl(fpn=False), "mask_rcnn_r50_c4_detectron2", "person",
                                   "rcnn"),
    "yolact_pp_r50_coco": (lambda: yolact_file(plus=True), "yolact_pp_r50_550", "person", "yolact"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fetch_check_convert_predict_then_cache(name, publish, server, monkeypatch, capsys):
    make, config_name, first_class, small = CASES[name]
    entry = publish(name, make())
    assert cache_state(entry) == ""
    path = resolve_checkpoint(name)
    assert path == converted_path(entry) and path.parent == weights_dir()
    assert (weights_dir() / entry.file_name).is_file()  # the publisher's file stays beside it
    assert f"converting {entry.file_name}" in capsys.readouterr().err
    payload = load_checkpoint(path)
    assert payload["config"]["name"] == config_name
    assert payload["source"]["catalogue"] == name and payload["source"]["url"] == entry.url
    assert payload["categories"]["names"][0] == first_class
    assert len(payload["categories"]["ids"]) == payload["config"]["model"]["num_classes"]

    predictor = Predictor.from_pretrained(name, score_threshold=0.0, overrides=SMALL[small])
    result = predictor(torch.rand(3, 48, 64) * 255)
    assert isinstance(result, Instances) and result.masks.shape[1:] == (48, 64)

    # Second use: the converted checkpoint, no network, no conversion.
    monkeypatch.setenv("INSTASEG_WEIGHTS_MIRROR", closed_port_url())
    stamp = path.stat().st_mtime_ns
    assert resolve_checkpoint(name) == path and path.stat().st_mtime_ns == stamp
    assert server.requests[entry.file_name] == 1 and cache_state(entry) == "ready"


def test_mmdet_entries_convert_with_the_mmdet_converter(publish):
    pytest.importorskip("instaseg.weights.mmdet")
    from tests.zoo._synthetic import mmdet_ms_rcnn_file

    entry = publish("ms_rcnn_r50_fpn_coco_mmdet", mmdet_ms_rcnn_file())
    payload = load_checkpoint(resolve_checkpoint(entry.name, verbose=False))
    assert payload["config"]["model"]["maskiou"] is not None
    assert payload["categories"]["names"][0] == "person"


KEYPOINT_CASES = {  # entry -> (synthetic file, config name, keypoint score)
    "keypointrcnn_r50_fpn_coco_tv": (torchvision_keypoint_file, "keypoint_rcnn_r50_fpn_torchvision", "logit"),
    "keypointrcnn_r50_fpn_1x_coco_d2": (detectron2_keypoint_pkl, "keypoint_rcnn_r50_fpn_detectron2", "detectron2"),
}


@pytest.mark.parametrize("name", list(KEYPOINT_CASES))
def test_keypoint_models_by_name_know_coco_persons(name, publish, capsys):
    """Fetched, checked and converted by name; the checkpoint records person (id 1) with COCO's 17
    keypoint names and skeleton, and predicts boxes and keypoints (no masks)."""
    make, config_name, score = KEYPOINT_CASES[name]
    entry = publish(name, make())
    payload = load_checkpoint(resolve_checkpoint(name))
    assert f"converting {entry.file_name}" in capsys.readouterr().err
    assert payload["config"]["name"] == config_name and payload["config"]["model"]["num_classes"] == 1
    assert payload["config"]["model"]["keypoint_head"]["score"] == score
    categories = payload["categories"]
    assert (categories["ids"], categories["names"]) == ([1], ["person"])
    keypoints = categories["keypoints"]  # where instaseg train stores a dataset's
    assert keypoints["names"] == list(COCO_PERSON_KEYPOINT_NAMES)
    assert len(keypoints["skeleton"]) == 19 and [15, 13] in keypoints["skeleton"]  # left ankle - left knee

    # 3 detections at most: the 8 x 512 keypoint head costs ~7 GFLOP per detection on this CPU
    predictor = Predictor.from_pretrained(name, score_threshold=0.0,
                                          overrides=[*SMALL["rcnn"], "model.inference.detections_per_image=3"])
    result = predictor(torch.rand(3, 48, 64) * 255)
    assert result.masks is None and result.keypoints.shape == (len(result), 17, 3)
