"""Anchor boxes ("priors") for Mask R-CNN's RPN and for YOLACT.

Every anchor is an absolute-pixel ``xyxy`` box in the (padded) input image frame, continuous
coordinates (see ``instaseg.structures.boxes``). Anchors are laid out **location-major**: all the
anchors of feature location ``(y=0, x=0)`` first, then ``(0, 1)``, ... with ``x`` fastest, and inside
a location in the order documented per generator. A head's ``(N, A * k, H, W)`` output permuted to
``(N, H, W, A, k)`` and flattened lines up with this order, which is why the order is part of the
weight format: imported RPN / YOLACT heads are only right if it matches the peer that trained them.

Aspect ratios: the R-CNN generator uses ``ratio = height / width`` (torchvision, Detectron2), while
``yolact_anchors`` follows YOLACT, where ``ratio = width / height``. Both are documented below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "AnchorGenerator",
    "grid_anchors",
    "yolact_anchors",
    "YOLACT_ASPECT_RATIOS",
    "YOLACT_SCALES",
    "YOLACT_PLUS_SCALES",
]

_CONVENTIONS = ("torchvision", "detectron2")
_STRIDE_RULES = ("fixed", "padded_size")
_MAX_CACHE_ENTRIES = 16  # a few input sizes (train, eval, export) per process; bounded so it cannot grow


def _cell_anchors_torchvision(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """torchvision order (ratio-major, size-minor) and rounding; values computed in float32.

    torchvision's ``AnchorGenerator.generate_anchors`` builds ``ws = (w_ratios[:, None] *
    scales[None, :]).view(-1)`` in float32 and ``.round()``s the half-extents, so we do the same
    arithmetic in float32 to round exactly the same numbers.
    """
    scales = torch.tensor(sizes, dtype=torch.float32)
    h_ratios = torch.sqrt(torch.tensor(ratios, dtype=torch.float32))
    w_ratios = 1.0 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round().to(torch.float64)


def _cell_anchors_detectron2(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """Detectron2 order (size-major, ratio-minor), no rounding; Python float64 like its generator."""
    rows = []
    for size in sizes:
        for ratio in ratios:
            # DefaultAnchorGenerator.generate_cell_anchors: w = sqrt(area / ratio), h = ratio * w.
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 4)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Grid arithmetic in half precision would lose whole pixels on large maps; do it in float32.
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def grid_anchors(
    cell_anchors: Tensor, size: tuple[int, int], stride: tuple[int, int], offset: float,
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
) -> Tensor:
    """One level's anchors: ``cell_anchors (A, 4)`` centred at every cell of a ``size = (H_l, W_l)``
    grid with ``stride = (stride_y, stride_x)`` -> ``(H_l * W_l * A, 4)`` xyxy, location-major
    (row ``y``, then column ``x``, then the cell anchors). The sides may be symbolic (a traced
    graph: the feature map's shape)."""
    height, width = size
    stride_y, stride_x = stride
    work = _compute_dtype(dtype)
    cell = cell_anchors.to(device=device, dtype=work)
    shifts_x = torch.arange(width, device=device, dtype=work) * stride_x + offset * stride_x
    shifts_y = torch.arange(height, device=device, dtype=work) * stride_y + offset * stride_y
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # x fastest when flat
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4).to(dtype)


class AnchorGenerator(nn.Module):
    """Multi-level anchors for an FPN RPN (one tuple of sizes and of ratios per feature level).

    Cell anchor for size ``s`` and ratio ``r = h / w``: ``w = s / sqrt(r)``, ``h = s * sqrt(r)``
    (area ``s**2``), centred at 0: ``(-w/2, -h/2, w/2, h/2)``. The anchor of location ``(y, x)`` at a
    level of stride ``S`` is the cell anchor shifted by ``(x * S + offset * S, y * S + offset * S)``.

    ``convention`` fixes the order of the ``A = len(sizes_l) * len(ratios_l)`` anchors of one
    location and the rounding, because imported RPN weights' channels depend on them:

    - ``"torchvision"``: ratio-major, size-minor (index ``ratio_i * len(sizes) + size_i``), and the
      cell anchors are rounded to integers (``.round()``, half to even) as torchvision does.
    - ``"detectron2"``: size-major, ratio-minor (index ``size_i * len(ratios) + ratio_i``), no
      rounding (Detectron2's ``DefaultAnchorGenerator``).

    With one size per level (the usual FPN set-up) the two orders coincide and only the rounding
    differs. torchvision's ``maskrcnn_resnet50_fpn`` uses sizes ``((32,), (64,), (128,), (256,),
    (512,))``, ratios ``(0.5, 1.0, 2.0)`` at every level and offset 0; Detectron2's Mask R-CNN FPN
    configs use the same sizes and ratios with ``OFFSET: 0.0``.

    ``stride_rule`` says where a level's grid step comes from:

    - ``"fixed"``: ``strides[l]`` on both axes (Detectron2);
    - ``"padded_size"``: ``padded_image_size // feature_size`` per axis (torchvision's
      ``AnchorGenerator.forward``), which needs ``image_size`` in :meth:`forward`. For inputs padded
      to a multiple of 32 this equals 4..32 on P2-P5, but P6 (P5 max-pooled with stride 2) has
      ``ceil(P5 / 2)`` cells, so an odd P5 gives P6 a step of 61 or 62, not 64 (an 800x1120 input:
      P5 25x35, P6 13x18, steps 61 and 62).

    The module has no parameters and no state-dict entries (peers' checkpoints have none either).
    """

    def __init__(
        self,
        sizes: tuple[tuple[float, ...], ...],
        aspect_ratios: tuple[tuple[float, ...], ...],
        strides: tuple[int, ...],
        offset: float = 0.0,
        convention: str = "torchvision",
        stride_rule: str = "fixed",
    ) -> None:
        super().__init__()
        if not len(sizes) == len(aspect_ratios) == len(strides):
            raise ValueError(
                f"need one entry per level: {len(sizes)} sizes, {len(aspect_ratios)} ratio tuples, "
                f"{len(strides)} strides"
            )
        if convention not in _CONVENTIONS:
            raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}")
        if stride_rule not in _STRIDE_RULES:
            raise ValueError(f"stride_rule must be one of {_STRIDE_RULES}, got {stride_rule!r}")
        if any(len(s) == 0 for s in sizes) or any(len(r) == 0 for r in aspect_ratios):
            raise ValueError("every level needs at least one size and one aspect ratio")
        if any(r <= 0 for level in aspect_ratios for r in level):
            raise ValueError("aspect ratios must be positive")
        self.sizes = tuple(tuple(float(s) for s in level) for level in sizes)
        self.aspect_ratios = tuple(tuple(float(r) for r in level) for level in aspect_ratios)
        self.strides = tuple(int(s) for s in strides)
        self.offset = float(offset)
        self.convention = convention
        self.stride_rule = stride_rule
        make_cell = _cell_anchors_torchvision if convention == "torchvision" else _cell_anchors_detectron2
        # Plain float64 CPU tensors, not buffers: cast to the caller's device/dtype on use.
        self.cell_anchors: list[Tensor] = [
            make_cell(s, r) for s, r in zip(self.sizes, self.aspect_ratios)
        ]
        self._cache: dict[tuple, list[Tensor]] = {}

    @property
    def num_levels(self) -> int:
        """Number of feature levels."""
        return len(self.strides)

    def num_anchors_per_location(self) -> list[int]:
        """``A_l = len(sizes[l]) * len(aspect_ratios[l])`` for every level."""
        return [len(c) for c in self.cell_anchors]

    def level_strides(
        self, feature_sizes: list[tuple[int, int]], image_size: tuple[int, int] | None = None
    ) -> list[tuple[int, int]]:
        """``(stride_y, stride_x)`` of every level under this generator's ``stride_rule``."""
        if self.stride_rule == "fixed":
            return [(s, s) for s in self.strides]
        if image_size is None:
            raise ValueError("stride_rule='padded_size' needs the padded image size")
        return [(int(image_size[0]) // h, int(image_size[1]) // w) for h, w in feature_sizes]

    def forward(
        self,
        feature_sizes: list[tuple[int, int]],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> list[Tensor]:
        """Anchors for feature maps of ``feature_sizes = [(H_l, W_l), ...]`` (one per level) of a
        padded batch of ``image_size = (H, W)`` (needed by ``stride_rule="padded_size"`` only).

        Returns a list with one ``(H_l * W_l * A_l, 4)`` xyxy tensor per level, in input-image
        pixels, location-major (row ``y``, then column ``x``, then the ``A_l`` cell anchors). All
        images of a batch share them (they share the padded size). Results are cached per
        ``(feature_sizes, strides, device, dtype)``; treat the returned tensors as read-only.
        """
        if len(feature_sizes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature sizes, got {len(feature_sizes)}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        if torch.compiler.is_exporting():  # symbolic sizes: neither cached nor made ints
            strides = self.level_strides(list(feature_sizes), image_size)
            return [grid_anchors(cell, size, stride, self.offset, device, dtype)
                    for cell, size, stride in zip(self.cell_anchors, feature_sizes, strides)]
        sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
        strides = tuple(self.level_strides(list(sizes), image_size))
        key = (sizes, strides, device, dtype)
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = [
                grid_anchors(cell, size, stride, self.offset, device, dtype)
                for cell, size, stride in zip(self.cell_anchors, sizes, strides)
            ]
            if len(self._cache) >= _MAX_CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = anchors
        return list(anchors)

    def extra_repr(self) -> str:
        return (
            f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}, strides={self.strides}, "
            f"offset={self.offset}, convention={self.convention!r}, stride_rule={self.stride_rule!r}"
        )


# YOLACT's anchors (dbolya/yolact data/config.py). Both configs use 'use_pixel_scales': True,
# 'preapply_sqrt': False and 'pred_aspect_ratios': [[[1, 1/2, 2]]] * 5 on P3-P7 of a 550x550 input.
YOLACT_ASPECT_RATIOS: tuple[float, ...] = (1.0, 0.5, 2.0)
# yolact_base_config: 'pred_scales': [[24], [48], [96], [192], [384]], 'use_square_anchors': True.
YOLACT_SCALES: tuple[tuple[float, ...], ...] = ((24.0,), (48.0,), (96.0,), (192.0,), (384.0,))
# yolact_plus_base_config: 3 scales per octave, [[i * 2 ** (j / 3.0) for j in range(3)] for i in
# [24, 48, 96, 192, 384]], 'use_square_anchors': False.
YOLACT_PLUS_SCALES: tuple[tuple[float, ...], ...] = tuple(
    tuple(base * 2.0 ** (j / 3.0) for j in range(3)) for base in (24.0, 48.0, 96.0, 192.0, 384.0)
)


def _yolact_cell_sizes(
    scales: Sequence[float], aspect_ratios: Sequence[float], square_anchors: bool
) -> list[tuple[float, float]]:
    sizes = []
    for scale in scales:  # scale-major, ratio-minor: YOLACT's `for scale in self.scales: for ar in ars`
        for ratio in aspect_ratios:
            w = scale * math.sqrt(ratio)  # YOLACT: ratio = w / h with 'preapply_sqrt': False
            h = w if square_anchors else scale / math.sqrt(ratio)
            sizes.append((w, h))
    return sizes


def yolact_anchors(
    feature_sizes: list[tuple[int, int]],
    image_size: int,
    scales: tuple[tuple[float, ...], ...],
    aspect_ratios: tuple[float, ...] = YOLACT_ASPECT_RATIOS,
    square_anchors: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """YOLACT / YOLACT++ priors as one ``(sum_l H_l * W_l * A_l, 4)`` xyxy tensor in input pixels.

    Follows ``PredictionModule.make_priors`` of dbolya/yolact with ``use_pixel_scales=True`` and
    ``preapply_sqrt=False`` (both YOLACT and YOLACT++ configs), converted from its relative
    ``(cx, cy, w, h)`` to absolute ``xyxy`` on a square ``image_size`` input (550 in the papers):

    - centre of location ``(y, x)`` on a ``(H_l, W_l)`` map: ``((x + 0.5) / W_l * image_size,
      (y + 0.5) / H_l * image_size)`` (so the grid spans the image even when ``image_size`` is not
      a multiple of the stride, e.g. 550 / 69);
    - for scale ``s`` (pixels) and ratio ``r = w / h``: ``w = s * sqrt(r)``, ``h = s / sqrt(r)``;
      with ``square_anchors=True`` (YOLACT v1 base weights' ``use_square_anchors``, kept in the
      reference "for backward compatibility with a bug") ``h = w`` instead: three square anchors
      of sides ``s``, ``s / sqrt(2)``, ``s * sqrt(2)``. Use ``square_anchors=True`` with
      ``YOLACT_SCALES`` for YOLACT v1 weights and ``False`` with ``YOLACT_PLUS_SCALES`` for YOLACT++.

    Order: levels concatenated; inside a level location-major (row ``y``, then column ``x``), and
    inside a location scale-major, ratio-minor, as the reference's loops ``for j, i in
    product(range(conv_h), range(conv_w))`` then ``for scale in scales: for ar in ars``.
    Anchors are not clipped to the image (the reference does not clip either).
    """
    if len(feature_sizes) != len(scales):
        raise ValueError(f"{len(feature_sizes)} feature sizes but {len(scales)} scale tuples")
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype if dtype is not None else torch.get_default_dtype()
    levels = []
    for (height, width), level_scales in zip(feature_sizes, scales):
        wh = torch.tensor(
            _yolact_cell_sizes(level_scales, aspect_ratios, square_anchors), dtype=torch.float64
        ).reshape(-1, 2)
        cx = (torch.arange(width, dtype=torch.float64) + 0.5) / width * image_size
        cy = (torch.arange(height, dtype=torch.float64) + 0.5) / height * image_size
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")
        centres = torch.stack((cx.reshape(-1), cy.reshape(-1)), dim=1)  # (H*W, 2), x fastest
        half = wh / 2
        boxes = torch.cat((centres[:, None, :] - half[None], centres[:, None, :] + half[None]), dim=2)
        levels.append(boxes.reshape(-1, 4))
    if not levels:
        return torch.zeros(0, 4, device=device, dtype=dtype)
    return torch.cat(levels).to(device=device, dtype=dtype)
