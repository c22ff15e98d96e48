"""Keypoint heatmap targets against a slow float64 loop reference of Detectron2's discretisation."""

from __future__ import annotations

import math

import torch

from instaseg.targets.keypoints import keypoint_targets, keypoints_to_heatmap, rois_with_visible_keypoints
from instaseg.targets.rcnn import SampledRoIs


def _reference(keypoints: torch.Tensor, rois: torch.Tensor, m: int) -> tuple[list[list[int]], list[list[bool]]]:
    index, valid = [], []
    for r in range(keypoints.shape[0]):
        x0, y0, x1, y1 = rois[r].tolist()
        w, h = x1 - x0, y1 - y0
        row_index, row_valid = [], []
        for x, y, v in keypoints[r].tolist():
            if w <= 0 or h <= 0:
                row_index.append(0)
                row_valid.append(False)
                continue
            cx = m - 1 if x == x1 else math.floor((x - x0) * (m / w))
            cy = m - 1 if y == y1 else math.floor((y - y0) * (m / h))
            ok = v > 0 and 0 <= cx < m and 0 <= cy < m
            row_index.append(cy * m + cx if ok else 0)
            row_valid.append(ok)
        index.append(row_index)
        valid.append(row_valid)
    return index, valid


def _random_case(num_rois: int, num_keypoints: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    xy0 = torch.rand(num_rois, 2, generator=generator, dtype=torch.float64) * 50
    wh = torch.rand(num_rois, 2, generator=generator, dtype=torch.float64) * 40 + 0.3
    rois = torch.cat([xy0, xy0 + wh], dim=1)
    # keypoints spread over the RoI and a margin around it: some fall outside
    unit = torch.rand(num_rois, num_keypoints, 2, generator=generator, dtype=torch.float64) * 1.4 - 0.2
    xy = xy0[:, None] + unit * wh[:, None]
    vis = torch.randint(0, 3, (num_rois, num_keypoints, 1), generator=generator).double()
    keypoints = torch.cat([xy, vis], dim=-1)
    # edge cases: exactly on each edge, and on the corners
    keypoints[:, 0, 0] = rois[:, 0]
    keypoints[:, 1, 0] = rois[:, 2]
    keypoints[:, 2, 1] = rois[:, 3]
    keypoints[:, 3, :2] = rois[:, 2:]
    keypoints[:, 4, :2] = rois[:, :2]
    keypoints[:, 0:5, 2] = 2.0
    return keypoints, rois


def test_keypoints_to_heatmap_matches_loop_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    keypoints, rois = _random_case(40, 17, generator)
    rois[5, 2] = rois[5, 0]  # an empty RoI: nothing valid
    for m in (56, 7):
        index, valid = keypoints_to_heatmap(keypoints, rois, m)
        ref_index, ref_valid = _reference(keypoints, rois, m)
        assert index.dtype == torch.int64 and valid.dtype == torch.bool
        assert valid.tolist() == ref_valid
        assert index.tolist() == ref_index
        # the case mixes valid, invisible and outside keypoints
        assert 0 < int(valid.sum()) < valid.numel()
        nonempty = rois[:, 2] > rois[:, 0]
        assert bool(valid[nonempty, 3].all()) and bool(valid[nonempty, 4].all())  # on both corners
        assert not bool(valid[~nonempty].any())


def test_keypoints_to_heatmap_hand_cases() -> None:
    rois = torch.tensor([[10.0, 20.0, 66.0, 76.0]])  # 56 x 56: one pixel per cell
    keypoints = torch.tensor([[
        [10.5, 20.5, 2.0],  # first cell
        [65.99, 75.99, 1.0],  # last cell, occluded but labelled: valid
        [66.0, 76.0, 2.0],  # exactly on the far corner: the last cell
        [66.01, 30.0, 2.0],  # just right of the box: outside
        [9.99, 30.0, 2.0],  # just left of the box: outside
        [30.5, 40.5, 0.0],  # unlabelled
        [30.5, 40.5, 2.0],  # cell (x 20, y 20)
    ]])
    index, valid = keypoints_to_heatmap(keypoints, rois, 56)
    assert valid.tolist() == [[True, True, True, False, False, False, True]]
    assert index.tolist() == [[0, 56 * 56 - 1, 56 * 56 - 1, 0, 0, 0, 20 * 56 + 20]]


def test_keypoint_targets_take_the_matched_ground_truth_of_positives() -> None:
    gt = torch.tensor([[[5.0, 5.0, 2.0]], [[25.0, 25.0, 2.0]]])
    boxes = torch.tensor([[20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 40.0, 40.0]])
    sampled = SampledRoIs(boxes, torch.tensor([0, 0, 1]), torch.tensor([1, 0, 0]), num_positive=2)
    targets = keypoint_targets(gt, sampled, heatmap_size=10)
    assert targets.index.tolist() == [[5 * 10 + 5], [5 * 10 + 5]]
    assert targets.valid.tolist() == [[True], [True]]
    assert keypoint_targets(gt, sampled, 10, count=1).index.shape == (1, 1)
    none = SampledRoIs(boxes[:0], torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 0)
    assert keypoint_targets(gt[:0], none, 10).valid.shape == (0, 1)


def test_rois_with_visible_keypoints() -> None:
    keypoints = torch.tensor([[[5.0, 5.0, 2.0], [50.0, 5.0, 2.0]],
                              [[5.0, 5.0, 0.0], [50.0, 5.0, 2.0]],
                              [[10.0, 10.0, 1.0], [50.0, 5.0, 0.0]]])
    rois = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    assert rois_with_visible_keypoints(keypoints, rois).tolist() == [True, False, True]  # closed box: 10 is in
