"""Boxes, masks, typed results and image batches."""

from instaseg.structures.boxes import (
    BoxCoder,
    box_area,
    box_ioa,
    box_iou,
    clip_boxes_to_image,
    nonempty,
    remove_small_boxes,
)
from instaseg.structures.image_list import ImageList, batch_images, resize_image, resized_shape
from instaseg.structures.instances import Instances, Targets

__all__ = [
    "BoxCoder",
    "ImageList",
    "Instances",
    "Targets",
    "batch_images",
    "box_area",
    "box_ioa",
    "box_iou",
    "clip_boxes_to_image",
    "nonempty",
    "remove_small_boxes",
    "resize_image",
    "resized_shape",
]
