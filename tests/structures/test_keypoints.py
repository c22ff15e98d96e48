"""Keypoint structures: the flip map from names, the horizontal flip, and the optional fields."""

from __future__ import annotations

import pytest
import torch

from instaseg.structures.instances import CroppedInstances, Instances, Targets
from instaseg.structures.keypoints import (
    COCO_PERSON_KEYPOINT_NAMES,
    check_keypoints,
    flip_keypoints,
    keypoint_flip_map,
)


def test_coco_flip_map_swaps_left_and_right() -> None:
    flip_map = keypoint_flip_map(COCO_PERSON_KEYPOINT_NAMES)
    assert flip_map == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    assert [flip_map[k] for k in flip_map] == list(range(17))  # an involution


def test_flip_map_rejects_lopsided_or_repeated_names() -> None:
    with pytest.raises(ValueError, match="right_hand"):
        keypoint_flip_map(["nose", "left_hand"])
    with pytest.raises(ValueError, match="repeat"):
        keypoint_flip_map(["nose", "nose"])
    assert keypoint_flip_map(["tail", "right_paw", "head", "left_paw"]) == [0, 3, 2, 1]


def test_flip_keypoints_mirrors_swaps_and_keeps_unlabelled_at_zero() -> None:
    names = ["nose", "left_eye", "right_eye"]
    kps = torch.tensor([[[5.5, 2.0, 2.0], [3.25, 1.0, 1.0], [0.0, 0.0, 0.0]]])
    out = flip_keypoints(kps, 10.0, keypoint_flip_map(names))
    # nose mirrored in place; the unlabelled right eye becomes the (still unlabelled) left eye;
    # the occluded left eye at x = 3.25 becomes the right eye at x = 6.75
    expected = torch.tensor([[[4.5, 2.0, 2.0], [0.0, 0.0, 0.0], [6.75, 1.0, 1.0]]])
    assert torch.equal(out, expected)
    assert torch.equal(flip_keypoints(out, 10.0, keypoint_flip_map(names)), kps)  # flipping twice: identity
    with pytest.raises(ValueError, match="flip_map"):
        flip_keypoints(kps, 10.0, [0, 1])


def test_check_keypoints_shapes() -> None:
    check_keypoints(torch.zeros(2, 17, 3), 2)
    with pytest.raises(ValueError, match=r"\(N, K, 3\)"):
        check_keypoints(torch.zeros(2, 17, 2))
    with pytest.raises(ValueError, match="float"):
        check_keypoints(torch.zeros(2, 17, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="3 rows"):
        check_keypoints(torch.zeros(3, 17, 3), 2)


def _instances(n: int, keypoints: bool) -> Instances:
    return Instances(torch.rand(n, 4) * 4, torch.rand(n), torch.arange(n), torch.zeros(n, 6, 8, dtype=torch.bool),
                     keypoints=torch.rand(n, 5, 3) if keypoints else None)


def test_instances_keypoints_follow_indexing_cat_and_crops() -> None:
    inst = _instances(4, keypoints=True)
    assert torch.equal(inst[1:3].keypoints, inst.keypoints[1:3])
    assert Instances.cat([inst, inst[:1]]).keypoints.shape == (5, 5, 3)
    with pytest.raises(ValueError, match="keypoints"):
        Instances.cat([inst, _instances(2, keypoints=False)])
    with pytest.raises(ValueError, match="keypoints has 3 rows"):
        Instances(inst.boxes, inst.scores, inst.labels, inst.masks, keypoints=torch.rand(3, 5, 3))
    assert _instances(2, keypoints=False).keypoints is None
    cropped = CroppedInstances.from_instances(inst, offset=(10, 20), image_size=(40, 50))
    shifted = inst.keypoints + torch.tensor([10.0, 20.0, 0.0])
    assert torch.equal(cropped.keypoints, shifted)
    assert torch.equal(cropped[[2]].keypoints, shifted[[2]])
    assert torch.equal(CroppedInstances.cat([cropped, cropped]).to_instances().keypoints, torch.cat([shifted] * 2))


def test_targets_keypoints_are_optional_and_checked() -> None:
    boxes, labels, masks = torch.rand(2, 4), torch.zeros(2, dtype=torch.int64), torch.zeros(2, 4, 4, dtype=torch.bool)
    assert Targets(boxes, labels, masks).keypoints is None
    gt = Targets(boxes, labels, masks, keypoints=torch.zeros(2, 17, 3))
    assert gt.to("cpu").keypoints.shape == (2, 17, 3)
    with pytest.raises(ValueError, match="keypoints has 1 rows"):
        Targets(boxes, labels, masks, keypoints=torch.zeros(1, 17, 3))
