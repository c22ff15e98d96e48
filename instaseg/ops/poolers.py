"""Multi-level RoI pooling over an FPN: each RoI is pooled from the level that matches its size.

The level rule is Eq. 1 of the FPN paper (Lin et al. 2017), as torchvision and Detectron2 apply it:
``k = floor(k0 + log2(sqrt(w * h) / 224))`` with canonical level ``k0 = 4`` (the ImageNet-size RoI,
224 px, maps to P4), clamped to the available levels. Level ``k`` has stride ``2**k``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from instaseg.ops._utils import convert_boxes_to_roi_format, pair
from instaseg.ops.roi_align import roi_align
from instaseg.ops.roi_pool import roi_pool
from instaseg.structures.boxes import box_area

__all__ = ["assign_fpn_levels", "infer_scales", "multiscale_roi_align", "MultiScaleRoIAlign"]

_METHODS = ("align", "pool")


def assign_fpn_levels(
    boxes: list[Tensor] | Tensor,
    min_level: int,
    max_level: int,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """FPN level of each box, as an index into the pyramid: ``(K,)`` int64 in ``[0, max - min]``.

    Args:
        boxes: ``(K, 4)`` xyxy image-pixel boxes, or a list of per-image ``(K_i, 4)`` tensors
            (concatenated in order).
        min_level, max_level: the pyramid's finest and coarsest level (P2..P5 -> 2, 5).
        canonical_scale, canonical_level: a ``canonical_scale``-sided box maps to that level.
        eps: added before ``floor`` so that exact powers of two are not pushed down a level by
            rounding error (torchvision uses 1e-6 too).

    Degenerate boxes (area 0) go to ``min_level``.
    """
    if isinstance(boxes, (list, tuple)):
        boxes = torch.cat(list(boxes), dim=0) if len(boxes) > 0 else torch.zeros((0, 4))
    area = box_area(boxes)
    # At least float32: a half-precision log2 could move boxes near a threshold to the wrong level.
    float_dtype = area.dtype if area.is_floating_point() else torch.float32
    area = area.to(torch.promote_types(float_dtype, torch.float32))
    levels = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_scale) + eps)
    levels = levels.clamp(min=min_level, max=max_level)  # log2(0) = -inf clamps to min_level
    return levels.to(torch.int64) - min_level


def multiscale_roi_align(
    features: list[Tensor],
    rois: Tensor,
    scales: list[float],
    output_size: int | tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    canonical_scale: float = 224,
    canonical_level: int = 4,
    method: str = "align",
) -> Tensor:
    """Pool every RoI from its FPN level.

    Args:
        features: per-level maps ``(N, C, H_l, W_l)``, finest first (e.g. P2..P5).
        rois: ``(K, 5)`` rows ``[batch_index, x1, y1, x2, y2]`` in image pixels.
        scales: ``spatial_scale`` of each level (``1 / stride``, e.g. ``[1/4, 1/8, 1/16, 1/32]``);
            level numbers are ``log2(1 / scale)``.
        output_size, sampling_ratio, aligned: as in :func:`roi_align`.
        canonical_scale, canonical_level: the level rule of :func:`assign_fpn_levels`.
        method: ``"align"`` (RoIAlign) or ``"pool"`` (RoIPool, for the Mask R-CNN ablation; ignores
            ``sampling_ratio`` and ``aligned``).

    Returns:
        ``(K, C, oh, ow)``, in the order of ``rois``.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if len(features) != len(scales) or len(features) == 0:
        raise ValueError(f"need one scale per feature level, got {len(features)} and {len(scales)}")
    out_h, out_w = pair(output_size)

    def pool(feature: Tensor, level_rois: Tensor, scale: float) -> Tensor:
        if method == "pool":
            return roi_pool(feature, level_rois, (out_h, out_w), scale)
        return roi_align(feature, level_rois, (out_h, out_w), scale, sampling_ratio, aligned)

    # A traced graph (torch.export) has no branch on the RoI counts, which are symbolic there.
    traced = torch.compiler.is_exporting()
    if len(features) == 1 or (not traced and rois.shape[0] == 0):
        return pool(features[0], rois, scales[0])
    min_level = round(-math.log2(scales[0]))
    max_level = round(-math.log2(scales[-1]))
    levels = assign_fpn_levels(
        rois[:, 1:], min_level, max_level, canonical_scale, canonical_level
    )
    pieces, piece_index = [], []
    for level, (feature, scale) in enumerate(zip(features, scales)):
        index = torch.nonzero(levels == level).squeeze(1)
        if traced or index.numel() > 0:
            pieces.append(pool(feature, rois[index], scale))
            piece_index.append(index)
    order = torch.cat(piece_index)
    if traced:  # position of RoI k among the concatenated pieces
        return torch.cat(pieces).index_select(0, torch.argsort(order))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    merged = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
    return merged.index_select(0, inverse)


class MultiScaleRoIAlign(nn.Module):
    """torchvision's ``MultiScaleRoIAlign``: FPN RoIAlign with level scales inferred at first call.

    Each level's scale is ``2 ** round(log2(feature_size / image_size))``, measured against the
    largest image of the batch (the padded batch size), as torchvision does. ``aligned`` defaults to
    ``False`` like torchvision (what its trained weights expect); ``aligned`` and ``method`` are
    keyword-only extensions.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int] | list[int],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        aligned: bool = False,
        method: str = "align",
    ) -> None:
        super().__init__()
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
        self.featmap_names = list(featmap_names)
        self.output_size = pair(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.aligned = aligned
        self.method = method
        self.scales: list[float] | None = None

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """``x``: name -> ``(N, C, H_l, W_l)``; ``boxes``: per-image ``(K_i, 4)`` xyxy in image
        pixels; ``image_shapes``: per-image ``(height, width)`` -> ``(sum K_i, C, oh, ow)``."""
        features = [x[name] for name in self.featmap_names]
        self.scales = infer_scales(features, image_shapes)
        rois = convert_boxes_to_roi_format(boxes).to(features[0].device)
        return multiscale_roi_align(
            features, rois, self.scales, self.output_size, self.sampling_ratio, self.aligned,
            self.canonical_scale, self.canonical_level, self.method,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(featmap_names={self.featmap_names}, "
            f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned}, method={self.method!r})"
        )


def infer_scales(features: list[Tensor], image_shapes: list[tuple[int, int]]) -> list[float]:
    """Per-level ``spatial_scale``: ``2 ** round(log2(H_l / max image height))``, as torchvision."""
    max_height = max(int(shape[0]) for shape in image_shapes)
    return [2.0 ** round(math.log2(f.shape[-2] / max_height)) for f in features]
