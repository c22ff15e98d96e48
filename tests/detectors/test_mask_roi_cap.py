"""``mask_head.max_rois_per_image``: the mask branch trains on at most that many positives per image."""

import torch

from instaseg.hub import build_model
from instaseg.structures.boxes import box_iou
from instaseg.targets.rcnn import SampledRoIs, mask_targets

from tests.detectors._toy_data import toy_scene


def test_mask_targets_take_the_first_count_positives():
    masks = torch.zeros(2, 8, 8)
    masks[0, :4, :4] = 1
    masks[1, 4:, 4:] = 1
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [4.0, 4.0, 8.0, 8.0], [0.0, 0.0, 8.0, 8.0]])
    sampled = SampledRoIs(boxes, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 0]), num_positive=2)
    full = mask_targets(masks, sampled, 4)
    assert full.shape == (2, 4, 4) and bool((full == 1).all())
    assert torch.equal(mask_targets(masks, sampled, 4, count=1), full[:1])
    assert mask_targets(masks, sampled, 4, count=5).shape[0] == 2  # never more than the positives


def test_capped_mask_branch_sees_at_most_cap_rois_per_image():
    images, targets = zip(*[toy_scene(seed, 96) for seed in range(2)])
    torch.manual_seed(0)
    model = build_model("mask_rcnn_r18_fpn_tiny", num_classes=3, model__mask_head__max_rois_per_image=2)
    model.train()
    raw = model(list(images), list(targets))
    counts = [min(s.num_positive, 2) for s in raw.sampled]
    assert sum(s.num_positive for s in raw.sampled) > sum(counts)  # the cap is active on this batch
    assert raw.mask_logits.shape[0] == sum(counts)
    # The capped RoIs are the leading (randomly ordered) positives, matched to their ground truth.
    for s, t in zip(raw.sampled, targets):
        k = min(s.num_positive, 2)
        ious = box_iou(s.boxes[:k], t.boxes).gather(1, s.gt_index[:k, None]).squeeze(1)
        assert bool((ious >= 0.5).all())
    total, losses = model.loss(raw, list(targets))
    assert torch.isfinite(total) and losses["loss_mask"] > 0
    total.backward()
