"""Run torchvision's own Keypoint R-CNN and instaseg's converted copy on the same images; print JSON.

The sibling of ``_torchvision_parity.py`` (same images, same shimmed ops, float64, torchvision's
defaults 800 / 1333) for ``keypointrcnn_resnet50_fpn(num_classes=2, num_keypoints=17)``: boxes,
scores, labels, keypoint locations and torchvision's ``keypoints_scores`` against instaseg's keypoint
score column (``score="logit"``), detection by detection.

One setting differs from torchvision's defaults, on both sides alike: at most ``DETECTIONS`` (12)
detections per image instead of 100. The keypoint head (eight 3x3 convs of 512 channels at 14 x 14)
costs about 7 GFLOP per detection, which in float64 on a shared 2-core CPU is minutes per image; the
cap keeps the highest-scoring detections after NMS, the same on both sides. And a fresh random model
scores few boxes above 0.05 with its two classes (2 per image here), so the person logit's bias is
raised by ``PERSON_BIAS`` (a change of weights, not of conventions): 8, 12 and 6 detections on the
three images.

torchvision decodes keypoints into float32 buffers whatever the model's dtype
(``roi_heads.heatmaps_to_keypoints``: ``xy_preds``/``end_scores`` are ``torch.float32``, and
``(x_int.float() + 0.5) * width_correction`` is float32 arithmetic) and rescales them with float32
ratios (``transform.resize_keypoints``). So its keypoints carry float32 rounding even in a float64
model; besides the differences the script also reports whether every keypoint falls on the same
heatmap cell (``max_keypoint_ulps``: the difference in units of float32 spacing at that coordinate).

    python _torchvision_keypoint_parity.py TORCHVISION_SITE_DIR [NUM_SIZES [OVERRIDE ...]]

``NUM_SIZES``: compare on the first few of the image sizes only; ``OVERRIDE``: ``key=value`` changes
to instaseg's config (to see the comparison fail on a wrong convention).
"""

from __future__ import annotations

import json
import sys

import torch

from instaseg.ops.torchvision_shim import load_torchvision

from tests.weights._torchvision_parity import IMAGE_SIZES, compare_detections, randomize

DETECTIONS = 12  # per image, both sides (module docstring)
PERSON_BIAS = 3.0


def main(site: str, num_sizes: int, overrides: list[str]) -> None:
    load_torchvision(site)
    from torchvision.models.detection import keypointrcnn_resnet50_fpn

    from instaseg.config.io import apply_overrides
    from instaseg.detectors.build import build_from_config
    from instaseg.weights.torchvision import convert_torchvision_keypointrcnn, torchvision_keypoint_config

    torch.manual_seed(0)
    tv = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2, num_keypoints=17,
                                   box_detections_per_img=DETECTIONS).eval()
    randomize(tv)
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.bias[1] += PERSON_BIAS
    state, layout = convert_torchvision_keypointrcnn(tv.state_dict(), source_bn_eps=1e-5)
    config = torchvision_keypoint_config(layout.num_classes, layout.num_keypoints, layout.keypoint_conv_dims)
    config = apply_overrides(config, [f"model.inference.detections_per_image={DETECTIONS}", *overrides])
    ours = build_from_config(config).eval()
    ours.load_state_dict(state)
    tv, ours = tv.double(), ours.double()  # float64: what is left is convention, not rounding
    print(json.dumps([_compare(tv, ours, size) for size in IMAGE_SIZES[:num_sizes]]))


def _compare(tv, ours, size: tuple[int, int]) -> dict:
    """Detection-by-detection differences on one image of ``size = (H, W)``, keypoints included."""
    out, theirs, mine = compare_detections(tv, ours, size)
    if theirs is None:
        return out
    xy_theirs, xy_ours = theirs["keypoints"][..., :2].double(), mine.keypoints[..., :2]
    diff = (xy_theirs - xy_ours).abs()
    out["max_keypoint_diff"] = float(diff.max())
    spacing = torch.finfo(torch.float32).eps * xy_theirs.abs().clamp(min=1)  # float32 spacing there (2x at most)
    out["max_keypoint_ulps"] = float((diff / spacing).max())
    logits = theirs["keypoints_scores"].double()
    out["max_keypoint_score_diff"] = float((logits - mine.keypoints[..., 2]).abs().max())
    relative = (logits - mine.keypoints[..., 2]).abs() / logits.abs().clamp(min=1)
    out["max_keypoint_score_rel_diff"] = float(relative.max())
    out["theirs_visibility_is_one"] = bool((theirs["keypoints"][..., 2] == 1).all())
    return out


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else len(IMAGE_SIZES), sys.argv[3:])
