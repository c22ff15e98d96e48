"""YOLACT (Bolya et al. 2019) and YOLACT++ (Bolya et al. 2020) when a re-scoring head is given.

The instaseg model contract (see ``instaseg.detectors.mask_rcnn``):

* ``forward(images, targets=None)``: the heads' outputs, a :class:`YolactOutput` in inference; in
  training a :class:`YolactTrainOutput`, which adds the anchor matches and the masks of the sampled
  positives.
* ``loss(raw, targets) -> (total, {name: scalar})``: L = L_cls + 1.5 L_box + 6.125 L_mask +
  L_semantic (+ 25 L_rescoring for YOLACT++), normalized as in dbolya/yolact ``MultiBoxLoss``.
* ``postprocess(raw, image_sizes) -> list[Instances]``: per image the detections (Fast NMS,
  masks assembled at prototype resolution and cropped by the predicted boxes), then masks
  upsampled to the original image and thresholded at 0.5, boxes scaled to it.

Four post-processing rules are arguments, set from ``model.conventions`` (see
:class:`~instaseg.config.schema.YolactConventions`): dbolya/yolact's for converted weights,
instaseg's for the tiny presets.

Images enter as RGB ``(3, H, W)`` in [0, 255]; the model resizes them to ``square x square``
in inference (training images arrive already resized by the data transforms).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from instaseg.config.schema import InferenceConfig, InputConfig, YolactHeadConfig, YolactLossConfig
from instaseg.detectors.base import Detector, full_precision
from instaseg.losses.yolact import (
    box_regression_loss,
    mask_rescoring_loss,
    ohem_classification_loss,
    prototype_mask_loss,
    semantic_seg_loss,
)
from instaseg.ops.crop_masks import CROP_RULES, crop_masks
from instaseg.ops.fast_nms import fast_nms
from instaseg.ops.multiclass_nms import multiclass_nms
from instaseg.ops.soft_nms import batched_soft_nms
from instaseg.structures.boxes import BoxCoder, clip_boxes_to_image
from instaseg.structures.image_list import batch_images, rescale_boxes, resize_image, size_tensor
from instaseg.structures.instances import Instances, Targets
from instaseg.targets.anchors import yolact_anchors
from instaseg.targets.matcher import Matcher
from instaseg.targets.yolact import (
    AnchorTargets,
    downsample_masks,
    mask_iou_targets,
    match_anchors,
    sample_mask_positives,
)

__all__ = ["Yolact", "YolactOutput", "YolactTrainOutput", "YolactDetections"]

CROP_PADDING = 1.0  # prototype pixels; the reference's ``crop(..., padding=1)``
# Masks upsampled per chunk of this many: all 100 at once would be one large fresh float buffer
# (121 MB at 550 px), slower to allocate and stream than the interpolation itself.
_PASTE_CHUNK = 8


def _upsample_and_threshold(mask_probs: Tensor, size: tuple[int, int], threshold: float) -> Tensor:
    """``mask_probs (N, h, w)`` bilinearly resized to ``size = (H, W)``, then ``>= threshold``:
    ``(N, H, W)`` bool, written chunk by chunk into the result."""
    if torch.compiler.is_exporting():  # a traced graph: N is symbolic, so one resize for all
        probs = F.interpolate(mask_probs[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        return probs >= threshold
    masks = torch.empty((mask_probs.shape[0], *size), dtype=torch.bool, device=mask_probs.device)
    for start in range(0, mask_probs.shape[0], _PASTE_CHUNK):
        chunk = mask_probs[start : start + _PASTE_CHUNK, None]
        probs = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False)[:, 0]
        torch.ge(probs, threshold, out=masks[start : start + _PASTE_CHUNK])
    return masks


@dataclass
class YolactDetections:
    """Detections of one image in the model's input frame (``square x square``)."""

    boxes: Tensor  # (N, 4) xyxy; clipped to the input only when the model clips before NMS
    scores: Tensor  # (N,) class score
    labels: Tensor  # (N,) int64
    mask_probs: Tensor  # (N, h, w) at prototype resolution, cropped by the box, unthresholded
    mask_scores: Tensor | None = None  # (N,) YOLACT++: class score x predicted mask IoU (clamped or not)


@dataclass
class YolactOutput:
    """Raw outputs of an inference-mode forward (the heads' outputs): what :meth:`Yolact.postprocess` reads."""

    image_sizes: list[tuple[int, int]]  # sizes as the model saw them (after resizing)
    anchors: Tensor  # (A, 4) xyxy in input pixels
    class_logits: Tensor  # (B, A, C + 1), background last
    box_deltas: Tensor  # (B, A, 4)
    mask_coefficients: Tensor  # (B, A, k) in [-1, 1]
    prototypes: Tensor  # (B, k, h, w)


@dataclass
class YolactTrainOutput:
    """Raw outputs of a training-mode forward: the heads' outputs, the anchor matches and the
    masks of the sampled positives; what :meth:`Yolact.loss` reads."""

    image_sizes: list[tuple[int, int]]  # sizes as the model saw them
    anchors: Tensor  # (A, 4) xyxy in input pixels
    class_logits: Tensor  # (B, A, C + 1), background last
    box_deltas: Tensor  # (B, A, 4)
    mask_coefficients: Tensor  # (B, A, k) in [-1, 1]
    prototypes: Tensor  # (B, k, h, w)
    anchor_targets: list[AnchorTargets]  # per image
    mask_index: list[Tensor]  # per image: the anchors whose masks train
    mask_logits: list[Tensor]  # per image (P_i, h, w)
    semantic_logits: Tensor | None  # (B, C, H3, W3); None without a semantic head
    rescoring_iou: list[Tensor] | None  # YOLACT++: (P_i, C) per image; None without a re-scoring head


class Yolact(Detector):
    """Backbone -> FPN (P3-P7) -> ProtoNet on P3 + shared prediction head (+ re-scoring head)."""

    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: nn.Module,
        protonet: nn.Module,
        prediction_head: nn.Module,
        num_classes: int,
        input_config: InputConfig,
        head_config: YolactHeadConfig,
        loss_config: YolactLossConfig,
        inference_config: InferenceConfig,
        semantic_head: nn.Module | None = None,
        rescoring_head: nn.Module | None = None,
        rescoring_loss_weight: float = 25.0,
        rescoring_min_area: float = 25.0,
        nms_top_k: int = 200,
        clip_boxes_before_nms: bool = True,
        crop_rule: str = "pixel_centre",
        fill_below_threshold: bool = False,
        clamp_rescoring_iou: bool = True,
    ) -> None:
        """The last four: instaseg's rules by default; dbolya/yolact's are ``False``, ``"pixel_index"``,
        ``True``, ``False``. ``clip_boxes_before_nms``: decoded boxes clipped to the input before
        suppression (else only in :meth:`postprocess`); ``crop_rule``: the pixels a box keeps of
        its mask (:func:`~instaseg.ops.crop_masks.crop_masks`), in training and inference;
        ``fill_below_threshold``: Fast NMS keeps each class's surviving top-k entries at or below
        the score threshold (:func:`~instaseg.ops.fast_nms.fast_nms`); ``clamp_rescoring_iou``:
        YOLACT++'s predicted IoU clamped to [0, 1] in the mask score."""
        super().__init__()
        if input_config.square <= 0:
            raise ValueError("YOLACT needs a square input size (input.square > 0)")
        if crop_rule not in CROP_RULES:
            raise ValueError(f"unknown crop rule {crop_rule!r}: use one of {', '.join(CROP_RULES)}")
        self.backbone, self.neck, self.protonet = backbone, neck, protonet
        self.prediction_head, self.semantic_head = prediction_head, semantic_head
        self.rescoring_head = rescoring_head  # set: YOLACT++
        self.num_classes = num_classes
        self.input_config, self.head_config = input_config, head_config
        self.loss_config, self.inference_config = loss_config, inference_config
        self.rescoring_loss_weight, self.rescoring_min_area = rescoring_loss_weight, rescoring_min_area
        self.nms_top_k = nms_top_k
        self.clip_boxes_before_nms, self.crop_rule = clip_boxes_before_nms, crop_rule
        self.fill_below_threshold, self.clamp_rescoring_iou = fill_below_threshold, clamp_rescoring_iou
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))  # SSD variances 0.1 / 0.2
        self.matcher = Matcher([loss_config.neg_iou, loss_config.pos_iou], [0, -1, 1])
        self.register_buffer("pixel_mean", torch.tensor(input_config.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(input_config.pixel_std).view(3, 1, 1), persistent=False)

    # ------------------------------------------------------------------------------ input
    def preprocess(self, images: list[Tensor]) -> Tensor:
        """RGB ``(3, H, W)`` in [0, 255] -> normalized ``(B, 3, S, S)`` (resized in inference only)."""
        size = self.input_config.square
        prepared = []
        for image in images:
            image = image.to(self.pixel_mean.device, torch.float32)
            if not self.training:  # resize_image returns an image already at size as it is
                image = resize_image(image, (size, size))
            if self.input_config.channel_order == "BGR":
                image = image.flip(0)
            prepared.append((image - self.pixel_mean) / self.pixel_std)
        batch = batch_images(prepared, 1).tensor
        if batch.shape[-1] != batch.shape[-2]:
            raise ValueError(f"YOLACT expects square inputs, got {tuple(batch.shape[-2:])}")
        return batch

    def _anchors(self, levels: list[Tensor], image_size: int) -> Tensor:
        cfg = self.head_config
        sizes = [tuple(int(s) for s in f.shape[-2:]) for f in levels]
        dtype = torch.promote_types(levels[0].dtype, torch.float32)  # float32 under bfloat16 autocast
        return yolact_anchors(sizes, image_size, cfg.anchor_scales, cfg.aspect_ratios, cfg.square_anchors,
                              device=levels[0].device, dtype=dtype)

    # ------------------------------------------------------------------------------ forward
    def forward(self, images: list[Tensor], targets: list[Targets] | None = None) -> YolactTrainOutput | YolactOutput:
        """Training mode: :class:`YolactTrainOutput` (needs ``targets``); inference:
        :class:`YolactOutput`, the heads' outputs (suppression runs in :meth:`postprocess`)."""
        if self.training and targets is None:
            raise ValueError("training mode needs targets: model(images, targets)")
        with record_function("instaseg.preprocess"):
            batch = self.preprocess(images)
        with record_function("instaseg.backbone"):
            features = self.backbone(batch)
        with record_function("instaseg.neck"):
            levels = list(self.neck(list(features.values())).values())
        with record_function("instaseg.protonet"):
            prototypes = self.protonet(levels[0])
        with record_function("instaseg.prediction_head"):
            logits, deltas, coefficients = self.prediction_head(levels)
        size = int(batch.shape[-1])
        raw = YolactOutput([(size, size)] * batch.shape[0], self._anchors(levels, size), logits, deltas,
                           coefficients, prototypes)
        if not self.training:
            return raw
        semantic_logits = self.semantic_head(levels[0]) if self.semantic_head is not None else None
        return self._forward_train(raw, semantic_logits, targets)

    def _to_proto_frame(self, boxes: Tensor, raw: YolactOutput | YolactTrainOutput) -> Tensor:
        h, w = raw.prototypes.shape[-2:]
        size = raw.image_sizes[0][0]
        return boxes * boxes.new_tensor([w / size, h / size, w / size, h / size])

    def _forward_train(self, raw: YolactOutput, semantic_logits: Tensor | None,
                       targets: list[Targets]) -> YolactTrainOutput:
        cfg = self.loss_config
        anchor_targets, mask_index, all_mask_logits, rescoring_iou = [], [], [], []
        for i, target in enumerate(targets):
            with torch.no_grad():
                matched = match_anchors(raw.anchors, target.boxes.to(raw.anchors), target.labels, self.num_classes,
                                        self.matcher, target.crowd_boxes.to(raw.anchors), cfg.crowd_iou)
            index = sample_mask_positives(matched.positive, cfg.masks_to_train)
            mask_logits = torch.einsum("khw,pk->phw", raw.prototypes[i], raw.mask_coefficients[i, index])
            anchor_targets.append(matched)
            mask_index.append(index)
            all_mask_logits.append(mask_logits)
            if self.rescoring_head is not None:
                # The head sees the mask as a fixed input: its loss scores the mask, it does not change it.
                gt_boxes = self._to_proto_frame(target.boxes.to(mask_logits)[matched.gt_index[index]], raw)
                probs = crop_masks(mask_logits.detach().sigmoid(), gt_boxes, CROP_PADDING, self.crop_rule)
                rescoring_iou.append(self.rescoring_head(probs))
        return YolactTrainOutput(
            raw.image_sizes, raw.anchors, raw.class_logits, raw.box_deltas, raw.mask_coefficients, raw.prototypes,
            anchor_targets, mask_index, all_mask_logits, semantic_logits,
            rescoring_iou if self.rescoring_head is not None else None,
        )

    @torch.no_grad()
    def detect(self, raw: YolactOutput, i: int) -> YolactDetections:
        """Image ``i``'s detections in the model's input frame: boxes decoded, class-wise
        suppression, masks assembled at prototype resolution and cropped by the boxes (+ YOLACT++
        re-scoring)."""
        inf = self.inference_config
        size = raw.image_sizes[i]
        with record_function("instaseg.suppress"):
            # Under bfloat16 autocast the head's outputs are bfloat16: too coarse for boxes and scores.
            probs = full_precision(raw.class_logits[i]).softmax(dim=-1)[:, : self.num_classes]  # background last
            deltas = full_precision(raw.box_deltas[i])
            boxes = self.box_coder.decode(deltas, raw.anchors)
            if self.clip_boxes_before_nms:
                boxes = clip_boxes_to_image(boxes, size)
            if torch.compiler.is_exporting():  # no data-dependent prefilter in a graph; the dense
                keep = torch.arange(probs.shape[0], device=probs.device)  # suppression ranks them last
            else:
                keep = (probs.max(dim=1).values > inf.score_thresh).nonzero().squeeze(1)  # reference's prefilter
            box_index, labels, scores = self._suppress(boxes[keep], probs[keep])
            chosen = keep[box_index]
        with record_function("instaseg.masks"):
            logits = full_precision(torch.einsum("khw,nk->nhw", raw.prototypes[i], raw.mask_coefficients[i, chosen]))
            mask_probs = crop_masks(logits.sigmoid(), self._to_proto_frame(boxes[chosen], raw), CROP_PADDING,
                                    self.crop_rule)
        mask_scores = None
        if self.rescoring_head is not None:  # S_mask = S_cls x predicted IoU; boxes keep S_cls
            with record_function("instaseg.rescoring"):
                predicted = self.rescoring_head(mask_probs)[torch.arange(labels.numel(), device=labels.device), labels]
                predicted = full_precision(predicted)  # >= 0: the head ends with a ReLU
                mask_scores = scores * (predicted.clamp(0, 1) if self.clamp_rescoring_iou else predicted)
        return YolactDetections(boxes[chosen], scores, labels, mask_probs, mask_scores)

    def _suppress(self, boxes: Tensor, probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-class suppression of ``boxes (N, 4)`` with class ``probs (N, C)``.

        ``inference.nms``: "fast_nms" (YOLACT's, the default), "nms" (standard greedy, for the
        paper's comparison) or "soft_nms". Returns box indices, labels and scores, best first.
        ``fill_below_threshold`` applies to Fast NMS only (the others keep scores above the threshold).
        """
        inf = self.inference_config
        if inf.nms == "fast_nms":
            return fast_nms(boxes, probs.T.contiguous(), inf.nms_thresh, self.nms_top_k, inf.score_thresh,
                            inf.detections_per_image, keep_below_threshold=self.fill_below_threshold)
        if inf.nms == "nms":  # greedy, one set per class (the boxes shared)
            box_index, labels = multiclass_nms(boxes[:, None].expand(-1, probs.shape[1], -1), probs, inf.nms_thresh,
                                               inf.score_thresh, inf.detections_per_image)
            return box_index, labels, probs[box_index, labels]
        if inf.nms != "soft_nms":
            raise ValueError(f"unknown nms {inf.nms!r}: use 'fast_nms', 'nms' or 'soft_nms'")
        box_index, labels = (probs > inf.score_thresh).nonzero(as_tuple=True)
        scores = probs[box_index, labels]
        # kept in selection order, i.e. by decreasing decayed score
        keep, kept_scores = batched_soft_nms(boxes[box_index], scores, labels, iou_threshold=inf.nms_thresh,
                                             sigma=inf.soft_nms_sigma, method=inf.soft_nms_method,
                                             score_threshold=inf.score_thresh)
        n = inf.detections_per_image
        return box_index[keep[:n]], labels[keep[:n]], kept_scores[:n]

    # ------------------------------------------------------------------------------ loss
    def loss(self, raw: YolactTrainOutput, targets: list[Targets]) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its terms; B, C, M, I divided by the batch's positives, S by the batch size."""
        if not isinstance(raw, YolactTrainOutput):
            raise TypeError("loss() needs the outputs of a training-mode forward (YolactTrainOutput)")
        cfg = self.loss_config
        labels = torch.stack([t.labels for t in raw.anchor_targets])
        num_pos = float(max(1, int((labels >= 0).logical_and(labels < self.num_classes).sum())))
        terms = {"loss_cls": cfg.conf_weight * ohem_classification_loss(raw.class_logits, labels, cfg.neg_pos_ratio)}
        box, mask, rescore, semantic = [], [], [], []
        for i, (matched, target) in enumerate(zip(raw.anchor_targets, targets)):
            pos = matched.positive.nonzero().squeeze(1)
            gt_boxes = target.boxes.to(raw.anchors)
            goal = self.box_coder.encode(raw.anchors[pos], gt_boxes[matched.gt_index[pos]])
            box.append(box_regression_loss(raw.box_deltas[i, pos], goal))
            index = raw.mask_index[i]
            gt_index = matched.gt_index[index]
            proto_masks = downsample_masks(target.masks, tuple(raw.prototypes.shape[-2:]))[gt_index]
            proto_boxes = self._to_proto_frame(gt_boxes[gt_index], raw)
            crop = crop_masks(torch.ones_like(raw.mask_logits[i]), proto_boxes, CROP_PADDING, self.crop_rule)
            # Fewer masks than positives (masks_to_train): scale the sum up, as the reference does.
            subsampled = pos.numel() / max(1, index.numel())
            mask.append(prototype_mask_loss(raw.mask_logits[i], proto_masks, proto_boxes, crop) * subsampled)
            if self.rescoring_head is not None:
                probs = crop_masks(raw.mask_logits[i].detach().sigmoid(), proto_boxes, CROP_PADDING, self.crop_rule)
                big = proto_masks.flatten(1).sum(1) > self.rescoring_min_area  # 'discard_mask_area'
                rescore.append(mask_rescoring_loss(raw.rescoring_iou[i][big], target.labels[gt_index][big],
                                                   mask_iou_targets(probs[big], proto_masks[big])))
            if raw.semantic_logits is not None:
                seg = raw.semantic_logits[i]
                seg_masks = downsample_masks(target.masks, tuple(seg.shape[-2:]))
                semantic.append(semantic_seg_loss(seg, seg_masks, target.labels))
        terms["loss_cls"] = terms["loss_cls"] / num_pos
        terms["loss_box"] = cfg.box_weight * torch.stack(box).sum() / num_pos
        terms["loss_mask"] = cfg.mask_weight * torch.stack(mask).sum() / num_pos
        if semantic:
            terms["loss_semantic"] = cfg.semantic_weight * torch.stack(semantic).sum() / len(targets)
        if rescore:
            terms["loss_rescoring"] = self.rescoring_loss_weight * torch.stack(rescore).sum() / num_pos
        return sum(terms.values()), terms

    # ------------------------------------------------------------------------------ results
    @torch.no_grad()
    def postprocess(self, raw: YolactOutput, image_sizes: list[tuple[int, int]]) -> list[Instances]:
        """Detections in the original images (``image_sizes[i] = (H, W)`` before resizing): per
        image :meth:`detect`, then boxes scaled and clipped to the image and masks upsampled there."""
        if not isinstance(raw, YolactOutput):
            raise TypeError("postprocess() needs the outputs of an inference-mode forward (YolactOutput)")
        results = []
        for i, ((in_h, in_w), (h, w)) in enumerate(zip(raw.image_sizes, image_sizes)):
            det = self.detect(raw, i)
            if not torch.compiler.is_exporting() and det.boxes.shape[0] == 0:
                results.append(Instances.empty((h, w), det.boxes.device))
                continue
            # (h, w) may be symbolic (a traced graph): sizes as tensors
            boxes = rescale_boxes(det.boxes, (in_h, in_w), (h, w))
            boxes = clip_boxes_to_image(boxes, size_tensor((h, w), boxes.device))
            with record_function("instaseg.paste"):
                masks = _upsample_and_threshold(det.mask_probs, (h, w), self.inference_config.mask_threshold)
            results.append(Instances(boxes, det.scores, det.labels, masks, det.mask_scores))
        return results
