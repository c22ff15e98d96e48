"""Run torchvision's own Mask R-CNN and instaseg's converted copy on the same image; print JSON.

At torchvision's default test size (800 / 1333), on image sizes that need rounding and give odd
feature maps. Used by test_torchvision_parity.py in a subprocess, with torchvision's pure-Python package on
``sys.path``. torchvision's compiled kernels cannot load with the CPU build of torch, so this
script registers the two ops its Mask R-CNN calls (``torchvision::nms`` and
``torchvision::roi_align``) with instaseg's pure-PyTorch kernels
(:func:`instaseg.ops.torchvision_shim.load_torchvision`), which are themselves tested against slow
references of torchvision's semantics. Everything else that decides detections —
resizing, normalization, anchors, proposal selection, box decoding, per-class NMS, mask paste —
runs as torchvision's own code, so this checks instaseg's model-level conventions.

    python _torchvision_parity.py TORCHVISION_SITE_DIR
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from instaseg.ops.torchvision_shim import load_torchvision

# sizes that make odd feature maps and need rounding at 800 / 1333: 480x640 -> 800x1066 (P5 25x34,
# P6 13x17), 375x500 -> 800x1066, 410x300 -> 1093x800 (padded 1120x800: P6 steps 62 and 61)
IMAGE_SIZES = [(480, 640), (375, 500), (410, 300)]


def main(site: str) -> None:
    load_torchvision(site)
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from instaseg.weights.torchvision import convert_torchvision_maskrcnn, torchvision_config
    from instaseg.detectors.build import build_from_config

    torch.manual_seed(0)
    num_outputs = 5  # 4 classes + background: random weights then score above the 0.05 threshold
    # torchvision's defaults (min_size 800, max_size 1333): instaseg's preset as it is
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_outputs).eval()
    randomize(tv)
    state, num_classes = convert_torchvision_maskrcnn(tv.state_dict(), source_bn_eps=1e-5)
    ours = build_from_config(torchvision_config(num_classes)).eval()
    ours.load_state_dict(state)
    # float64 takes float32 rounding (which a random network amplifies) out of the comparison, so
    # any difference left is a difference of convention
    tv, ours = tv.double(), ours.double()
    print(json.dumps([_compare(tv, ours, size) for size in IMAGE_SIZES]))


def parity_image(size: tuple[int, int]) -> torch.Tensor:
    """``(3, H, W)`` float64 in [0, 1], seeded by ``size``: smooth random shades with two flat
    objects (not degenerate, not noise)."""
    g = torch.Generator().manual_seed(size[0] * 10000 + size[1])
    height, width = size
    image = F.interpolate(torch.rand(1, 3, height // 16, width // 16, generator=g, dtype=torch.float64),
                          size=size, mode="bilinear", align_corners=False)[0]
    image[:, height // 5 : height // 2, width // 4 : width * 3 // 5] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    image[:, height // 2 : height * 4 // 5, width // 2 : width * 9 // 10] = torch.tensor([0.1, 0.3, 0.8])[:, None, None]
    return image


def randomize(model: torch.nn.Module) -> None:
    """Realistic statistics and biases instead of a fresh model's zeros and ones (in place)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1)


def compare_detections(tv, ours, size: tuple[int, int]) -> tuple[dict, dict | None, object]:
    """Both models on the parity image of ``size = (H, W)``: ``(differences of boxes, scores and
    labels, torchvision's result, instaseg's Instances)``; the two results only when the counts agree
    and are not zero (None otherwise)."""
    image = parity_image(size)
    with torch.no_grad():
        theirs = tv([image])[0]
        mine = ours.predict([image * 255])[0]
    out = {"size": list(size), "num_theirs": int(theirs["boxes"].shape[0]), "num_ours": len(mine)}
    if out["num_theirs"] != out["num_ours"] or out["num_ours"] == 0:
        return out, None, None
    out["labels_equal"] = bool(torch.equal(theirs["labels"] - 1, mine.labels))
    out["max_box_diff"] = float((theirs["boxes"] - mine.boxes).abs().max())
    out["max_score_diff"] = float((theirs["scores"] - mine.scores).abs().max())
    return out, theirs, mine


def _compare(tv, ours, size: tuple[int, int]) -> dict:
    """Detection-by-detection differences on one image of ``size = (H, W)``, masks included."""
    out, theirs, mine = compare_detections(tv, ours, size)
    if theirs is None:
        return out
    a = theirs["masks"][:, 0] >= 0.5  # torchvision returns probabilities; threshold as instaseg does
    b = mine.masks
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    out["min_mask_iou"] = float(iou.min())
    return out


if __name__ == "__main__":
    main(sys.argv[1])
