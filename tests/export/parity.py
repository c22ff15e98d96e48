"""Comparing an exported model's outputs with ``model.predict`` (shared by the export tests)."""

from __future__ import annotations

import torch

from instaseg.export.exporters import OUTPUT_NAMES
from instaseg.structures.instances import Instances

# The acceptance figures: boxes within half a pixel, every mask's IoU at least 0.95.
BOX_TOLERANCE = 0.5
MIN_MASK_IOU = 0.95
# Keypoints within one RoI pixel (at most 1 px): ONNX Runtime's rounding can only move a peak to a
# pixel whose value tied with it to the last few bits, in practice the next one.
KEYPOINT_TOLERANCE = 1.0

# keypoint_mask_rcnn_r50_fpn narrowed to a test size (ResNet-18, narrow FPN and heads, 128 px).
# BN, not the preset's FrozenBN: what the other ResNet-18 cases use (the C4 case in test_wrappers).
KEYPOINT_MASK_SMALL = {"model__backbone__name": "resnet18", "model__backbone__norm": "BN",
                       "model__fpn__out_channels": 32, "model__mask_head__conv_dim": 16,
                       "model__keypoint_head__conv_dims": [32, 32],
                       "input__min_size_test": 96, "input__max_size_test": 128,
                       "model__rpn__pre_nms_topk_test": 200, "model__rpn__post_nms_topk_test": 50}


def build_test_model(preset: str, score_thresh: float, detections: int = 20, **overrides):
    """A freshly initialised tiny model (3 classes) in eval mode with a chosen score threshold."""
    from instaseg.hub import build_model

    model = build_model(preset, num_classes=3, model__inference__score_thresh=score_thresh,
                        model__inference__detections_per_image=detections, **overrides).eval()
    mask_head = getattr(model, "mask_head", None)
    if mask_head is not None and hasattr(mask_head, "predictor"):
        # The R-CNN mask predictor starts at std 0.001: every probability within 0.01 of the 0.5
        # threshold, where rounding alone flips pixels. Trained masks are decided; so are these.
        with torch.no_grad():
            torch.nn.init.normal_(mask_head.predictor.weight, std=0.5)
    return model


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def compare(outputs, expected: Instances, names: tuple[str, ...] = OUTPUT_NAMES) -> dict[str, float]:
    """Assert the exported ``outputs`` named ``names`` (boxes, scores, labels, masks, mask_scores;
    keypoints; see ``output_names``) match ``expected``.

    Detections are paired by rank; near-tied scores may swap places between runtimes, so an
    unmatched rank is paired with the same-label detection whose box is closest. Returns the
    figures: count, max box difference (px), min mask IoU, max score difference, max keypoint
    location difference (px).
    """
    found = {name: torch.as_tensor(o) for name, o in zip(names, outputs, strict=True)}
    boxes, scores, labels = found["boxes"], found["scores"], found["labels"]
    n = len(expected)
    assert boxes.shape == (n, 4), f"{boxes.shape[0]} exported detections vs {n} in PyTorch"
    assert labels.dtype == torch.int64 and scores.shape == (n,)
    pairs = _pair(boxes, labels, expected)
    box_diff = max((float((boxes[i] - expected.boxes[j]).abs().max()) for i, j in pairs), default=0.0)
    score_diff = max((abs(float(scores[i] - expected.scores[j])) for i, j in pairs), default=0.0)
    assert box_diff <= BOX_TOLERANCE, f"box difference {box_diff:.3g} px"
    assert score_diff <= 1e-3, score_diff
    figures = {"count": n, "max_box_diff": box_diff, "min_mask_iou": 1.0, "max_score_diff": score_diff,
               "max_keypoint_diff": 0.0}
    assert ("masks" in found) == (expected.masks is not None)
    if "masks" in found:
        figures["min_mask_iou"] = _compare_masks(found["masks"], found["mask_scores"], expected, pairs)
    assert ("keypoints" in found) == (expected.keypoints is not None)
    if "keypoints" in found:
        figures["max_keypoint_diff"] = _compare_keypoints(found["keypoints"], expected, pairs)
    return figures


def _compare_masks(masks: torch.Tensor, mask_scores: torch.Tensor, expected: Instances, pairs) -> float:
    n = len(expected)
    assert masks.shape == (n, *expected.image_size) and masks.dtype == torch.bool and mask_scores.shape == (n,)
    reference_mask_scores = expected.mask_scores if expected.mask_scores is not None else expected.scores
    mask_iou = min((_mask_iou(masks[i], expected.masks[j]) for i, j in pairs), default=1.0)
    mask_score_diff = max((abs(float(mask_scores[i] - reference_mask_scores[j])) for i, j in pairs), default=0.0)
    assert mask_iou >= MIN_MASK_IOU, f"mask IoU {mask_iou:.3f}"
    assert mask_score_diff <= 1e-3, mask_score_diff
    return mask_iou


def _compare_keypoints(keypoints: torch.Tensor, expected: Instances, pairs) -> float:
    assert keypoints.shape == expected.keypoints.shape and keypoints.dtype == torch.float32
    location_diff = max((float((keypoints[i, :, :2] - expected.keypoints[j, :, :2]).abs().max()) for i, j in pairs),
                        default=0.0)
    score_diff = max((float((keypoints[i, :, 2] - expected.keypoints[j, :, 2]).abs().max()) for i, j in pairs),
                     default=0.0)
    assert location_diff <= KEYPOINT_TOLERANCE, f"keypoint difference {location_diff:.3g} px"
    assert score_diff <= 1e-3, f"keypoint score difference {score_diff:.3g}"
    return location_diff


def _pair(boxes: torch.Tensor, labels: torch.Tensor, expected: Instances) -> list[tuple[int, int]]:
    pairs, free = [], set(range(len(expected)))
    for i in range(boxes.shape[0]):
        same_rank = i in free and labels[i] == expected.labels[i]
        if same_rank and (boxes[i] - expected.boxes[i]).abs().max() <= BOX_TOLERANCE:
            pairs.append((i, i))
            free.discard(i)
            continue
        candidates = [j for j in free if expected.labels[j] == labels[i]]
        assert candidates, f"exported detection {i} (label {int(labels[i])}) has no counterpart"
        j = min(candidates, key=lambda j: float((boxes[i] - expected.boxes[j]).abs().max()))
        pairs.append((i, j))
        free.discard(j)
    return pairs
