"""Helpers shared by the RoI ops: the two accepted box formats and their checks.

RoI ops accept boxes exactly as torchvision.ops does:

- a ``(K, 5)`` tensor of rows ``[batch_index, x1, y1, x2, y2]``, or
- a list (or tuple) of ``(K_i, 4)`` xyxy tensors, one per image of the batch.

Coordinates are absolute pixels of the *input image* (the op multiplies them by ``spatial_scale``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "check_roi_boxes_shape",
    "convert_boxes_to_roi_format",
    "group_rois",
    "pair",
    "reassemble_bins",
]


def check_roi_boxes_shape(boxes: Tensor | Sequence[Tensor]) -> None:
    """Raise ``ValueError`` unless ``boxes`` is a ``(K, 5)`` tensor or a list of ``(K_i, 4)``."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                "boxes must be a (K, 5) tensor [batch_index, x1, y1, x2, y2], "
                f"got shape {tuple(boxes.shape)}"
            )
        return
    if isinstance(boxes, (list, tuple)):
        for i, per_image in enumerate(boxes):
            if not isinstance(per_image, Tensor) or per_image.dim() != 2 or per_image.shape[1] != 4:
                shape = tuple(per_image.shape) if isinstance(per_image, Tensor) else type(per_image)
                raise ValueError(
                    f"boxes[{i}] must be a (K_i, 4) xyxy tensor (one per image), got {shape}"
                )
        return
    raise ValueError(
        "boxes must be a (K, 5) tensor or a list of (K_i, 4) tensors, "
        f"got {type(boxes).__name__}"
    )


def convert_boxes_to_roi_format(boxes: Sequence[Tensor]) -> Tensor:
    """Boxes ``[(K_i, 4), ...]`` -> ``(sum K_i, 5)`` rows ``[batch_index, x1, y1, x2, y2]``.

    The batch index is the position of the tensor in the list, stored in the boxes' dtype (as
    torchvision does). An empty list gives a ``(0, 5)`` float tensor.
    """
    if len(boxes) == 0:
        return torch.zeros((0, 5))
    concat = torch.cat(list(boxes), dim=0) if len(boxes) > 1 else boxes[0]
    batch_index = torch.cat(
        [torch.full_like(per_image[:, :1], i) for i, per_image in enumerate(boxes)], dim=0
    )
    return torch.cat([batch_index, concat], dim=1)


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``output_size`` as ``(height, width)``: an int means a square, a pair is taken as given."""
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return size[0], size[0]
    if len(size) != 2:
        raise ValueError(f"output_size must be an int or (height, width), got {size}")
    return size[0], size[1]


def group_rois(keys: Tensor) -> list[tuple[tuple[int, int], Tensor]]:
    """Group RoI indices by equal rows of ``keys (K, 2)``, non-negative int64.

    Returns ``[((key0, key1), (k_i,) indices), ...]``. Used to batch RoIs that share a static shape
    (sampling lattice, pooling window) into one vectorised call.
    """
    num_rois = keys.shape[0]
    first, second = keys[:, 0], keys[:, 1]
    # One scalar key per row: 1-D unique is a plain sort (unique over rows is far slower).
    stride = int(second.max()) + 1 if num_rois > 0 else 1
    unique_keys, inverse = torch.unique(first * stride + second, return_inverse=True)
    if unique_keys.numel() <= 1:
        key = (int(first[0]), int(second[0])) if num_rois > 0 else (0, 0)
        return [(key, torch.arange(num_rois, device=keys.device))]
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=unique_keys.numel()).tolist()
    return [
        ((int(k) // stride, int(k) % stride), group)
        for k, group in zip(unique_keys.tolist(), order.split(counts))
    ]


def reassemble_bins(
    pieces: list[Tensor], piece_index: list[Tensor], shape: tuple[int, int, int, int]
) -> Tensor:
    """Per-piece channels-last bins ``(k_i * oh * ow, C)`` -> ``(K, C, oh, ow)`` in RoI order.

    ``piece_index[i]`` holds the RoI indices of ``pieces[i]``; ``shape = (K, oh, ow, C)``. The
    result is contiguous (NCHW), as torchvision's ops return it.
    """
    num_rois, out_h, out_w, channels = shape
    merged = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
    merged = merged.view(num_rois, out_h, out_w, channels).permute(0, 3, 1, 2)
    order = piece_index[0] if len(piece_index) == 1 else torch.cat(piece_index)
    identity = torch.arange(num_rois, device=order.device)
    if torch.equal(order, identity):
        return merged.contiguous()
    inverse = torch.empty_like(order)
    inverse[order] = identity
    return merged.index_select(0, inverse)  # gathers and makes contiguous in one copy
