"""Comparing an exported model's outputs with ``model.predict`` (shared by the export tests)."""

from __future__ import annotations

import torch

from instaseg.structures.instances import Instances

# The acceptance figures: boxes within half a pixel, every mask's IoU at least 0.95.
BOX_TOLERANCE = 0.5
MIN_MASK_IOU = 0.95


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


def compare(outputs, expected: Instances) -> dict[str, float]:
    """Assert the exported ``outputs`` (boxes, scores, labels, masks, mask_scores) match ``expected``.

    Detections are paired by rank; near-tied scores may swap places between runtimes, so an
    unmatched rank is paired with the same-label detection whose box is closest. Returns the
    figures: count, max box difference (px), min mask IoU, max score difference.
    """
    boxes, scores, labels, masks, mask_scores = (torch.as_tensor(o) for o in outputs)
    n = len(expected)
    assert boxes.shape == (n, 4), f"{boxes.shape[0]} exported detections vs {n} in PyTorch"
    assert masks.shape == (n, *expected.image_size) and masks.dtype == torch.bool
    assert labels.dtype == torch.int64 and scores.shape == (n,) and mask_scores.shape == (n,)
    reference_mask_scores = expected.mask_scores if expected.mask_scores is not None else expected.scores
    pairs = _pair(boxes, labels, expected)
    box_diff = max((float((boxes[i] - expected.boxes[j]).abs().max()) for i, j in pairs), default=0.0)
    mask_iou = min((_mask_iou(masks[i], expected.masks[j]) for i, j in pairs), default=1.0)
    score_diff = max((abs(float(scores[i] - expected.scores[j])) for i, j in pairs), default=0.0)
    mask_score_diff = max((abs(float(mask_scores[i] - reference_mask_scores[j])) for i, j in pairs), default=0.0)
    assert box_diff <= BOX_TOLERANCE, f"box difference {box_diff:.3g} px"
    assert mask_iou >= MIN_MASK_IOU, f"mask IoU {mask_iou:.3f}"
    assert score_diff <= 1e-3 and mask_score_diff <= 1e-3, (score_diff, mask_score_diff)
    return {"count": n, "max_box_diff": box_diff, "min_mask_iou": mask_iou, "max_score_diff": score_diff}


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
