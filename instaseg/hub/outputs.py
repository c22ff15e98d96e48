"""What a model's detections hold, read from its config: masks or not, keypoints, and how to show them.

The front ends (``instaseg predict``, ``serve``, the demo) draw and write what a model predicts
without asking it: a Keypoint R-CNN without a mask branch gives ``Instances.masks = None`` and
``keypoints (N, K, 3)`` whose third value is a score whose scale depends on
``model.keypoint_head.score`` (:data:`KEYPOINT_SHOW_THRESHOLDS`).
"""

from __future__ import annotations

from typing import Any

from instaseg.config.schema import Config
from instaseg.data.coco_keypoints import KeypointSchema
from instaseg.engine.checkpoint import checkpoint_keypoints

__all__ = ["KEYPOINT_SHOW_THRESHOLDS", "keypoint_schema", "keypoint_threshold", "num_keypoints", "predicts_masks"]

# A predicted joint is drawn when its score exceeds this (its limbs when both ends are), by
# model.keypoint_head.score. "logit": the heatmap's peak logit, unbounded; 0 keeps the joints whose
# peak stands above the map's zero level and hides the ones the head barely located (occluded or
# outside the object). "detectron2": its softmax-style probability; 0.05 is Detectron2's
# Visualizer's _KEYPOINT_THRESHOLD.
KEYPOINT_SHOW_THRESHOLDS: dict[str, float] = {"logit": 0.0, "detectron2": 0.05}


def predicts_masks(config: Config) -> bool:
    """False for an R-CNN without a mask branch (``model.mask_head`` none: boxes + keypoints)."""
    return getattr(config.model, "mask_head", True) is not None  # YOLACT has no such field: always masks


def num_keypoints(config: Config) -> int:
    """K of the model's keypoint head; 0 for a model without one."""
    head = getattr(config.model, "keypoint_head", None)
    return 0 if head is None else int(head.num_keypoints)


def keypoint_threshold(config: Config) -> float:
    """The score above which a predicted joint is drawn, for the config's keypoint score kind
    (:data:`KEYPOINT_SHOW_THRESHOLDS`); 0 for a model without keypoints."""
    head = getattr(config.model, "keypoint_head", None)
    return 0.0 if head is None else KEYPOINT_SHOW_THRESHOLDS[head.score]


def keypoint_schema(payload: dict[str, Any], config: Config) -> KeypointSchema | None:
    """The keypoint names and skeleton of a checkpoint's model (``payload`` as ``load_checkpoint``
    returns it), None for a model without keypoints (the fallbacks: ``checkpoint_keypoints``)."""
    return checkpoint_keypoints(payload, num_keypoints(config))
