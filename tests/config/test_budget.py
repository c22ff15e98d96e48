"""The detection budget: every cap raised together, and the warnings that name them."""

from dataclasses import replace

import pytest

from instaseg.config.budget import (
    PROPOSALS_PER_DETECTION,
    coco_max_dets,
    crowding_warnings,
    detection_caps,
    detection_limit,
    with_max_detections,
)
from instaseg.config.io import apply_overrides
from instaseg.config.presets import get_preset, list_presets
from instaseg.errors import ConfigError
from instaseg.weights.detectron2 import Detectron2Layout, detectron2_config


def test_every_cap_is_raised_and_none_lowered():
    config = apply_overrides(get_preset("mask_rcnn_r18_fpn_tiny"), [
        "model.inference.detections_per_image=50", "model.rpn.post_nms_topk_test=150",
        "model.rpn.pre_nms_topk_test=300"])
    raised = with_max_detections(config, 351)
    assert detection_caps(raised) == {"model.inference.detections_per_image": 351,
                                      "model.rpn.pre_nms_topk_test": PROPOSALS_PER_DETECTION * 351,
                                      "model.rpn.post_nms_topk_test": PROPOSALS_PER_DETECTION * 351}
    assert detection_limit(raised) == 351
    assert with_max_detections(raised, 10) == raised  # never lowered
    yolact = apply_overrides(get_preset("yolact_r18_tiny"), ["model.nms_top_k=20",
                                                              "model.inference.detections_per_image=30"])
    assert detection_caps(with_max_detections(yolact, 400)) == {"model.inference.detections_per_image": 400,
                                                                 "model.nms_top_k": 400}
    with pytest.raises(ConfigError):
        with_max_detections(config, 0)


def test_detection_limit_is_the_smallest_cap_a_detection_passes():
    config = apply_overrides(get_preset("mask_rcnn_r18_fpn_tiny"), [
        "model.inference.detections_per_image=350", "model.rpn.post_nms_topk_test=128"])
    assert detection_limit(config) == 128  # each detection comes from one proposal


def test_warnings_name_the_cap_the_count_and_the_flag():
    config = apply_overrides(get_preset("mask_rcnn_r18_fpn_tiny"), ["model.inference.detections_per_image=50"])
    (message,) = crowding_warnings(351, config, where="tiles.json")
    assert "tiles.json" in message and "351" in message and "model.inference.detections_per_image=50" in message
    assert "--max-detections 351" in message
    assert crowding_warnings(351, with_max_detections(config, 351)) == []
    (coco,) = crowding_warnings(351, max_dets=(1, 10, 100))
    assert "maxDets=100" in coco and "--max-detections 351" in coco
    assert crowding_warnings(40, config, (1, 10, 100)) == []


def test_coco_max_dets_fit_the_most_crowded_image():
    assert coco_max_dets() == (1, 10, 100)
    assert coco_max_dets(60) == (1, 10, 100)
    assert coco_max_dets(351) == (1, 10, 351)
    assert coco_max_dets(40, max_detections=500) == (1, 10, 500)


@pytest.mark.parametrize("name", list_presets())
def test_presets_let_300_objects_through_unless_they_carry_a_publishers_caps(name):
    config = get_preset(name)
    publisher = name.endswith("_torchvision") or (name.startswith("yolact") and "tiny" not in name)
    if publisher:  # torchvision's box_detections_per_img, YOLACT's max_num_detections and top_k
        assert config.model.inference.detections_per_image == 100
    else:
        assert detection_limit(config) >= 300
        assert crowding_warnings(300, config) == []


def test_detectron2_conversions_keep_detectron2s_100_detections():
    config = detectron2_config(Detectron2Layout(fpn=True, depth=50, num_classes=80))
    assert config.model.inference.detections_per_image == 100  # TEST.DETECTIONS_PER_IMAGE
    assert replace(config, name="x").model.rpn.post_nms_topk_test == 1000  # RPN.POST_NMS_TOPK_TEST


def test_training_budget_fits_crowded_data_and_leaves_sparse_data_and_yolact_alone():
    from instaseg.config.budget import training_caps, with_training_budget

    tiny = get_preset("mask_rcnn_r18_fpn_tiny")
    assert with_training_budget(tiny, 10) == tiny  # the synthetic demo data: nothing changes
    assert training_caps(with_training_budget(tiny, 310)) == {  # the setting benchmarks/crowded.py measured
        "model.rpn.pre_nms_topk_train": 2000, "model.rpn.post_nms_topk_train": 1000,
        "model.box_head.batch_size_per_image": 256, "model.mask_head.max_rois_per_image": 64}
    assert training_caps(with_training_budget(tiny, 5000))["model.rpn.post_nms_topk_train"] == 2000  # ceiling
    full = get_preset("mask_rcnn_r50_fpn")  # never lowered; "no cap" (0) stays no cap
    assert training_caps(with_training_budget(full, 310)) == training_caps(full)
    yolact = get_preset("yolact_r18_tiny")
    assert with_training_budget(yolact, 310) == yolact and training_caps(yolact) == {}
