"""YOLACT target builders against slow float64 loop references."""

from __future__ import annotations

import torch

from instaseg.targets.matcher import Matcher
from instaseg.targets.yolact import crop_masks, downsample_masks, mask_iou_targets, match_anchors, sample_mask_positives


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _ref_match(anchors, gt_boxes, gt_labels, num_classes, crowd, crowd_iou):
    """The reference's match(): thresholds, then each gt forces its best anchor, then crowd ignore."""
    a, g = anchors.tolist(), gt_boxes.tolist()
    labels, gt_index = [], []
    for box in a:
        ious = [_iou(gt, box) for gt in g]
        best = max(range(len(g)), key=lambda j: (ious[j], -j)) if g else 0
        value = ious[best] if g else 0.0
        gt_index.append(best)
        labels.append(1 if value >= 0.5 else (0 if value < 0.4 else -1))
    for j, gt in enumerate(g):
        ious = [_iou(gt, box) for box in a]
        best = max(range(len(a)), key=lambda i: (ious[i], -i))
        labels[best], gt_index[best] = 1, j
    out = []
    for i, box in enumerate(a):
        if labels[i] == 1:
            out.append(int(gt_labels[gt_index[i]]))
            continue
        area = (box[2] - box[0]) * (box[3] - box[1])
        covered = [max(0.0, min(c[2], box[2]) - max(c[0], box[0])) * max(0.0, min(c[3], box[3]) - max(c[1], box[1]))
                   / area for c in crowd.tolist()]
        out.append(-1 if labels[i] == -1 or (covered and max(covered) > crowd_iou) else num_classes)
    return out, gt_index


def _random_boxes(n: int, size: float = 64.0) -> torch.Tensor:
    xy = torch.rand(n, 2, dtype=torch.float64) * size * 0.7
    wh = torch.rand(n, 2, dtype=torch.float64) * size * 0.4 + 4
    return torch.cat([xy, xy + wh], dim=1)


def test_match_anchors_against_loop_reference() -> None:
    for trial in range(5):
        anchors, gt = _random_boxes(60), _random_boxes(4)
        gt_labels = torch.randint(0, 3, (4,))
        crowd = _random_boxes(trial % 2)
        result = match_anchors(anchors, gt, gt_labels, 3, Matcher([0.4, 0.5], [0, -1, 1]), crowd, 0.7)
        ref_labels, ref_index = _ref_match(anchors, gt, gt_labels, 3, crowd, 0.7)
        assert result.labels.tolist() == ref_labels
        positive = result.positive
        assert result.gt_index[positive].tolist() == [ref_index[i] for i in range(60) if positive[i]]
        assert positive.sum() >= 1


def test_match_anchors_without_ground_truth_is_all_background() -> None:
    result = match_anchors(_random_boxes(10), torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long),
                           5, Matcher([0.4, 0.5], [0, -1, 1]))
    assert (result.labels == 5).all() and result.negative.all()


def test_crop_masks_against_loop() -> None:
    masks = torch.rand(3, 9, 11, dtype=torch.float64)
    boxes = torch.tensor([[1.2, 0.0, 7.7, 5.5], [0.0, 2.0, 11.0, 9.0], [4.5, 4.5, 4.6, 4.6]], dtype=torch.float64)
    for padding in (0.0, 1.0):
        out = crop_masks(masks, boxes, padding)
        for n in range(3):
            x1, y1, x2, y2 = boxes[n].tolist()
            for y in range(9):
                for x in range(11):
                    inside = x1 - padding <= x + 0.5 < x2 + padding and y1 - padding <= y + 0.5 < y2 + padding
                    assert out[n, y, x].item() == (masks[n, y, x].item() if inside else 0.0)


def test_crop_masks_gradient() -> None:
    masks = torch.rand(2, 5, 6, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[1.0, 1.0, 4.0, 3.0], [0.0, 0.0, 2.5, 5.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m: crop_masks(m, boxes, 0.5), (masks,))


def test_downsample_masks_halves_a_block() -> None:
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 0:4, 2:6] = True
    out = downsample_masks(masks, (4, 4))
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0:2, 1:3] = True  # 2x2 blocks average exactly at half-pixel centres
    assert torch.equal(out[0], expected)
    assert downsample_masks(torch.zeros(0, 8, 8, dtype=torch.bool), (4, 4)).shape == (0, 4, 4)


def test_mask_iou_targets_against_loop() -> None:
    probs = torch.rand(4, 6, 7, dtype=torch.float64)
    gt = torch.rand(4, 6, 7) > 0.6
    gt[3] = False
    probs[3] = 0.1  # empty union -> 0
    out = mask_iou_targets(probs, gt)
    for n in range(4):
        inter = union = 0
        for y in range(6):
            for x in range(7):
                p, g = probs[n, y, x].item() > 0.5, bool(gt[n, y, x])
                inter += p and g
                union += p or g
        assert abs(out[n].item() - (inter / union if union else 0.0)) < 1e-12


def test_sample_mask_positives_caps_and_keeps_subset() -> None:
    positive = torch.rand(100) > 0.5
    index = sample_mask_positives(positive, 10)
    assert index.numel() == min(10, int(positive.sum()))
    assert positive[index].all() and len(set(index.tolist())) == index.numel()
    assert torch.equal(sample_mask_positives(positive, 1000), positive.nonzero().squeeze(1))
