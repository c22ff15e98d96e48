"""The export wrapper runs ``model.predict`` for one image; the traceable paths its graph takes
(graph ops, dense suppression and paste, tensor size arithmetic, ragged keypoint decoding) give
``predict``'s eager results exactly, for every preset family and suppression kind (keypoint scores
up to float rounding: tests/ops/test_keypoints.py); settings the graph does not reproduce are
refused."""

from __future__ import annotations

import pytest
import torch

from instaseg.errors import InstasegError
from instaseg.export.exporters import export_wrapper, outputs_to_instances
from tests.export.parity import KEYPOINT_MASK_SMALL, build_test_model

PUBLISHER_CONVENTIONS = {"model__conventions__box_clip": "after_nms", "model__conventions__crop": "pixel_index",
                         "model__conventions__fast_nms_fill": "top_k", "model__conventions__rescoring_iou": "raw"}
CASES = [
    ("mask_rcnn_r18_fpn_tiny", {}),
    ("ms_rcnn_r18_fpn_tiny", {}),
    # The C4 layout (RPN and RoIs on res4, res5 as the head) on a ResNet-18.
    ("mask_rcnn_r50_c4", {"model__backbone__name": "resnet18", "model__backbone__norm": "BN",
                          "input__min_size_test": 96, "input__max_size_test": 128,
                          "model__rpn__pre_nms_topk_test": 200, "model__rpn__post_nms_topk_test": 50}),
    ("yolact_r18_tiny", {}),
    ("yolact_r18_tiny", {"model__inference__nms": "nms"}),
    ("yolact_pp_r18_tiny", {}),
    # dbolya/yolact's post-processing (the 550 px presets'), on the tiny YOLACT++.
    ("yolact_pp_r18_tiny", PUBLISHER_CONVENTIONS),
    # Keypoint R-CNN: boxes and keypoints only, and with the mask branch (narrowed).
    ("keypoint_rcnn_r18_fpn_tiny", {}),
    ("keypoint_mask_rcnn_r50_fpn", KEYPOINT_MASK_SMALL),
]


@pytest.mark.parametrize("preset,overrides", CASES)
@pytest.mark.parametrize("score_thresh", [0.2, 1.0])
def test_traced_paths_replay_predict_exactly(preset, overrides, score_thresh, monkeypatch):
    model = build_test_model(preset, score_thresh, **overrides)
    wrapper = export_wrapper(model)
    for height, width in [(96, 128), (70, 50)]:
        image = torch.rand(3, height, width) * 255
        expected = model.predict([image])[0]
        # The paths torch.export traces, run eagerly (the graph ops run their eager kernels).
        with monkeypatch.context() as patch, torch.no_grad():
            patch.setattr(torch.compiler, "is_exporting", lambda: True)
            got = outputs_to_instances(wrapper(image), (height, width), names=wrapper.output_names)
        if score_thresh == 1.0:
            assert len(expected) == 0
        assert len(got) == len(expected)
        for name in ("boxes", "scores", "labels"):
            assert torch.equal(getattr(got, name), getattr(expected, name)), name
        assert (got.masks is None) == (expected.masks is None)
        if expected.masks is not None:
            assert torch.equal(got.masks, expected.masks)
            mask_scores = expected.mask_scores if expected.mask_scores is not None else expected.scores
            assert torch.equal(got.mask_scores, mask_scores)
        assert (got.keypoints is None) == (expected.keypoints is None)
        if expected.keypoints is not None:
            assert torch.equal(got.keypoints[..., :2], expected.keypoints[..., :2])
            torch.testing.assert_close(got.keypoints[..., 2], expected.keypoints[..., 2])


@pytest.mark.parametrize("preset,overrides", [
    ("mask_rcnn_r18_fpn_tiny", {"model__inference__nms": "soft_nms"}),
    ("mask_rcnn_r18_fpn_tiny", {"model__mask_head__paste": "torchvision"}),
    ("mask_rcnn_r18_fpn_tiny", {"model__box_head__pooler_type": "pool"}),
    ("yolact_r18_tiny", {"model__inference__nms": "soft_nms"}),
])
def test_unsupported_settings_are_refused(preset, overrides):
    with pytest.raises(InstasegError, match="cannot export"):
        export_wrapper(build_test_model(preset, 0.2, **overrides))


def test_other_modules_are_refused():
    with pytest.raises(InstasegError, match="no exporter"):
        export_wrapper(torch.nn.Linear(2, 2))
