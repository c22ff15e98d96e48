"""YOLACT loss terms against slow float64 loop references, and their gradients."""

from __future__ import annotations

import math

import torch

from instaseg.losses.yolact import (
    box_regression_loss,
    mask_rescoring_loss,
    ohem_classification_loss,
    prototype_mask_loss,
    semantic_seg_loss,
)


def _ce(row: list[float], label: int) -> float:
    m = max(row)
    return m + math.log(sum(math.exp(v - m) for v in row)) - row[label]


def _ref_ohem(logits: torch.Tensor, labels: torch.Tensor, ratio: int) -> float:
    total = 0.0
    bg = logits.shape[-1] - 1
    for b in range(logits.shape[0]):
        rows, lab = logits[b].tolist(), labels[b].tolist()
        pos = [i for i, l in enumerate(lab) if 0 <= l < bg]
        cands = [i for i, l in enumerate(lab) if l == bg]
        cands.sort(key=lambda i: (-_ce(rows[i], bg), i))  # hardest first, ties by index
        chosen = pos + cands[: ratio * len(pos)]
        total += sum(_ce(rows[i], lab[i]) for i in chosen)
    return total


def test_ohem_classification_loss_against_loop() -> None:
    logits = torch.randn(2, 30, 4, dtype=torch.float64)
    labels = torch.full((2, 30), 3)
    labels[0, [1, 5, 7]] = torch.tensor([0, 2, 1])
    labels[0, [2, 3]] = -1
    labels[1, 10] = 1
    out = ohem_classification_loss(logits, labels, 3)
    assert abs(out.item() - _ref_ohem(logits, labels, 3)) < 1e-9


def test_ohem_classification_loss_no_positive_is_zero() -> None:
    logits = torch.randn(1, 10, 3, requires_grad=True)
    out = ohem_classification_loss(logits, torch.full((1, 10), 2), 3)
    assert out.item() == 0.0
    out.backward()


def test_box_regression_loss_against_loop() -> None:
    pred, goal = torch.randn(5, 4, dtype=torch.float64) * 2, torch.randn(5, 4, dtype=torch.float64)
    ref = sum((0.5 * d * d if abs(d) < 1 else abs(d) - 0.5) for d in (pred - goal).flatten().tolist())
    assert abs(box_regression_loss(pred, goal).item() - ref) < 1e-9


def _ref_mask_loss(logits, gt, boxes, crop) -> float:
    total = 0.0
    for n in range(logits.shape[0]):
        s = 0.0
        for y in range(logits.shape[1]):
            for x in range(logits.shape[2]):
                p = 1 / (1 + math.exp(-logits[n, y, x].item()))
                t = float(gt[n, y, x])
                s += -(t * math.log(p) + (1 - t) * math.log(1 - p)) * crop[n, y, x].item()
        b = boxes[n].tolist()
        total += s / max(1.0, (b[2] - b[0]) * (b[3] - b[1]))
    return total


def test_prototype_mask_loss_against_loop_and_gradcheck() -> None:
    logits = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    gt = torch.rand(3, 6, 5) > 0.5
    boxes = torch.tensor([[0.0, 0.0, 3.0, 4.0], [1.0, 1.0, 5.0, 6.0], [2.0, 2.0, 2.5, 2.5]], dtype=torch.float64)
    crop = (torch.rand(3, 6, 5) > 0.3).double()
    out = prototype_mask_loss(logits, gt, boxes, crop)
    assert abs(out.item() - _ref_mask_loss(logits, gt, boxes, crop)) < 1e-9
    assert torch.autograd.gradcheck(lambda l: prototype_mask_loss(l, gt, boxes, crop), (logits,))


def test_semantic_seg_loss_against_loop() -> None:
    seg = torch.randn(3, 4, 5, dtype=torch.float64)
    masks = torch.rand(3, 4, 5) > 0.5
    labels = torch.tensor([0, 0, 2])
    total = 0.0
    for c in range(3):
        for y in range(4):
            for x in range(5):
                t = float(any(bool(masks[g, y, x]) for g in range(3) if labels[g] == c))
                p = 1 / (1 + math.exp(-seg[c, y, x].item()))
                total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
    assert abs(semantic_seg_loss(seg, masks, labels).item() - total / 20) < 1e-9


def test_mask_rescoring_loss_against_loop() -> None:
    pred = torch.rand(4, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([2, 0, 1, 2])
    goal = torch.rand(4, dtype=torch.float64)
    ref = sum(0.5 * (pred[i, labels[i]].item() - goal[i].item()) ** 2 for i in range(4))
    assert abs(mask_rescoring_loss(pred, labels, goal).item() - ref) < 1e-9
    assert torch.autograd.gradcheck(lambda p: mask_rescoring_loss(p, labels, goal), (pred,))
