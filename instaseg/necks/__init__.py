"""instaseg.necks: feature pyramids."""

from instaseg.necks.fpn import FPN, rcnn_fpn, yolact_fpn

__all__ = ["FPN", "rcnn_fpn", "yolact_fpn"]
