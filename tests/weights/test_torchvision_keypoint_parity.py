"""torchvision's own keypointrcnn_resnet50_fpn vs instaseg's keypoint_rcnn_r50_fpn_torchvision with the
converted weights, at torchvision's default test size (in a subprocess: ``_torchvision_keypoint_parity.py``;
a file of its own so that the two long parity runs can go to different test workers)."""

import pytest

from tests.weights._parity_run import needs_torchvision, run_parity_script


@pytest.mark.slow
@needs_torchvision
def test_converted_torchvision_keypoint_model_gives_the_same_keypoints():
    results = run_parity_script("_torchvision_keypoint_parity.py", timeout=3000)
    assert len(results) == 3
    for result in results:  # 6 to 12 detections per image (at most 12: see the script's docstring)
        assert result["num_theirs"] >= 5 and result["num_ours"] == result["num_theirs"], result
        assert result["labels_equal"], result
        assert result["max_box_diff"] <= 1e-6, result
        assert result["max_score_diff"] <= 1e-9, result
        # torchvision decodes and rescales keypoints in float32 whatever the model's dtype: the same
        # heatmap cell, up to float32 rounding (a different cell is >= 0.3 px off)
        assert result["max_keypoint_ulps"] <= 2.0 and result["max_keypoint_diff"] <= 1e-3, result
        # its keypoints_scores are the peak logits stored in float32
        assert result["max_keypoint_score_rel_diff"] <= 1e-7, result
        assert result["theirs_visibility_is_one"], result
