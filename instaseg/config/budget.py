"""The detection budget: every cap on how many objects one image can yield, read and set together.

A crowded image meets several caps on its way out of a model, each one a silent recall limit:

- Mask R-CNN: the RPN's proposals per FPN level before NMS (``model.rpn.pre_nms_topk_test``) and
  per image after it (``model.rpn.post_nms_topk_test``), then the detections per image
  (``model.inference.detections_per_image``);
- YOLACT: the candidates per class before Fast NMS (``model.nms_top_k``), then the detections per
  image;
- COCO evaluation: the largest ``maxDets`` (COCO's 100, raised to the dataset's most crowded
  image by :func:`coco_max_dets`).

:func:`with_max_detections` raises all of a model's caps at once so that ``N`` objects can come
out; :func:`crowding_warnings` says, naming the cap and the flag, when a dataset has images with
more instances than a cap lets through.

Training has caps of its own (Mask R-CNN): the RPN proposals kept per image, the RoIs the box head
samples and the positives the mask head trains on. A preset sized for sparse data (the tiny one:
300 proposals, 64 RoIs, 8 mask positives) learns crowded images slowly: on 200-300 objects per image
the tiny preset reached half the mask AP after 500 of 800 iterations (8.0 vs 17.1,
``benchmarks/results/crowded.md``). :func:`with_training_budget` raises them with the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from instaseg.config.schema import Config, MaskRCNNConfig
from instaseg.errors import ConfigError

__all__ = ["PROPOSALS_PER_DETECTION", "COCO_MAX_DETS", "coco_max_dets", "detection_caps", "detection_limit",
           "with_max_detections", "crowding_warnings", "training_caps", "with_training_budget"]

COCO_MAX_DETS = (1, 10, 100)

# The RPN keeps this many proposals per wanted detection: the box head's per-class NMS merges the
# proposals of one object, so N proposals would give fewer than N detections (the peers' default
# is 10: 1000 proposals for 100 detections).
PROPOSALS_PER_DETECTION = 2


def coco_max_dets(max_instances: int = 0, max_detections: int | None = None) -> tuple[int, int, int]:
    """COCO's maxDets ``(1, 10, 100)``, the largest raised to the most instances one image of the
    dataset has (COCO would count the rest as misses) and to ``max_detections`` when asked."""
    return (*COCO_MAX_DETS[:2], max(COCO_MAX_DETS[2], max_instances, max_detections or 0))


def detection_caps(config: Config) -> dict[str, int]:
    """``{config key: value}`` of each of the model's test-time caps on objects per image."""
    model = config.model
    caps = {"model.inference.detections_per_image": model.inference.detections_per_image}
    if isinstance(model, MaskRCNNConfig):
        caps["model.rpn.pre_nms_topk_test"] = model.rpn.pre_nms_topk_test
        caps["model.rpn.post_nms_topk_test"] = model.rpn.post_nms_topk_test
    else:
        caps["model.nms_top_k"] = model.nms_top_k
    return caps


def detection_limit(config: Config) -> int:
    """The most detections one image can yield: ``detections_per_image``, or fewer when the RPN
    keeps fewer proposals (each detection comes from one proposal)."""
    model = config.model
    limit = model.inference.detections_per_image
    if isinstance(model, MaskRCNNConfig):
        limit = min(limit, model.rpn.post_nms_topk_test)
    return limit


def with_max_detections(config: Config, count: int) -> Config:
    """``config`` with every cap raised (never lowered) so that ``count`` objects per image can come
    out: ``count`` detections per image, and for Mask R-CNN ``PROPOSALS_PER_DETECTION * count``
    proposals before and after the RPN's NMS; for YOLACT ``count`` candidates per class."""
    if count < 1:
        raise ConfigError(f"--max-detections must be a positive number, got {count}")
    model = config.model
    inference = replace(model.inference, detections_per_image=max(model.inference.detections_per_image, count))
    if isinstance(model, MaskRCNNConfig):
        proposals = PROPOSALS_PER_DETECTION * count
        rpn = replace(model.rpn, pre_nms_topk_test=max(model.rpn.pre_nms_topk_test, proposals),
                      post_nms_topk_test=max(model.rpn.post_nms_topk_test, proposals))
        model = replace(model, rpn=rpn, inference=inference)
    else:
        model = replace(model, nms_top_k=max(model.nms_top_k, count), inference=inference)
    return replace(config, model=model)


def crowding_warnings(max_instances: int, config: Config | None = None,
                      max_dets: Sequence[int] | None = None, where: str = "the dataset") -> list[str]:
    """One message per cap below ``max_instances`` (the most instances one image of ``where`` has):
    the model's (``config``) and COCO evaluation's largest ``max_dets``. Each names the cap, the
    count and the flag that raises it."""
    messages = []
    if config is not None:
        limit = detection_limit(config)
        if max_instances > limit:
            keys = ", ".join(f"{k}={v}" for k, v in detection_caps(config).items())
            messages.append(f"{where} has images with up to {max_instances} instances, but the model yields at most "
                            f"{limit} detections per image ({keys}): use --max-detections {max_instances} "
                            f"to raise every cap")
    if max_dets is not None and max_instances > max(max_dets):
        messages.append(f"{where} has images with up to {max_instances} instances, but COCO evaluation scores at "
                        f"most maxDets={max(max_dets)} detections per image: use --max-detections {max_instances}")
    return messages


# with_training_budget: proposals kept per ground-truth object in training, their ceiling, and the
# ceiling on the mask head's positives per image (each costs a mask head pass).
TRAIN_PROPOSALS_PER_INSTANCE = 3
MAX_TRAIN_PROPOSALS = 2000
MAX_MASK_POSITIVES = 64


def training_caps(config: Config) -> dict[str, int]:
    """``{config key: value}`` of each of a Mask R-CNN's training-time caps (empty for YOLACT)."""
    model = config.model
    if not isinstance(model, MaskRCNNConfig):
        return {}
    caps = {"model.rpn.pre_nms_topk_train": model.rpn.pre_nms_topk_train,
            "model.rpn.post_nms_topk_train": model.rpn.post_nms_topk_train,
            "model.box_head.batch_size_per_image": model.box_head.batch_size_per_image}
    if model.mask_head is not None:
        caps["model.mask_head.max_rois_per_image"] = model.mask_head.max_rois_per_image
    return caps


def with_training_budget(config: Config, max_instances: int) -> Config:
    """``config`` with Mask R-CNN's training caps raised (never lowered) for images of up to
    ``max_instances`` objects:

    - the mask head trains on up to ``min(max_instances // 4, 64)`` positives per image (a cap of 0,
      no cap, stays);
    - the box head samples enough RoIs that its positives can feed it: ``batch_size_per_image``
      at least that count over ``positive_fraction``;
    - the RPN keeps 3 proposals per object (in hundreds, at most 2000) after NMS, twice as many
      per level before it.

    For 310 objects: 64 mask positives, 256 RoIs, 1000 / 2000 proposals, the setting
    ``benchmarks/crowded.py`` measured. Sparse data (the built-in synthetic set: at most ~10 per
    image) changes nothing. YOLACT configs come back unchanged.
    """
    model = config.model
    if not isinstance(model, MaskRCNNConfig) or max_instances <= 0:
        return config
    mask_cap = 0 if model.mask_head is None else model.mask_head.max_rois_per_image
    if mask_cap > 0:
        mask_cap = max(mask_cap, min(max_instances // 4, MAX_MASK_POSITIVES))
    positives = mask_cap if mask_cap > 0 else 0
    box_batch = max(model.box_head.batch_size_per_image, math.ceil(positives / model.box_head.positive_fraction))
    proposals = min(MAX_TRAIN_PROPOSALS, 100 * math.ceil(TRAIN_PROPOSALS_PER_INSTANCE * max_instances / 100))
    post = max(model.rpn.post_nms_topk_train, proposals)
    rpn = replace(model.rpn, post_nms_topk_train=post, pre_nms_topk_train=max(model.rpn.pre_nms_topk_train, 2 * post))
    model = replace(model, rpn=rpn, box_head=replace(model.box_head, batch_size_per_image=box_batch))
    if model.mask_head is not None:
        model = replace(model, mask_head=replace(model.mask_head, max_rois_per_image=mask_cap))
    return replace(config, model=model)
