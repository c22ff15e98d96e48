"""Mask R-CNN (He et al. 2017), Mask Scoring R-CNN when a MaskIoU head is given, Keypoint R-CNN
when a keypoint head is given (with or without the mask head).

The :class:`~instaseg.detectors.base.Detector` contract:

* ``forward(images, targets=None)``: in training mode a :class:`MaskRCNNTrainOutput` (the
  targets only choose which anchors and RoIs the heads see; nothing is computed from them here);
  in inference a :class:`MaskRCNNOutput` (proposals and the box head's outputs on them). Each
  dataclass is filled completely: no field depends on the mode.
* ``loss(raw, targets) -> (total, {name: scalar})`` with L = L_cls + L_box + L_mask (+ the RPN's,
  + L_keypoint).
* ``postprocess(raw, image_sizes) -> list[Instances]`` in the original images' coordinates: the
  per-class NMS, the mask and keypoint branches on the detections and the paste run here, not in
  ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from instaseg.config.schema import (BoxHeadConfig, InferenceConfig, InputConfig, KeypointHeadConfig, MaskHeadConfig,
                                    RPNConfig)
from instaseg.detectors.base import Detector, full_precision
from instaseg.detectors.rcnn_inference import Detections, detect_boxes, select_proposals
from instaseg.detectors.rcnn_masks import paste_detections
from instaseg.losses.keypoints import fixed_keypoint_normalizer, keypoint_loss
from instaseg.losses.rcnn import fast_rcnn_losses, mask_loss, maskiou_loss, rpn_losses
from instaseg.ops.keypoints import heatmaps_to_keypoints
from instaseg.ops.poolers import multiscale_roi_align
from instaseg.structures.boxes import BoxCoder
from instaseg.structures.image_list import (ImageList, batch_images, pad_to_multiple, rescale_keypoints,
                                            resize_image, resize_shortest_side, resized_shape)
from instaseg.structures.instances import Instances, Targets
from instaseg.targets.keypoints import keypoint_targets
from instaseg.targets.maskiou import in_box_fraction, maskiou_targets
from instaseg.targets.matcher import Matcher
from instaseg.targets.rcnn import SampledRoIs, mask_targets, rpn_targets, sample_rois

__all__ = ["MaskRCNN", "MaskRCNNOutput", "MaskRCNNTrainOutput", "MaskPredictions"]


@dataclass
class MaskPredictions:
    """The mask branch's outputs for the detections of a batch, image-major."""

    probs: Tensor | None  # (N, M, M) mask probabilities of each detection's class, over its box; None without masks
    scores: Tensor | None  # (N,) rescored mask scores S_cls x S_iou (MS R-CNN); None without a MaskIoU head


@dataclass
class MaskRCNNTrainOutput:
    """Raw outputs of a training-mode forward: what :meth:`MaskRCNN.loss` reads."""

    image_sizes: list[tuple[int, int]]  # sizes of the images as the model saw them (after resizing)
    anchors: list[Tensor]  # per level (A_l, 4)
    objectness_logits: list[Tensor]  # per level (B, A_l)
    anchor_deltas: list[Tensor]  # per level (B, A_l, 4)
    proposals: list[Tensor]  # per image (R_i, 4)
    sampled: list[SampledRoIs]  # per image: the RoIs the box head saw, positives first
    class_logits: Tensor  # (R, C + 1) over the sampled RoIs of all images, background last
    box_deltas: Tensor  # (R, 4C)
    mask_logits: Tensor | None  # (P, K, M, M) of the positives that train the mask head; None without it
    roi_features: Tensor | None  # (P, C, R, R) mask-branch RoI features (MaskIoU head input); None without it
    maskiou: Tensor | None  # (P, C) predicted MaskIoU (Mask Scoring R-CNN); None without the head
    keypoint_logits: Tensor | None = None  # (Q, K, m, m) heatmaps of every positive RoI; None without the head


@dataclass
class MaskRCNNOutput:
    """Raw outputs of an inference-mode forward: what :meth:`MaskRCNN.postprocess` reads.

    No suppression has run on the box branch yet: per-class NMS, the mask branch (which sees the
    detections) and the paste belong to ``postprocess``.
    """

    image_sizes: list[tuple[int, int]]  # sizes of the images as the model saw them (after resizing)
    proposals: list[Tensor]  # per image (R_i, 4) xyxy in the resized image's frame
    class_logits: Tensor  # (R, C + 1) over the proposals of all images, background last
    box_deltas: Tensor  # (R, 4C)
    roi_maps: list[Tensor]  # the feature maps RoIs pool from (the mask branch's input), (B, C, H_l, W_l)


class MaskRCNN(Detector):
    """Backbone (+ FPN) -> RPN -> RoI heads (box; mask, optional MaskIoU; optional keypoint).

    Layers come in built; hyper-parameters come as the frozen config parts they belong to.
    ``box_head`` maps pooled RoI features to the predictor's input: :class:`FCBoxHead` (FPN) or
    :class:`Res5Head` (C4, whose output the mask head then reuses).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        neck: nn.Module | None,
        anchor_generator: nn.Module,
        rpn_head: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        mask_head: nn.Module | None,
        num_classes: int,
        input_config: InputConfig,
        rpn_config: RPNConfig,
        box_config: BoxHeadConfig,
        mask_config: MaskHeadConfig | None,
        inference_config: InferenceConfig,
        maskiou_head: nn.Module | None = None,
        maskiou_loss_weight: float = 1.0,
        keypoint_head: nn.Module | None = None,
        keypoint_config: KeypointHeadConfig | None = None,
    ) -> None:
        super().__init__()
        if (mask_head is None) != (mask_config is None) or (keypoint_head is None) != (keypoint_config is None):
            raise ValueError("give each RoI head together with its config")
        self.backbone, self.neck = backbone, neck
        self.anchor_generator, self.rpn_head = anchor_generator, rpn_head
        self.box_head, self.box_predictor, self.mask_head = box_head, box_predictor, mask_head
        self.maskiou_head = maskiou_head  # set: Mask Scoring R-CNN (Huang et al. 2019)
        self.maskiou_loss_weight = maskiou_loss_weight
        self.keypoint_head = keypoint_head  # set: Keypoint R-CNN (He et al. 2017, Sec. 5)
        self.num_classes = num_classes
        self.input_config, self.rpn_config, self.box_config = input_config, rpn_config, box_config
        self.mask_config, self.inference_config = mask_config, inference_config
        self.keypoint_config = keypoint_config
        self.c4 = neck is None
        shapes = backbone.output_shape() if self.c4 else neck.output_shape()
        names = list(shapes)
        self.rpn_features = names
        # FPN: RoIs pool from P2-P5 (P6 only feeds the RPN); C4: from res4.
        self.roi_features = names if self.c4 else [n for n in names if shapes[n].stride <= 32]
        self.roi_scales = [1.0 / shapes[n].stride for n in self.roi_features]
        self.rpn_coder = BoxCoder(rpn_config.box_weights)
        self.box_coder = BoxCoder(box_config.box_weights)
        self.rpn_matcher = Matcher(list(rpn_config.iou_thresholds), [0, -1, 1], allow_low_quality_matches=True)
        self.roi_matcher = Matcher([box_config.iou_threshold], [0, 1], allow_low_quality_matches=False)
        self.register_buffer("pixel_mean", torch.tensor(input_config.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(input_config.pixel_std).view(3, 1, 1), persistent=False)

    # ------------------------------------------------------------------------------ input
    def preprocess(self, images: list[Tensor]) -> ImageList:
        """RGB ``(3, H, W)`` images in [0, 255] -> normalized, resized (inference only), padded batch.

        Training images arrive already resized by the data transforms (with their targets). While
        ``torch.export`` traces (one image, symbolic sides) the size rule runs as tensor arithmetic
        (:func:`resize_shortest_side`) and the padding as :func:`pad_to_multiple`.
        """
        cfg = self.input_config
        # The statistics in the model's dtype from the config's numbers: float32 buffers cast to
        # float64 would carry float32 rounding (1e-8) that a float64 comparison then sees.
        dtype, device = self.pixel_mean.dtype, self.pixel_mean.device
        mean = torch.tensor(cfg.pixel_mean, dtype=dtype, device=device).view(3, 1, 1)
        std = torch.tensor(cfg.pixel_std, dtype=dtype, device=device).view(3, 1, 1)
        traced = torch.compiler.is_exporting()
        prepared = []
        for image in images:
            image = image.to(device=device, dtype=dtype)
            if traced:
                image, _ = resize_shortest_side(image, cfg.min_size_test, cfg.max_size_test)
            elif not self.training:
                h, w = image.shape[-2:]
                size = resized_shape(h, w, cfg.min_size_test, cfg.max_size_test, cfg.resize_rounding)
                image = resize_image(image, size, cfg.resize_filter)
            if cfg.channel_order == "BGR":
                image = image.flip(0)
            prepared.append((image - mean) / std)
        if traced:
            return ImageList(pad_to_multiple(torch.stack(prepared), cfg.size_divisibility),
                             [(p.shape[-2], p.shape[-1]) for p in prepared])
        return batch_images(prepared, cfg.size_divisibility)

    def features(self, batch: Tensor) -> dict[str, Tensor]:
        """Backbone (and FPN) feature maps by name."""
        with record_function("instaseg.backbone"):
            features = self.backbone(batch)
        if self.neck is not None:
            with record_function("instaseg.neck"):
                features = self.neck(list(features.values()))
        return features

    # ------------------------------------------------------------------------------ forward
    def forward(
        self, images: list[Tensor], targets: list[Targets] | None = None
    ) -> MaskRCNNTrainOutput | MaskRCNNOutput:
        """Training mode: :class:`MaskRCNNTrainOutput` (needs ``targets``, which pick the RoIs);
        inference: :class:`MaskRCNNOutput` (box head on the proposals, nothing suppressed)."""
        if self.training and targets is None:
            raise ValueError("training mode needs targets: model(images, targets)")
        with record_function("instaseg.preprocess"):
            batch = self.preprocess(images)
        features = self.features(batch.tensor)
        rpn_in = [features[n] for n in self.rpn_features]
        with record_function("instaseg.rpn"):
            logits, deltas = self.rpn_head(rpn_in)
            anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in rpn_in], device=batch.tensor.device,
                                            image_size=tuple(batch.tensor.shape[-2:]))
        cfg = self.rpn_config
        with torch.no_grad(), record_function("instaseg.proposals"):
            proposals = select_proposals(
                anchors, [full_precision(l.detach()) for l in logits], [full_precision(d.detach()) for d in deltas],
                batch.image_sizes,
                self.rpn_coder,
                cfg.pre_nms_topk_train if self.training else cfg.pre_nms_topk_test,
                cfg.post_nms_topk_train if self.training else cfg.post_nms_topk_test,
                cfg.nms_thresh, cfg.min_box_size,
            )
        roi_maps = [features[n] for n in self.roi_features]
        if not self.training:
            with record_function("instaseg.box_roi_pool"):
                pooled = self._pool(roi_maps, proposals, self.box_config.pooler_resolution)
            with record_function("instaseg.box_head"):
                class_logits, box_deltas = self.box_predictor(self.box_head(pooled))
            return MaskRCNNOutput(batch.image_sizes, proposals, class_logits, box_deltas, roi_maps)
        return self._forward_train(batch.image_sizes, anchors, logits, deltas, proposals, roi_maps, targets)

    def _pool(
        self, maps: list[Tensor], boxes: list[Tensor], resolution: int, sampling_ratio: int | None = None
    ) -> Tensor:
        """RoIAlign of per-image ``boxes`` from the RoI levels: ``(sum R_i, C, resolution, resolution)``;
        the box head's sampling ratio unless ``sampling_ratio`` is given (the keypoint pooler's)."""
        rois = torch.cat([torch.cat([b.new_full((b.shape[0], 1), i), b], dim=1) for i, b in enumerate(boxes)])
        ratio = self.box_config.sampling_ratio if sampling_ratio is None else sampling_ratio
        return multiscale_roi_align(
            maps, rois, self.roi_scales, resolution, ratio, self.box_config.aligned, method=self.box_config.pooler_type,
        )

    def _keypoint_logits(self, maps: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """The keypoint head on per-image ``boxes``: ``(sum R_i, K, m, m)`` heatmap logits."""
        cfg = self.keypoint_config
        return self.keypoint_head(self._pool(maps, boxes, cfg.pooler_resolution, cfg.sampling_ratio))

    def _forward_train(
        self, image_sizes: list[tuple[int, int]], anchors: list[Tensor], logits: list[Tensor], deltas: list[Tensor],
        proposals: list[Tensor], maps: list[Tensor], targets: list[Targets],
    ) -> MaskRCNNTrainOutput:
        cfg = self.box_config
        sampled = [
            sample_rois(p, t.boxes, t.labels, self.num_classes, self.roi_matcher, cfg.batch_size_per_image,
                        cfg.positive_fraction, cfg.append_gt_boxes)
            for p, t in zip(proposals, targets)
        ]
        box_features = self.box_head(self._pool(maps, [s.boxes for s in sampled], cfg.pooler_resolution))
        class_logits, box_deltas = self.box_predictor(box_features)
        mask_logits = mask_features = maskiou = keypoint_logits = None
        if self.mask_head is not None:
            mask_logits, mask_features, maskiou = self._train_masks(maps, sampled, box_features)
        if self.keypoint_head is not None:  # every positive RoI, as torchvision (the loss skips invalid keypoints)
            with record_function("instaseg.keypoint_head"):
                keypoint_logits = self._keypoint_logits(maps, [s.boxes[: s.num_positive] for s in sampled])
        return MaskRCNNTrainOutput(image_sizes, anchors, logits, deltas, proposals, sampled, class_logits, box_deltas,
                                   mask_logits, mask_features, maskiou, keypoint_logits)

    def _train_masks(
        self, maps: list[Tensor], sampled: list[SampledRoIs], box_features: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Mask logits, the mask branch's RoI features and the MaskIoU head's output (or None) on the
        positives that train the mask branch."""
        if self.c4:  # the C4 mask head reuses the res5 features of the positive RoIs
            starts = torch.tensor([0] + [s.boxes.shape[0] for s in sampled]).cumsum(0)
            index = torch.cat([torch.arange(self._mask_count(s)) + int(starts[i]) for i, s in enumerate(sampled)])
            mask_features = box_features[index.to(box_features.device)]
        else:
            positives = [s.boxes[: self._mask_count(s)] for s in sampled]
            mask_features = self._pool(maps, positives, self.mask_config.pooler_resolution)
        mask_logits = self.mask_head(mask_features)
        maskiou = None
        if self.maskiou_head is not None:
            classes = torch.cat([s.labels[: self._mask_count(s)] for s in sampled])
            maskiou = self._predict_maskiou(mask_logits, mask_features, classes)
        return mask_logits, mask_features, maskiou

    def _predict_maskiou(self, mask_logits: Tensor, roi_features: Tensor, classes: Tensor) -> Tensor:
        # The head sees the mask as a fixed input: its loss scores the mask, it does not change it.
        probs = self.class_mask_probabilities(mask_logits, classes).detach()
        return self.maskiou_head(roi_features, probs)

    # ------------------------------------------------------------------------------ loss
    def loss(self, raw: MaskRCNNTrainOutput, targets: list[Targets]) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its named terms (RPN, box classification/regression, mask)."""
        if not isinstance(raw, MaskRCNNTrainOutput):
            raise TypeError("loss() needs the outputs of a training-mode forward (MaskRCNNTrainOutput)")
        anchors = torch.cat(raw.anchors)
        labels, target_deltas = zip(*[
            rpn_targets(anchors, t.boxes, self.rpn_matcher, self.rpn_config.batch_size_per_image,
                        self.rpn_config.positive_fraction, self.rpn_coder)
            for t in targets
        ])
        losses = rpn_losses(
            torch.cat(raw.objectness_logits, dim=1), torch.cat(raw.anchor_deltas, dim=1),
            torch.stack(labels), torch.stack(target_deltas), self.rpn_config.smooth_l1_beta,
        )
        losses = {k: v * self.rpn_config.loss_weight for k, v in losses.items()}
        roi_targets = torch.cat([
            self.box_coder.encode(s.boxes, t.boxes[s.gt_index].to(s.boxes.dtype)) if len(t) else torch.zeros_like(s.boxes)
            for s, t in zip(raw.sampled, targets)
        ])
        losses.update(fast_rcnn_losses(raw.class_logits, raw.box_deltas, torch.cat([s.labels for s in raw.sampled]),
                                       roi_targets, self.box_config.smooth_l1_beta))
        if self.mask_head is not None:
            losses.update(self._mask_losses(raw, targets))
        if self.keypoint_head is not None:
            losses["loss_keypoint"] = self._keypoint_loss(raw, targets)
        return sum(losses.values()), losses

    def _mask_losses(self, raw: MaskRCNNTrainOutput, targets: list[Targets]) -> dict[str, Tensor]:
        """``loss_mask`` (and ``loss_maskiou`` with a MaskIoU head)."""
        losses = {}
        size = raw.mask_logits.shape[-1]
        gt_masks = torch.cat([mask_targets(t.masks, s, size, self._mask_count(s)) for s, t in zip(raw.sampled, targets)])
        gt_classes = torch.cat([s.labels[: self._mask_count(s)] for s in raw.sampled])
        losses["loss_mask"] = self.mask_config.loss_weight * mask_loss(
            raw.mask_logits, gt_classes, gt_masks, self._mask_mode()
        )
        if self.maskiou_head is not None:
            in_box = torch.cat([in_box_fraction(t.masks, s.gt_index[: self._mask_count(s)], s.boxes[: self._mask_count(s)])
                                for s, t in zip(raw.sampled, targets)])
            probs = self.class_mask_probabilities(raw.mask_logits, gt_classes).detach()
            iou_targets = maskiou_targets(probs, gt_masks, in_box)
            losses["loss_maskiou"] = self.maskiou_loss_weight * maskiou_loss(raw.maskiou, gt_classes, iou_targets)
        return losses

    def _keypoint_loss(self, raw: MaskRCNNTrainOutput, targets: list[Targets]) -> Tensor:
        """The weighted keypoint loss over every positive RoI (``instaseg.losses.keypoints``)."""
        cfg = self.keypoint_config
        if any(t.keypoints is None for t in targets):
            raise ValueError("a keypoint model needs keypoints in every target (Targets.keypoints); "
                             "train it on a COCO keypoint dataset")
        size = raw.keypoint_logits.shape[-1]
        found = [keypoint_targets(t.keypoints, s, size) for s, t in zip(raw.sampled, targets)]
        normalizer = fixed_keypoint_normalizer(len(targets), cfg.num_keypoints, self.box_config.batch_size_per_image,
                                               self.box_config.positive_fraction)
        return cfg.loss_weight * keypoint_loss(
            raw.keypoint_logits, torch.cat([f.index for f in found]), torch.cat([f.valid for f in found]),
            cfg.loss_normalization, normalizer,
        )

    def _mask_count(self, sampled: SampledRoIs) -> int:
        """How many of an image's positive RoIs train the mask branch: all of them (the paper), or
        the first ``mask_head.max_rois_per_image`` (positives are sampled in random order)."""
        cap = self.mask_config.max_rois_per_image
        return min(sampled.num_positive, cap) if cap > 0 else sampled.num_positive

    def _mask_mode(self) -> str:
        if self.mask_config.class_agnostic:
            return "agnostic"
        return self.mask_config.loss

    # ------------------------------------------------------------------------------ results
    def class_mask_probabilities(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``(N, M, M)`` mask probabilities of class ``labels (N,)`` from ``logits (N, K, M, M)``.

        Softmax (multinomial) masks: the probability that a pixel is not background. The loss labels
        the pixels inside a RoI's mask with the RoI's class, so the object is every non-background
        pixel; the split of that probability over the C classes is the mask head's own class guess
        (the box branch gives the detection's class). Its share for ``labels`` alone is at most
        ``1 - p_bg`` and near ``(1 - p_bg) / C`` while the mask head cannot tell the classes apart.
        Measured on the tiny preset after 400 iterations (6 classes, seed 0 of the ablation runs):
        the mask head named the right class at 28% of the ground-truth boxes (chance 17%); inside
        the masks the class's share averaged 0.17 and ``1 - p_bg`` 0.68; thresholding the share gave
        mask AP 0.2, thresholding ``1 - p_bg`` 13.3 (per-class sigmoid: 15.9).
        """
        mode = self._mask_mode()
        if mode == "agnostic":
            return logits[:, 0].sigmoid()
        if mode == "softmax":
            # 1 - p_bg = sigmoid(logsumexp(class logits) - background logit); background last
            return (logits[:, :-1].logsumexp(dim=1) - logits[:, -1]).sigmoid()
        index = torch.arange(labels.numel(), device=labels.device)
        return logits[index, labels].sigmoid()

    @torch.no_grad()
    def postprocess(self, raw: MaskRCNNOutput, image_sizes: list[tuple[int, int]]) -> list[Instances]:
        """Detections in the original images (``image_sizes[i] = (H, W)`` before resizing):
        per-class NMS (:meth:`detect`), the mask and keypoint branches on the detections
        (:meth:`predict_masks`, :meth:`predict_keypoints`), boxes and keypoints rescaled and masks
        pasted into the original images."""
        if not isinstance(raw, MaskRCNNOutput):
            raise TypeError("postprocess() needs the outputs of an inference-mode forward (MaskRCNNOutput)")
        detections = self.detect(raw)
        masks = MaskPredictions(None, None) if self.mask_head is None else self.predict_masks(raw.roi_maps, detections)
        keypoints = None if self.keypoint_head is None else self.predict_keypoints(raw.roi_maps, detections)
        with record_function("instaseg.paste"):
            return paste_detections(
                detections, masks.probs, masks.scores, raw.image_sizes, image_sizes,
                self.mask_config.paste if self.mask_config else "centres", self.inference_config.mask_threshold,
                keypoints,
            )

    def predict_keypoints(self, maps: list[Tensor], detections: list[Detections]) -> Tensor:
        """The keypoint branch on the detections' boxes: ``(N, K, 3)`` ``(x, y, score)`` in the
        resized images' frame, image-major (``instaseg.ops.keypoints.heatmaps_to_keypoints``)."""
        boxes = [d.boxes for d in detections]
        with record_function("instaseg.keypoint_head"):
            heatmaps = full_precision(self._keypoint_logits(maps, boxes))
        return heatmaps_to_keypoints(heatmaps, torch.cat(boxes), self.keypoint_config.score)

    def detect(self, raw: MaskRCNNOutput) -> list[Detections]:
        """The box branch's detections per image (per-class NMS), in the resized images' frame."""
        inf = self.inference_config
        with record_function("instaseg.detect"):
            return detect_boxes(
                full_precision(raw.class_logits), full_precision(raw.box_deltas), raw.proposals, raw.image_sizes,
                self.box_coder, inf.score_thresh, inf.nms_thresh, inf.detections_per_image, inf.nms,
                inf.soft_nms_method, inf.soft_nms_sigma, inf.min_box_size,
            )

    def predict_masks(self, maps: list[Tensor], detections: list[Detections]) -> MaskPredictions:
        """The mask branch (and the MaskIoU head) on the detections' boxes, image-major."""
        boxes = [d.boxes for d in detections]
        labels = torch.cat([d.labels for d in detections])
        with record_function("instaseg.mask_head"):
            if self.c4:  # the C4 mask head reuses res5 on the box resolution
                mask_features = self.box_head(self._pool(maps, boxes, self.box_config.pooler_resolution))
            else:
                mask_features = self._pool(maps, boxes, self.mask_config.pooler_resolution)
            mask_logits = full_precision(self.mask_head(mask_features))
        probs = self.class_mask_probabilities(mask_logits, labels)
        if self.maskiou_head is None:
            return MaskPredictions(probs, None)
        with record_function("instaseg.maskiou_head"):
            maskiou = full_precision(self._predict_maskiou(mask_logits, mask_features, labels))
        # S_mask = S_cls x S_iou; box results keep S_cls
        scores = torch.cat([d.scores for d in detections])
        predicted_iou = maskiou[torch.arange(labels.numel(), device=labels.device), labels]
        return MaskPredictions(probs, scores * predicted_iou.clamp(0, 1))
