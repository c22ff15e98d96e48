"""torchvision's own Mask R-CNN vs instaseg's converted copy: the same images, the same detections,
at torchvision's default test size.

torchvision's Python package is installed by the set-up (``make test``) without its dependencies
into ``.venv/torchvision-site``, outside the environment's site-packages, so instaseg's call-time
dispatch never sees it. The comparison runs in a subprocess (see ``_torchvision_parity.py``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("INSTASEG_TORCHVISION_SITE", ROOT / ".venv" / "torchvision-site"))


@pytest.mark.slow
@pytest.mark.skipif(not (SITE / "torchvision").is_dir(), reason=f"torchvision's Python package not in {SITE}")
def test_converted_torchvision_model_gives_the_same_detections():
    script = Path(__file__).with_name("_torchvision_parity.py")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script), str(SITE)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 3
    for result in results:  # float64: differences left would be conventions, not rounding
        assert result["num_theirs"] > 10 and result["num_ours"] == result["num_theirs"], result
        assert result["labels_equal"], result  # torchvision's label k is instaseg's label k - 1
        assert result["max_box_diff"] <= 1e-6, result
        assert result["max_score_diff"] <= 1e-9, result
        assert result["min_mask_iou"] == 1.0, result


@pytest.mark.slow
@pytest.mark.skipif(not (SITE / "torchvision").is_dir(), reason=f"torchvision's Python package not in {SITE}")
def test_converted_torchvision_keypoint_model_gives_the_same_keypoints():
    """keypointrcnn_resnet50_fpn vs keypoint_rcnn_r50_fpn_torchvision (``_torchvision_keypoint_parity.py``)."""
    script = Path(__file__).with_name("_torchvision_keypoint_parity.py")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script), str(SITE)], capture_output=True, text=True, env=env,
                          timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
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
