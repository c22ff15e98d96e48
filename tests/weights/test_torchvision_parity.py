"""torchvision's own Mask R-CNN vs instaseg's converted copy: the same images, the same detections,
at torchvision's default test size (the comparison runs in a subprocess: ``_torchvision_parity.py``)."""

import pytest

from tests.weights._parity_run import needs_torchvision, run_parity_script


@pytest.mark.slow
@needs_torchvision
def test_converted_torchvision_model_gives_the_same_detections():
    results = run_parity_script("_torchvision_parity.py", timeout=600)
    assert len(results) == 3
    for result in results:  # float64: differences left would be conventions, not rounding
        assert result["num_theirs"] > 10 and result["num_ours"] == result["num_theirs"], result
        assert result["labels_equal"], result  # torchvision's label k is instaseg's label k - 1
        assert result["max_box_diff"] <= 1e-6, result
        assert result["max_score_diff"] <= 1e-9, result
        assert result["min_mask_iou"] == 1.0, result
