"""The typed result every detector returns: one ``Instances`` per image."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from instaseg.structures.keypoints import check_keypoints
from instaseg.structures.mask_crops import MaskCrops

__all__ = ["CroppedInstances", "Instances", "Targets"]


@dataclass
class Instances:
    """Detections of one image, in the coordinates of that image (original size, before resizing).

    Every field has the same first dimension ``N`` (the number of detections).
    """

    boxes: Tensor  # (N, 4) float xyxy, absolute pixels, continuous coordinates
    scores: Tensor  # (N,) float, class confidence (box results use this score)
    labels: Tensor  # (N,) int64 in [0, num_classes)
    masks: Tensor | None  # (N, H, W) bool, H x W the image size; None from a model without a mask branch
    mask_scores: Tensor | None = None  # (N,) float; MS R-CNN / YOLACT++ mask score, else None
    keypoints: Tensor | None = None  # (N, K, 3) float (x, y, score), image pixels; keypoint models only

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.dim() != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4), got {tuple(self.boxes.shape)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"{f.name} has {value.shape[0]} rows but boxes has {n}")
        if self.masks is not None and self.masks.dim() != 3:
            raise ValueError(f"masks must be (N, H, W), got {tuple(self.masks.shape)}")
        if self.keypoints is not None:
            check_keypoints(self.keypoints, n)

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image the masks cover (detections without masks do not carry it)."""
        if self.masks is None:
            raise ValueError("these detections have no masks (a model without a mask branch), so no image size")
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def __getitem__(self, index: Tensor | slice | int) -> "Instances":
        """Select detections by a bool mask, an index tensor, a slice or an int."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return Instances(
            **{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
               for f in fields(self)}
        )

    def to(self, device: torch.device | str) -> "Instances":
        return replace(
            self,
            **{f.name: getattr(self, f.name).to(device)
               for f in fields(self) if getattr(self, f.name) is not None},
        )

    @classmethod
    def empty(cls, image_size: tuple[int, int], device: torch.device | str = "cpu") -> "Instances":
        """No detections on an image of ``image_size = (H, W)``."""
        h, w = image_size
        return cls(
            boxes=torch.zeros(0, 4, device=device),
            scores=torch.zeros(0, device=device),
            labels=torch.zeros(0, dtype=torch.int64, device=device),
            masks=torch.zeros(0, h, w, dtype=torch.bool, device=device),
        )

    @staticmethod
    def cat(items: list["Instances"]) -> "Instances":
        """Concatenate detections of the same image."""
        if not items:
            raise ValueError("Instances.cat needs at least one item")
        return Instances(
            boxes=torch.cat([it.boxes for it in items]),
            scores=torch.cat([it.scores for it in items]),
            labels=torch.cat([it.labels for it in items]),
            masks=_cat_optional("Instances", "masks", [it.masks for it in items]),
            mask_scores=_cat_optional("Instances", "mask_scores", [it.mask_scores for it in items]),
            keypoints=_cat_optional("Instances", "keypoints", [it.keypoints for it in items]),
        )


def _cat_optional(kind: str, name: str, values: list[Tensor | None]) -> Tensor | None:
    """``torch.cat`` of an optional field: None when every item lacks it, an error when only some do."""
    present = [v is not None for v in values]
    if any(present) and not all(present):
        raise ValueError(f"cannot concatenate {kind} with and without {name}")
    return torch.cat(values) if all(present) else None  # type: ignore[arg-type]


@dataclass
class CroppedInstances:
    """Detections of one (large) image whose masks are kept as crops, not as full-image masks.

    The result of sliced inference: the same fields as :class:`Instances` in the same image frame,
    but ``masks`` is a :class:`MaskCrops` (each mask inside its own window), so memory grows with
    the objects' areas rather than ``N * H * W``. ``to_instances()`` makes the full masks.
    """

    boxes: Tensor  # (N, 4) float xyxy, absolute pixels of the whole image
    scores: Tensor  # (N,) float
    labels: Tensor  # (N,) int64 in [0, num_classes)
    masks: MaskCrops  # N crops of an (H, W) image
    mask_scores: Tensor | None = None  # (N,) float or None, as in Instances
    keypoints: Tensor | None = None  # (N, K, 3) float (x, y, score) in the whole image, or None

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.dim() != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4), got {tuple(self.boxes.shape)}")
        for name, count in (("scores", self.scores.shape[0]), ("labels", self.labels.shape[0]),
                            ("masks", len(self.masks)),
                            ("mask_scores", n if self.mask_scores is None else self.mask_scores.shape[0])):
            if count != n:
                raise ValueError(f"{name} has {count} rows but boxes has {n}")
        if self.keypoints is not None:
            check_keypoints(self.keypoints, n)

    def __len__(self) -> int:
        return self.boxes.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return self.masks.image_size

    def __getitem__(self, index: Tensor | slice | list[int]) -> "CroppedInstances":
        """Select detections by a bool mask, an index tensor or list, or a slice."""
        picked = torch.arange(len(self))[index].reshape(-1)
        return CroppedInstances(self.boxes[picked], self.scores[picked], self.labels[picked], self.masks[picked],
                                None if self.mask_scores is None else self.mask_scores[picked],
                                None if self.keypoints is None else self.keypoints[picked])

    def to(self, device: torch.device | str) -> "CroppedInstances":
        return CroppedInstances(self.boxes.to(device), self.scores.to(device), self.labels.to(device),
                                self.masks.to(device),
                                None if self.mask_scores is None else self.mask_scores.to(device),
                                None if self.keypoints is None else self.keypoints.to(device))

    def to_instances(self) -> Instances:
        """The same detections with full ``(N, H, W)`` masks (``N * H * W`` bytes)."""
        return Instances(self.boxes, self.scores, self.labels, self.masks.to_full(), self.mask_scores,
                         self.keypoints)

    @classmethod
    def from_instances(cls, instances: Instances, offset: tuple[int, int] = (0, 0),
                       image_size: tuple[int, int] | None = None) -> "CroppedInstances":
        """Detections of a region whose top-left pixel is ``offset = (x, y)`` in an ``image_size`` image.

        Boxes and keypoints are shifted by the offset; each mask is cut to the window of its True pixels.
        """
        shift = torch.tensor([offset[0], offset[1], offset[0], offset[1]], dtype=instances.boxes.dtype,
                             device=instances.boxes.device)
        keypoints = instances.keypoints
        if keypoints is not None:  # (x, y) move with the window; the score stays
            keypoints = keypoints + torch.cat([shift[:2], shift.new_zeros(1)]).to(keypoints.dtype)
        return cls(instances.boxes + shift, instances.scores, instances.labels,
                   MaskCrops.from_masks(instances.masks, offset, image_size), instances.mask_scores, keypoints)

    @classmethod
    def empty(cls, image_size: tuple[int, int], device: torch.device | str = "cpu") -> "CroppedInstances":
        full = Instances.empty((0, 0), device)
        return cls(full.boxes, full.scores, full.labels, MaskCrops.empty(image_size, device))

    @staticmethod
    def cat(items: list["CroppedInstances"]) -> "CroppedInstances":
        """Concatenate detections of the same image."""
        if not items:
            raise ValueError("CroppedInstances.cat needs at least one item")
        return CroppedInstances(
            boxes=torch.cat([it.boxes for it in items]),
            scores=torch.cat([it.scores for it in items]),
            labels=torch.cat([it.labels for it in items]),
            masks=MaskCrops.cat([it.masks for it in items]),
            mask_scores=_cat_optional("CroppedInstances", "mask_scores", [it.mask_scores for it in items]),
            keypoints=_cat_optional("CroppedInstances", "keypoints", [it.keypoints for it in items]),
        )


@dataclass
class Targets:
    """Ground truth of one image, in the frame of the image the model receives.

    ``boxes``/``labels``/``masks`` are the non-crowd instances. Crowd (``iscrowd=1``) regions are
    not instances: only their boxes come along, in ``crowd_boxes`` (empty by default). Mask R-CNN
    ignores them; YOLACT uses them to leave anchors mostly inside a crowd region out of the loss.
    """

    boxes: Tensor  # (G, 4) float xyxy, absolute pixels
    labels: Tensor  # (G,) int64 in [0, num_classes)
    masks: Tensor  # (G, H, W) bool
    crowd_boxes: Tensor = field(default_factory=lambda: torch.zeros(0, 4))  # (Gc, 4) float xyxy
    # (G, K, 3) float (x, y, visibility in {0, 1, 2}), image pixels (instaseg.structures.keypoints); or None
    keypoints: Tensor | None = None

    def __post_init__(self) -> None:
        g = self.boxes.shape[0]
        if self.labels.shape[0] != g or self.masks.shape[0] != g:
            raise ValueError(
                f"Targets need equal lengths, got boxes {g}, labels {self.labels.shape[0]}, masks {self.masks.shape[0]}"
            )
        if self.keypoints is not None:
            check_keypoints(self.keypoints, g)
        if self.crowd_boxes.dim() != 2 or self.crowd_boxes.shape[1] != 4:
            raise ValueError(f"crowd_boxes must be (Gc, 4), got {tuple(self.crowd_boxes.shape)}")
        if self.crowd_boxes.numel() == 0:  # the default: on the boxes' device, in their dtype
            self.crowd_boxes = self.crowd_boxes.to(self.boxes)

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def to(self, device: torch.device | str) -> "Targets":
        return Targets(self.boxes.to(device), self.labels.to(device), self.masks.to(device),
                       self.crowd_boxes.to(device), None if self.keypoints is None else self.keypoints.to(device))
