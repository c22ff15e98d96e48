"""Keypoint R-CNN in the Mask R-CNN detector: the keypoint branch's training loss against a slow
loop over the sampled RoIs, its inference against the decoding op and the resize, and the configs
with and without the mask branch."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from instaseg.config.presets import get_preset
from instaseg.config.schema import KeypointHeadConfig
from instaseg.errors import ConfigError
from instaseg.hub import build_model
from instaseg.ops.keypoints import heatmaps_to_keypoints
from instaseg.structures.instances import Targets

from tests.detectors._toy_data import toy_scene

pytestmark = pytest.mark.usefixtures("one_thread")

K = 5
SMALL = {"input__min_size_test": 96, "input__max_size_test": 128, "model__keypoint_head__num_keypoints": K}


def _with_keypoints(seed: int) -> tuple[torch.Tensor, Targets]:
    """A toy scene whose objects carry K keypoints inside their boxes (some unlabelled, one on the far edge)."""
    image, target = toy_scene(seed)
    g = torch.Generator().manual_seed(100 + seed)
    boxes = target.boxes
    frac = torch.rand(len(boxes), K, 2, generator=g)
    xy = boxes[:, None, :2] + frac * (boxes[:, None, 2:] - boxes[:, None, :2])
    xy[:, 0, 0] = boxes[:, 2]  # exactly on the right edge: the last heatmap column (the peers' rule)
    visibility = torch.randint(0, 3, (len(boxes), K), generator=g).float()
    visibility[:, :2] = 2
    keypoints = torch.cat([xy, visibility[..., None]], dim=2)
    keypoints[visibility == 0] = 0
    return image, replace(target, labels=torch.zeros_like(target.labels), keypoints=keypoints)


def _slow_keypoint_loss(logits: torch.Tensor, sampled, targets, m: int) -> torch.Tensor:
    """Each positive RoI's matched keypoints, one at a time, as the paper states the loss: a
    cross-entropy over the m^2 cells of each labelled keypoint inside its RoI, averaged over them."""
    total, count, row = torch.zeros((), dtype=torch.float64), 0, 0
    for s, t in zip(sampled, targets):
        for p in range(s.num_positive):
            x0, y0, x1, y1 = (float(v) for v in s.boxes[p])
            for k in range(K):
                x, y, v = (float(c) for c in t.keypoints[int(s.gt_index[p]), k])
                cx = m - 1 if x == x1 else math.floor((x - x0) * m / (x1 - x0))
                cy = m - 1 if y == y1 else math.floor((y - y0) * m / (y1 - y0))
                if v > 0 and 0 <= cx < m and 0 <= cy < m:
                    flat = logits[row + p, k].double().reshape(-1)
                    total = total - (flat[cy * m + cx] - flat.logsumexp(0))
                    count += 1
        row += s.num_positive
    return total / count


def test_keypoint_branch_trains_on_every_positive_with_the_paper_loss():
    torch.manual_seed(0)
    model = build_model("keypoint_rcnn_r18_fpn_tiny", num_classes=1, **SMALL).train()
    images, targets = zip(*[_with_keypoints(s) for s in range(2)])
    raw = model(list(images), list(targets))
    positives = sum(s.num_positive for s in raw.sampled)
    assert raw.mask_logits is None and raw.keypoint_logits.shape == (positives, K, 56, 56) and positives > 0
    total, losses = model.loss(raw, list(targets))
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_keypoint"}
    expected = _slow_keypoint_loss(raw.keypoint_logits.detach(), raw.sampled, targets, 56)
    torch.testing.assert_close(losses["loss_keypoint"].double(), expected, rtol=1e-5, atol=1e-6)
    total.backward()
    assert model.keypoint_head.score_lowres.weight.grad.abs().sum() > 0
    assert model.keypoint_head.convs[0].weight.grad.abs().sum() > 0


def test_keypoint_model_needs_keypoints_in_its_targets():
    model = build_model("keypoint_rcnn_r18_fpn_tiny", num_classes=1, **SMALL).train()
    image, target = toy_scene(0)
    raw = model([image], [replace(target, labels=torch.zeros_like(target.labels))])
    with pytest.raises(ValueError, match="keypoints in every target"):
        model.loss(raw, [target])


def test_keypoints_are_decoded_on_the_detections_and_rescaled_to_the_original_image():
    torch.manual_seed(0)
    model = build_model("keypoint_rcnn_r18_fpn_tiny", num_classes=1, model__inference__score_thresh=0.0,
                        **SMALL).eval()
    image, _ = _with_keypoints(1)
    image = F.interpolate(image[None], size=(75, 110), mode="bilinear")[0]  # resized to 96 x 140 -> 87.3 x 128
    with torch.no_grad():
        raw = model([image])
        result = model.postprocess(raw, [(75, 110)])[0]
        detections = model.detect(raw)
        boxes = detections[0].boxes
        heatmaps = model.keypoint_head(model._pool(raw.roi_maps, [boxes], 14, 0))
    assert result.masks is None and len(result) == len(boxes) > 0
    decoded = heatmaps_to_keypoints(heatmaps, boxes)
    (h, w), (H, W) = raw.image_sizes[0], (75, 110)
    ratio = torch.tensor([W / w, H / h, 1.0], dtype=torch.float32)  # float32 ratios, as the boxes
    torch.testing.assert_close(result.keypoints, decoded * ratio)
    inside = (result.keypoints[..., 0] >= result.boxes[:, None, 0] - 1e-4) & (
        result.keypoints[..., 0] <= result.boxes[:, None, 2] + 1e-4)
    assert inside.all()


def test_keypoint_and_mask_branches_together():
    torch.manual_seed(0)
    model = build_model("keypoint_mask_rcnn_r50_fpn", num_classes=1, model__inference__score_thresh=0.0,
                        model__backbone__name="resnet18", model__keypoint_head__conv_dims=[32, 32],
                        model__fpn__out_channels=32, model__mask_head__conv_dim=16, **SMALL)
    images, targets = zip(*[_with_keypoints(s) for s in range(2)])
    model.train()
    total, losses = model.loss(model(list(images), list(targets)), list(targets))
    assert {"loss_mask", "loss_keypoint"} <= set(losses) and torch.isfinite(total)
    result = model.eval().predict([images[0]])[0]
    assert result.masks.shape[1:] == images[0].shape[1:] and result.keypoints.shape == (len(result), K, 3)


def test_keypoint_configs_refuse_what_cannot_be_built():
    base = get_preset("keypoint_rcnn_r50_fpn")
    assert base.model.mask_head is None and base.model.keypoint_head == KeypointHeadConfig()
    with pytest.raises(ConfigError, match="needs an FPN"):
        replace(base.model, fpn=None)
    with pytest.raises(ConfigError, match="mask or a keypoint branch"):
        replace(base.model, keypoint_head=None)
    with pytest.raises(ConfigError, match="MaskIoU head scores masks"):
        replace(base.model, maskiou=get_preset("ms_rcnn_r50_fpn").model.maskiou)
