"""Keypoints: ``(N, K, 3)`` float tensors of ``(x, y, visibility)`` per instance and keypoint.

Frame: absolute pixels of the image, continuous like boxes (pixel column ``i`` covers ``[i, i + 1)``,
its centre is ``i + 0.5``). COCO stores keypoints as integer pixel indices, so a loader adds 0.5
when it reads them (Detectron2's ``load_coco_json`` does the same); the RoI discretisation in
``instaseg.targets.keypoints`` and the decoding in ``instaseg.ops.keypoints`` rely on this frame.

Visibility is COCO's: 0 not labelled (then ``x = y = 0``), 1 labelled but occluded, 2 labelled and
visible. Training uses every labelled keypoint (``v > 0``), as Detectron2 and torchvision do.

Predicted keypoints (``Instances.keypoints``) have the same shape with a score in place of the
visibility.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["COCO_PERSON_KEYPOINT_NAMES", "COCO_PERSON_SKELETON", "check_keypoints", "flip_keypoints",
           "keypoint_flip_map"]

# The 17 COCO person keypoints, in the dataset's order.
COCO_PERSON_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye", "right_eye",
    "left_ear", "right_ear",
    "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow",
    "left_wrist", "right_wrist",
    "left_hip", "right_hip",
    "left_knee", "right_knee",
    "left_ankle", "right_ankle",
)  # fmt: skip

# COCO person_keypoints json's "skeleton" (1-based there), 0-based pairs of the names above: the 19 limbs.
COCO_PERSON_SKELETON: tuple[tuple[int, int], ...] = tuple((a - 1, b - 1) for a, b in (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
))

_SIDES = ("left_", "right_")


def check_keypoints(keypoints: Tensor, num_instances: int | None = None, name: str = "keypoints") -> None:
    """Raise ``ValueError`` unless ``keypoints`` is a floating ``(N, K, 3)`` tensor (with ``N == num_instances``)."""
    if keypoints.dim() != 3 or keypoints.shape[2] != 3:
        raise ValueError(f"{name} must be (N, K, 3), got {tuple(keypoints.shape)}")
    if not keypoints.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got {keypoints.dtype}")
    if num_instances is not None and keypoints.shape[0] != num_instances:
        raise ValueError(f"{name} has {keypoints.shape[0]} rows but boxes has {num_instances}")


def keypoint_flip_map(names: Sequence[str]) -> list[int]:
    """The permutation a horizontal flip applies to keypoints named ``names`` (K names).

    ``flip_map[k]`` is the index of the keypoint that ``k`` becomes: ``left_<part>`` and
    ``right_<part>`` swap, every other name maps to itself. A ``left_`` name whose ``right_`` twin
    is missing (or the reverse), or a repeated name, raises ``ValueError``: flipping it would
    silently teach the wrong side.
    """
    index = {name: k for k, name in enumerate(names)}
    if len(index) != len(names):
        raise ValueError(f"keypoint names repeat: {list(names)}")
    flip_map = []
    for name in names:
        twin = name
        for side, other in (_SIDES, _SIDES[::-1]):
            if name.startswith(side):
                twin = other + name[len(side):]
        if twin not in index:
            raise ValueError(f"keypoint {name!r} has no {twin!r} to swap with on a horizontal flip")
        flip_map.append(index[twin])
    return flip_map


def flip_keypoints(keypoints: Tensor, image_width: float, flip_map: Sequence[int] | Tensor) -> Tensor:
    """Mirror ``keypoints (N, K, 3)`` in an image ``image_width`` pixels wide -> ``(N, K, 3)``.

    ``x -> image_width - x`` (continuous coordinates, as boxes flip), then keypoint ``k`` of the
    result is the mirrored keypoint ``flip_map[k]`` (a left eye becomes the right eye; see
    :func:`keypoint_flip_map`). Unlabelled keypoints (``v == 0``) stay ``(0, 0, 0)`` (COCO's rule,
    kept by Detectron2's transforms).
    """
    check_keypoints(keypoints)
    order = torch.as_tensor(flip_map, dtype=torch.int64, device=keypoints.device)
    if order.shape != (keypoints.shape[1],):
        raise ValueError(f"flip_map must have K = {keypoints.shape[1]} entries, got {tuple(order.shape)}")
    labelled = keypoints[..., 2:3] > 0
    mirrored = torch.cat([image_width - keypoints[..., :1], keypoints[..., 1:]], dim=-1)
    mirrored = torch.where(labelled, mirrored, torch.zeros_like(mirrored))
    return mirrored[:, order]
