"""Detection ops in pure PyTorch, with torchvision.ops' names, signatures and defaults.

``from instaseg.ops import roi_align, nms`` is a drop-in for ``from torchvision.ops import ...``.
Where a working compiled torchvision is present, the ops hand their work to it at call time
(``with fast_kernels(False):`` forces the pure-PyTorch paths in a block, ``INSTASEG_FAST_KERNELS=0``
for the whole process, read once at import). Beyond torchvision: ``soft_nms``,
``fast_nms`` (YOLACT), ``multiscale_roi_align`` / ``assign_fpn_levels``, the mask paste-back and its inverse, the
mask target crop ``crop_and_resize``.
"""

from instaseg.ops._dispatch import fast_kernels
from instaseg.ops.crop_and_resize import crop_and_resize
from instaseg.ops.deform_conv import DeformConv2d, deform_conv2d
from instaseg.ops.fast_nms import fast_nms
from instaseg.ops.nms import batched_nms, nms
from instaseg.ops.paste_masks import paste_masks_in_image, paste_masks_torchvision_style
from instaseg.ops.poolers import MultiScaleRoIAlign, assign_fpn_levels, multiscale_roi_align
from instaseg.ops.roi_align import RoIAlign, roi_align
from instaseg.ops.roi_pool import RoIPool, roi_pool
from instaseg.ops.soft_nms import batched_soft_nms, soft_nms
from instaseg.structures.boxes import box_area, box_iou, clip_boxes_to_image, remove_small_boxes

__all__ = [
    "DeformConv2d",
    "MultiScaleRoIAlign",
    "RoIAlign",
    "RoIPool",
    "assign_fpn_levels",
    "batched_nms",
    "batched_soft_nms",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "crop_and_resize",
    "deform_conv2d",
    "fast_kernels",
    "fast_nms",
    "multiscale_roi_align",
    "nms",
    "paste_masks_in_image",
    "paste_masks_torchvision_style",
    "remove_small_boxes",
    "roi_align",
    "roi_pool",
    "soft_nms",
]
