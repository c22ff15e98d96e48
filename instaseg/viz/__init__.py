"""Overlays of masks, boxes, labels and scores."""

from instaseg.viz.overlay import draw_instances, instance_colours, side_by_side

__all__ = ["draw_instances", "instance_colours", "side_by_side"]
