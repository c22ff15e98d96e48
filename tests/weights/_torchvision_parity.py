"""Run torchvision's own Mask R-CNN and instaseg's converted copy on the same image; print JSON.

Used by test_torchvision_parity.py in a subprocess, with torchvision's pure-Python package on
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

from instaseg.ops.torchvision_shim import load_torchvision


def main(site: str) -> None:
    load_torchvision(site)
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from instaseg.weights.torchvision import convert_torchvision_maskrcnn, torchvision_config
    from instaseg.detectors.build import build_from_config
    from instaseg.config.io import apply_overrides

    torch.manual_seed(0)
    num_outputs = 5  # 4 classes + background: random weights then score above the 0.05 threshold
    size = (320, 448)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_outputs,
                               min_size=size[0], max_size=size[1]).eval()
    with torch.no_grad():  # realistic statistics and biases instead of a fresh model's zeros and ones
        for module in tv.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1)
    state, num_classes = convert_torchvision_maskrcnn(tv.state_dict(), source_bn_eps=1e-5)
    config = apply_overrides(torchvision_config(num_classes), [
        f"input.min_size_test={size[0]}", f"input.max_size_test={size[1]}"])
    ours = build_from_config(config).eval()
    ours.load_state_dict(state)
    # float64 takes float32 rounding (which a random network amplifies) out of the comparison, so
    # any difference left is a difference of convention
    tv, ours = tv.double(), ours.double()

    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 300, 410, generator=g, dtype=torch.float64)  # resized to 320 x 437
    image[:, 60:200, 80:260] = torch.tensor([0.9, 0.2, 0.1], dtype=torch.float64)[:, None, None]
    with torch.no_grad():
        theirs = tv([image])[0]
        mine = ours.predict([image * 255])[0]
    out = {
        "num_theirs": int(theirs["boxes"].shape[0]),
        "num_ours": len(mine),
        "labels_equal": bool(torch.equal(theirs["labels"] - 1, mine.labels)) if len(mine) == theirs["boxes"].shape[0] else False,
    }
    n = min(out["num_theirs"], out["num_ours"])
    if n:
        out["max_box_diff"] = float((theirs["boxes"][:n] - mine.boxes[:n]).abs().max())
        out["max_score_diff"] = float((theirs["scores"][:n] - mine.scores[:n]).abs().max())
        a = theirs["masks"][:n, 0] >= 0.5  # torchvision returns probabilities; threshold as instaseg does
        b = mine.masks[:n]
        inter = (a & b).flatten(1).sum(1).float()
        union = (a | b).flatten(1).sum(1).float()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        out["min_mask_iou"] = float(iou.min())
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
