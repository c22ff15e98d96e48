"""Mask R-CNN / Mask Scoring R-CNN as one traceable function of one image.

:class:`MaskRCNNExport` wraps a built :class:`~instaseg.detectors.mask_rcnn.MaskRCNN` (its layers
are shared, not copied) and replays its inference path, ``predict`` = ``postprocess(forward)``,
with the traceable paths of instaseg's ops, structures and anchors:
resize, normalize, pad, backbone/FPN, RPN proposals (per-level top-k, NMS, top-k), box head,
per-class NMS, mask head (+ MaskIoU head), mask paste into the input image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from instaseg.detectors.mask_rcnn import MaskRCNN
from instaseg.ops.graph_ops import batched_nms_indices, sort_by_score
from instaseg.ops.paste_masks import paste_masks_in_image
from instaseg.ops.poolers import multiscale_roi_align
from instaseg.structures.boxes import clip_boxes_to_image as clip_boxes
from instaseg.structures.image_list import image_size_tensor, pad_to_multiple, resize_shortest_side
from instaseg.targets.anchors import grid_anchors
from instaseg.errors import InstasegError

__all__ = ["MaskRCNNExport"]


def check_exportable_rcnn(model: MaskRCNN) -> None:
    """Raise :class:`InstasegError` for settings the exported graph does not reproduce."""
    problems = []
    if model.inference_config.nms != "nms":
        problems.append(f"inference.nms={model.inference_config.nms!r} (only 'nms' exports)")
    if model.mask_config.paste != "centres":
        problems.append(f"mask_head.paste={model.mask_config.paste!r} (only 'centres' exports)")
    if model.box_config.pooler_type != "align":
        problems.append(f"box_head.pooler_type={model.box_config.pooler_type!r} (only 'align' exports)")
    if model.input_config.resize_rounding != "floor":
        problems.append(f"input.resize_rounding={model.input_config.resize_rounding!r} (only 'floor' exports)")
    if model.input_config.resize_filter != "bilinear":
        problems.append(f"input.resize_filter={model.input_config.resize_filter!r} (only 'bilinear' exports: "
                        "Pillow's uint8 filter is not a graph operation)")
    if model.rpn_config.anchor_strides != "fixed":
        problems.append(f"model.rpn.anchor_strides={model.rpn_config.anchor_strides!r} (only 'fixed' exports)")
    if problems:
        raise InstasegError("cannot export this Mask R-CNN: " + "; ".join(problems))


class MaskRCNNExport(nn.Module):
    """``forward(image (3, H, W) float RGB in [0, 255])`` ->

    ``boxes (N, 4)`` float xyxy in input-image pixels, ``scores (N,)`` class scores, ``labels (N,)``
    int64 in ``[0, num_classes)``, ``masks (N, H, W)`` bool and ``mask_scores (N,)`` (MS R-CNN:
    class score x predicted MaskIoU; Mask R-CNN: the class score), best first: what
    ``model.predict([image])[0]`` returns.
    """

    def __init__(self, model: MaskRCNN) -> None:
        super().__init__()
        check_exportable_rcnn(model)
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        cfg = m.input_config
        image = image.to(m.pixel_mean.dtype)
        resized, model_size = resize_shortest_side(image, cfg.min_size_test, cfg.max_size_test)
        if cfg.channel_order == "BGR":
            resized = resized.flip(0)
        batch = pad_to_multiple(((resized - m.pixel_mean) / m.pixel_std)[None], cfg.size_divisibility)
        features = m.backbone(batch)
        if m.neck is not None:
            features = m.neck(list(features.values()))
        proposals = self._proposals([features[n] for n in m.rpn_features], model_size)
        maps = [features[n] for n in m.roi_features]
        boxes, scores, labels = self._detect(maps, proposals, model_size)
        probs, mask_features = self._mask_probs(maps, boxes, labels)
        mask_scores = scores.clone()  # a graph output of its own (ONNX names each output once)
        if m.maskiou_head is not None:  # S_mask = S_cls x S_iou (boxes keep S_cls)
            predicted = m.maskiou_head(mask_features, probs)
            index = torch.arange(labels.shape[0], device=labels.device)
            mask_scores = scores * predicted[index, labels].clamp(0, 1)
        # Back to the input image (rescale_boxes: float32 ratios of the two sizes).
        height, width = image.shape[-2:]
        ratio_wh = (image_size_tensor(image) / model_size).float().flip(0)
        boxes = boxes * torch.cat((ratio_wh, ratio_wh))
        masks = paste_masks_in_image(probs, boxes, (height, width), m.inference_config.mask_threshold)
        return boxes, scores, labels, masks, mask_scores

    def _proposals(self, rpn_in: list[Tensor], model_size: Tensor) -> Tensor:
        """``select_proposals`` for one image: ``(R, 4)`` xyxy in the resized image's frame."""
        m, cfg = self.model, self.model.rpn_config
        logits, deltas = m.rpn_head(rpn_in)
        generator = m.anchor_generator
        boxes_per_level, scores_per_level = [], []
        for level, feature in enumerate(rpn_in):
            stride = generator.strides[level]
            anchors = grid_anchors(generator.cell_anchors[level], tuple(feature.shape[-2:]), (stride, stride),
                                   generator.offset, feature.device)
            level_logits = logits[level][0]
            k = torch.sym_min(cfg.pre_nms_topk_test, level_logits.shape[0])
            scores, index = level_logits.topk(k)
            boxes = clip_boxes(m.rpn_coder.decode(deltas[level][0, index], anchors[index]), model_size)
            wh = boxes[:, 2:] - boxes[:, :2]
            valid = (wh > cfg.min_box_size).all(dim=1) & torch.isfinite(scores) & torch.isfinite(boxes).all(dim=1)
            # Invalid entries score -inf: NMS (score > -inf) never selects them.
            scores = torch.where(valid, scores, -math.inf)
            keep = batched_nms_indices(boxes[None], scores[None], cfg.nms_thresh, -math.inf,
                                       cfg.post_nms_topk_test)[:, 1]
            boxes_per_level.append(boxes[keep])
            scores_per_level.append(scores[keep])
        boxes, scores = torch.cat(boxes_per_level), torch.cat(scores_per_level)
        order = sort_by_score(scores, torch.arange(scores.shape[0], device=scores.device), cfg.post_nms_topk_test)
        return boxes[order]

    def _pool(self, maps: list[Tensor], boxes: Tensor, resolution: int) -> Tensor:
        cfg = self.model.box_config
        rois = torch.cat((torch.zeros_like(boxes[:, :1]), boxes), dim=1)
        return multiscale_roi_align(maps, rois, self.model.roi_scales, resolution, cfg.sampling_ratio, cfg.aligned)

    def _detect(self, maps: list[Tensor], proposals: Tensor, model_size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``detect_boxes`` for one image: per-class NMS over class-specific boxes."""
        m, inf = self.model, self.model.inference_config
        pooled = self._pool(maps, proposals, m.box_config.pooler_resolution)
        class_logits, box_deltas = m.box_predictor(m.box_head(pooled))
        num_classes = class_logits.shape[1] - 1
        probs = torch.softmax(class_logits, dim=1)[:, :num_classes]  # (R, C), background last
        boxes = clip_boxes(m.box_coder.decode(box_deltas, proposals).view(-1, num_classes, 4), model_size)
        big_enough = ((boxes[..., 2:] - boxes[..., :2]) >= inf.min_box_size).all(dim=-1)
        scores = torch.where(big_enough, probs, -math.inf)
        # One NMS set per class: boxes (C, R, 4), scores (C, R); rows [class, proposal].
        picked = batched_nms_indices(boxes.transpose(0, 1), scores.T, inf.nms_thresh, inf.score_thresh,
                                     inf.detections_per_image)
        labels, rows = picked[:, 0], picked[:, 1]
        kept_scores = probs[rows, labels]
        # detect_boxes ranks the flattened (proposal, class) candidates: ties by rows * C + labels.
        order = sort_by_score(kept_scores, rows * num_classes + labels, inf.detections_per_image)
        labels, rows = labels[order], rows[order]
        return boxes[rows, labels], kept_scores[order], labels

    def _mask_probs(self, maps: list[Tensor], boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mask probabilities ``(N, M, M)`` of each detection's class, and the mask-branch features."""
        m = self.model
        if m.c4:  # the C4 mask head reuses res5 on the box resolution
            mask_features = m.box_head(self._pool(maps, boxes, m.box_config.pooler_resolution))
        else:
            mask_features = self._pool(maps, boxes, m.mask_config.pooler_resolution)
        return m.class_mask_probabilities(m.mask_head(mask_features), labels), mask_features
