import torch

from instaseg.losses.rcnn import maskiou_loss
from instaseg.targets.maskiou import in_box_fraction, maskiou_targets


def _slow_in_box(mask, box):
    """Loop over pixels: fraction of mask pixels whose centre lies inside the (rounded) box."""
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    inside = total = 0
    for r in range(mask.shape[0]):
        for c in range(mask.shape[1]):
            if mask[r, c]:
                total += 1
                inside += int(x1 <= c < x2 and y1 <= r < y2)
    return inside / total if total else 0.0


def test_in_box_fraction_matches_pixel_loop():
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(3, 20, 24, generator=g) > 0.6
    boxes = torch.tensor([[2.0, 3.0, 10.0, 15.0], [0.0, 0.0, 24.0, 20.0], [-5.0, 4.2, 30.0, 11.7], [6.0, 6.0, 6.0, 9.0]])
    index = torch.tensor([0, 1, 2, 0])
    got = in_box_fraction(masks, index, boxes)
    want = torch.tensor([_slow_in_box(masks[i], b) for i, b in zip(index.tolist(), boxes)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_maskiou_target_counts_the_instance_outside_the_box():
    # Ground truth: a 10 x 20 bar; the RoI box covers its left half only. In the RoI's 4 x 4 frame
    # the target is full (all 16 cells), but the whole instance would be 32 cells wide there.
    gt = torch.zeros(1, 10, 20, dtype=torch.bool)
    gt[0, :, :] = True
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    in_box = in_box_fraction(gt, torch.tensor([0]), box)
    assert float(in_box) == 0.5
    target = torch.ones(1, 4, 4)
    pred = torch.zeros(1, 4, 4)
    pred[0, :, :2] = 0.9  # the prediction covers half of the box: 8 cells
    # overlap 8, full instance 16 / 0.5 = 32, union 8 + 32 - 8 = 32 -> IoU 0.25 (not 8 / 16 = 0.5)
    torch.testing.assert_close(maskiou_targets(pred, target, in_box), torch.tensor([0.25]))


def test_maskiou_target_binarizes_at_half_and_handles_empty():
    target = torch.zeros(2, 3, 3)
    target[0, 0, :] = 1  # 3 cells
    pred = torch.full((2, 3, 3), 0.49)
    pred[0, 0, :2] = 0.51  # 2 predicted cells, both inside the target
    iou = maskiou_targets(pred, target, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(iou, torch.tensor([2 / 3, 0.0]))


def test_maskiou_loss_uses_gt_class_and_ignores_zero_targets():
    pred = torch.tensor([[0.1, 0.9], [0.5, 0.2], [0.3, 0.3]], requires_grad=True)
    labels = torch.tensor([1, 0, 1])
    targets = torch.tensor([0.7, 0.0, 0.5])
    loss = maskiou_loss(pred, labels, targets)
    torch.testing.assert_close(loss, torch.tensor(((0.9 - 0.7) ** 2 + (0.3 - 0.5) ** 2) / 2))
    loss.backward()
    assert pred.grad[1].abs().sum() == 0 and pred.grad[0, 0] == 0
    assert float(maskiou_loss(pred, labels, torch.zeros(3))) == 0.0
