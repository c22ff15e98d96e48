"""Overlays of masks, boxes, labels and scores; the run folder's charts are in ``instaseg.viz.plots``."""

from instaseg.viz.overlay import (add_title, class_colours, draw_instances, instance_colours, plan_labels, side_by_side,
                                  tile_pictures)

__all__ = ["add_title", "class_colours", "draw_instances", "instance_colours", "plan_labels", "side_by_side",
           "tile_pictures"]
