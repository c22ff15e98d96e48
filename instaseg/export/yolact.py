"""YOLACT / YOLACT++ as one traceable function of one image.

:class:`YolactExport` wraps a built :class:`~instaseg.detectors.yolact.Yolact` (layers shared) and
replays ``predict``: resize to the square input, backbone/FPN, ProtoNet and prediction head,
class-wise suppression, mask assembly cropped by the boxes (+ YOLACT++ re-scoring), then masks
upsampled to the input image. YOLACT's Fast NMS is dense tensor algebra on fixed-size per-class
top-k lists, so it needs no custom op; greedy ``nms`` goes through ONNX ``NonMaxSuppression``.
The model's conventions (box clipping before NMS or not, crop rule, Fast NMS fill, re-scoring
IoU clamp) are all replayed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.detectors.yolact import CROP_PADDING, Yolact
from instaseg.errors import InstasegError
from instaseg.ops.crop_masks import crop_masks
from instaseg.ops.fast_nms import dense_fast_nms
from instaseg.ops.graph_ops import batched_nms_indices, sort_by_score
from instaseg.structures.boxes import clip_boxes_to_image as clip_boxes
from instaseg.structures.image_list import image_size_tensor, resize_image as resize_to
from instaseg.targets.anchors import yolact_anchors

__all__ = ["YolactExport"]


class YolactExport(nn.Module):
    """``forward(image (3, H, W) float RGB in [0, 255])`` ->

    ``boxes (N, 4)`` float xyxy in input-image pixels, ``scores (N,)``, ``labels (N,)`` int64,
    ``masks (N, H, W)`` bool and ``mask_scores (N,)`` (YOLACT++: class score x predicted IoU;
    YOLACT: the class score), best first: what ``model.predict([image])[0]`` returns.
    """

    def __init__(self, model: Yolact) -> None:
        super().__init__()
        if model.inference_config.nms not in ("fast_nms", "nms"):
            raise InstasegError(f"cannot export YOLACT with inference.nms={model.inference_config.nms!r}: "
                                "use 'fast_nms' or 'nms'")
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        size = m.input_config.square
        image = image.to(m.pixel_mean.dtype)
        x = resize_to(image, (size, size))
        if m.input_config.channel_order == "BGR":
            x = x.flip(0)
        x = ((x - m.pixel_mean) / m.pixel_std)[None]
        levels = list(m.neck(list(m.backbone(x).values())).values())
        prototypes = m.protonet(levels[0])[0]  # (k, h, w)
        class_logits, box_deltas, coefficients = m.prediction_head(levels)
        cfg = m.head_config
        anchors = yolact_anchors([tuple(f.shape[-2:]) for f in levels], size, cfg.anchor_scales, cfg.aspect_ratios,
                                 cfg.square_anchors, device=x.device, dtype=x.dtype)
        probs = class_logits[0].softmax(dim=-1)[:, : m.num_classes]  # background last
        square = torch.tensor([size, size], dtype=torch.float64, device=x.device)
        boxes = m.box_coder.decode(box_deltas[0], anchors)
        if m.clip_boxes_before_nms:
            boxes = clip_boxes(boxes, square)
        box_index, labels, scores = self._suppress(boxes, probs)
        boxes = boxes[box_index]
        # Masks at prototype resolution, cropped by the box in the prototype frame (_to_proto_frame).
        logits = torch.einsum("khw,nk->nhw", prototypes, coefficients[0, box_index])
        proto_h, proto_w = prototypes.shape[-2:]
        proto_scale = boxes.new_tensor([proto_w / size, proto_h / size, proto_w / size, proto_h / size])
        mask_probs = crop_masks(logits.sigmoid(), boxes * proto_scale, CROP_PADDING, m.crop_rule)
        mask_scores = scores.clone()  # a graph output of its own (ONNX names each output once)
        if m.rescoring_head is not None:
            predicted = m.rescoring_head(mask_probs)[torch.arange(labels.shape[0], device=labels.device), labels]
            mask_scores = scores * (predicted.clamp(0, 1) if m.clamp_rescoring_iou else predicted)
        # Back to the input image (Yolact.postprocess).
        height, width = image.shape[-2:]
        image_size = image_size_tensor(image)
        ratio_wh = (image_size / size).float().flip(0)
        boxes = clip_boxes(boxes * torch.cat((ratio_wh, ratio_wh)), image_size)
        upsampled = F.interpolate(mask_probs[:, None], size=(height, width), mode="bilinear", align_corners=False)
        masks = upsampled[:, 0] >= m.inference_config.mask_threshold
        return boxes, scores, labels, masks, mask_scores

    def _suppress(self, boxes: Tensor, probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Box indices, labels and scores of the kept detections, best first (``Yolact._suppress``)."""
        inf = self.model.inference_config
        if inf.nms == "fast_nms":
            return dense_fast_nms(boxes, probs.T, inf.nms_thresh, self.model.nms_top_k, inf.score_thresh,
                                  inf.detections_per_image, self.model.fill_below_threshold)
        # Greedy NMS, one set per class (boxes shared); candidates score > score_thresh.
        num_classes = probs.shape[1]
        picked = batched_nms_indices(boxes[None].expand(num_classes, -1, -1), probs.T, inf.nms_thresh,
                                     inf.score_thresh, inf.detections_per_image)
        labels, box_index = picked[:, 0], picked[:, 1]
        scores = probs[box_index, labels]
        # Yolact._suppress ranks the (box, class) candidates row-major: ties by box * C + class.
        order = sort_by_score(scores, box_index * num_classes + labels, inf.detections_per_image)
        return box_index[order], labels[order], scores[order]
