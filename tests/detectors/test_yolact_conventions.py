"""YOLACT's inference conventions, checked against slow float64 re-statements of dbolya/yolact's rules.

Converted YOLACT / YOLACT++ weights must give the publisher's own detections, so the presets they
map to (``yolact_*_550``, ``_400``, ``_700``, ``yolact_pp_*``) follow the publisher's post-processing:
no box clipping before Fast NMS, the crop window ``x1 - 1 <= x < x2 + 1`` in prototype pixels, Fast
NMS filled up to ``top_k`` with below-threshold entries, re-scoring IoU not clamped. The reference
functions below restate those rules as plain loops (each names the file and function it follows);
the tests run instaseg's stages (and one whole 550 px model in float64) against them.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instaseg.config.io import apply_overrides, config_from_dict, config_to_dict
from instaseg.config.presets import get_preset
from instaseg.config.schema import YolactConventions
from instaseg.hub import build_model
from instaseg.detectors.yolact import YolactOutput
from instaseg.errors import ConfigError
from instaseg.ops.fast_nms import fast_nms
from instaseg.targets.yolact import crop_masks

PUBLISHER = ["yolact_r50_550", "yolact_r101_550", "yolact_r101_400", "yolact_r101_700",
             "yolact_pp_r50_550", "yolact_pp_r101_550"]
TINY = ["yolact_r18_tiny", "yolact_pp_r18_tiny"]
SIZE, PROTO = 550, 138  # input and prototype sides of the 550 px presets

# ------------------------------------------------------------------------ dbolya/yolact, restated


def _ref_sanitize_coordinates(a: float, b: float, img_size: int, padding: float = 0.0,
                              cast: bool = True) -> tuple[float, float]:
    """``layers/box_utils.py::sanitize_coordinates`` for one pair of relative coordinates: scale by
    ``img_size``, optionally cast to integers (``.long()``: toward zero), order the pair, grow by
    ``padding`` and clamp the low end at 0 and the high end at ``img_size`` (only those two)."""
    a, b = a * img_size, b * img_size
    if cast:
        a, b = float(math.trunc(a)), float(math.trunc(b))
    low, high = min(a, b), max(a, b)
    return max(low - padding, 0.0), min(high + padding, float(img_size))


def _ref_crop_window(box: list[float], height: int, width: int, padding: float = 1.0) -> torch.Tensor:
    """``layers/box_utils.py::crop`` (``padding=1``, ``sanitize_coordinates(..., cast=False)``): the
    ``(height, width)`` pixels kept for one relative ``box``: column ``x`` when ``x1 <= x < x2``."""
    x1, x2 = _ref_sanitize_coordinates(box[0], box[2], width, padding, cast=False)
    y1, y2 = _ref_sanitize_coordinates(box[1], box[3], height, padding, cast=False)
    cols = torch.tensor([x1 <= x < x2 for x in range(width)])
    rows = torch.tensor([y1 <= y < y2 for y in range(height)])
    return rows[:, None] & cols[None, :]


def _ref_iou(a: list[float], b: list[float]) -> float:
    """``layers/box_utils.py::jaccard`` for one pair (areas without "+1", intersection clamped at 0)."""
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _ref_decode(loc: list[float], prior: list[float]) -> list[float]:
    """``layers/box_utils.py::decode`` (variances 0.1, 0.2) of one prior ``(cx, cy, w, h)``, relative."""
    cx, cy = prior[0] + loc[0] * 0.1 * prior[2], prior[1] + loc[1] * 0.1 * prior[3]
    w, h = prior[2] * math.exp(loc[2] * 0.2), prior[3] * math.exp(loc[3] * 0.2)
    return [cx - w / 2, cy - h / 2, cx - w / 2 + w, cy - h / 2 + h]


def _ref_priors(conv_sizes: list[int], scales: list[list[float]], aspect_ratios: list[float],
                max_size: int, square: bool) -> list[list[float]]:
    """``yolact.py::PredictionModule.make_priors`` (``use_pixel_scales``, no ``preapply_sqrt``) over
    the levels: relative ``(cx, cy, w, h)``, location-major, then scale, then aspect ratio."""
    priors = []
    for conv, level_scales in zip(conv_sizes, scales):
        for j in range(conv):
            for i in range(conv):
                x, y = (i + 0.5) / conv, (j + 0.5) / conv
                for scale in level_scales:
                    for ar in aspect_ratios:
                        w = scale * math.sqrt(ar) / max_size
                        h = w if square else scale / math.sqrt(ar) / max_size
                        priors.append([x, y, w, h])
    return priors


def _ref_detect(conf: list[list[float]], boxes: list[list[float]], conf_thresh: float, nms_thresh: float,
                top_k: int, max_num_detections: int) -> list[tuple[int, int, float]]:
    """``layers/functions/detection.py::Detect.detect`` then ``Detect.fast_nms`` as eval.py calls them
    (``second_threshold=False``): ``conf (A, C)`` foreground scores, ``boxes (A, 4)``.

    Candidates: anchors whose best class score is ``> conf_thresh``. Per class every candidate is
    sorted by that class's score (below the threshold or not), the first ``top_k`` kept; entry ``j``
    survives when ``max_{i < j} IoU(i, j) <= nms_thresh`` (upper triangle, column max; 0 for the
    first). All survivors of all classes, by score, the first ``max_num_detections``. Returns
    ``(anchor, class, score)`` triples, best first.
    """
    candidates = [a for a in range(len(conf)) if max(conf[a]) > conf_thresh]
    found = []
    for c in range(len(conf[0])):
        ranked = sorted(candidates, key=lambda a: (-conf[a][c], a))[:top_k]
        for rank, j in enumerate(ranked):
            iou_max = max((_ref_iou(boxes[i], boxes[j]) for i in ranked[:rank]), default=0.0)
            if iou_max <= nms_thresh:
                found.append((j, c, conf[j][c]))
    found.sort(key=lambda t: -t[2])
    return found[:max_num_detections]


def _ref_postprocess(dets: list[tuple[int, int, float]], boxes: list[list[float]], coefficients: torch.Tensor,
                     prototypes: torch.Tensor, height: int, width: int, maskiou_net: nn.Module | None = None):
    """``layers/output_utils.py::postprocess`` (lincomb masks, ``crop_masks=True``, ``score_threshold=0``
    as eval.py uses it) for ``prototypes (h, w, k)``: masks ``sigmoid(P @ c)``, cropped by the
    relative boxes, re-scored by ``maskiou_net`` when given (``scores * maskiou_p``, nothing else),
    upsampled bilinearly to ``(height, width)`` and ``> 0.5``; boxes ``sanitize_coordinates(cast=False)``
    (the reference then truncates them with ``.long()``; left out here, see the test).

    Returns classes, scores, mask scores, boxes ``(N, 4)`` in image pixels, masks ``(N, H, W)``.
    """
    h, w = prototypes.shape[:2]
    masks = torch.sigmoid(prototypes @ coefficients[[d[0] for d in dets]].T).permute(2, 0, 1)
    windows = torch.stack([_ref_crop_window(boxes[d[0]], h, w) for d in dets])
    masks = masks * windows.to(masks.dtype)
    classes = [d[1] for d in dets]
    scores = torch.tensor([d[2] for d in dets], dtype=torch.float64)
    mask_scores = scores
    if maskiou_net is not None:
        maskiou_p = maskiou_net(masks)[torch.arange(len(dets)), classes]
        mask_scores = scores * maskiou_p
    masks = F.interpolate(masks[None], (height, width), mode="bilinear", align_corners=False)[0] > 0.5
    out_boxes = []
    for d in dets:
        x1, x2 = _ref_sanitize_coordinates(boxes[d[0]][0], boxes[d[0]][2], width, cast=False)
        y1, y2 = _ref_sanitize_coordinates(boxes[d[0]][1], boxes[d[0]][3], height, cast=False)
        out_boxes.append([x1, y1, x2, y2])
    return classes, scores, mask_scores, torch.tensor(out_boxes, dtype=torch.float64), masks


# ------------------------------------------------------------------------ helpers


def _relative(boxes: torch.Tensor) -> list[list[float]]:
    """Absolute xyxy on the 550 px input -> the reference's relative point form."""
    return (boxes.double() / SIZE).tolist()


def _raw(anchors: torch.Tensor, fg_probs: torch.Tensor, prototypes: torch.Tensor | None = None,
         coefficients: torch.Tensor | None = None) -> YolactOutput:
    """Head outputs of one 550 px image with the given anchors and class probabilities (zero
    deltas: the decoded boxes are the anchors), in float64."""
    a = anchors.shape[0]
    background = 1.0 - fg_probs.sum(1, keepdim=True)
    logits = torch.cat([fg_probs, background], 1).log()
    if prototypes is None:
        prototypes = torch.ones(1, 32, PROTO, PROTO, dtype=torch.float64)
    if coefficients is None:
        coefficients = torch.ones(1, a, prototypes.shape[1], dtype=torch.float64)
    return YolactOutput([(SIZE, SIZE)], anchors.double(), logits[None].double(),
                        torch.zeros(1, a, 4, dtype=torch.float64), coefficients, prototypes)


def _ref_on_raw(raw: YolactOutput, model: nn.Module) -> list[tuple[int, int, float]]:
    inf = model.inference_config
    probs = raw.class_logits[0].softmax(-1)[:, :model.num_classes]
    boxes = [_ref_decode([0.0] * 4, p) for p in _center_size(raw.anchors / SIZE)]
    return _ref_detect(probs.tolist(), boxes, inf.score_thresh, inf.nms_thresh, model.nms_top_k,
                       inf.detections_per_image)


def _center_size(boxes: torch.Tensor) -> list[list[float]]:
    return torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1).tolist()


def _random_boxes(n: int, generator: torch.Generator, low: float = -100.0, high: float = 650.0,
                  max_side: float = 300.0) -> torch.Tensor:
    """Boxes anywhere from ``low`` to ``high`` (past the 550 px image too), sides from a tenth of a
    prototype pixel up to ``max_side``."""
    xy = low + (high - low) * torch.rand(n, 2, generator=generator, dtype=torch.float64)
    side = torch.exp(torch.empty(n, 2, dtype=torch.float64).uniform_(math.log(0.4), math.log(max_side),
                                                                      generator=generator))
    return torch.cat([xy, xy + side], 1)


@pytest.fixture(scope="module")
def r50() -> nn.Module:
    return build_model("yolact_r50_550", num_classes=3).eval().double()


# ------------------------------------------------------------------------ config values


def test_presets_carry_their_conventions() -> None:
    publisher = YolactConventions(box_clip="after_nms", crop="pixel_index", fast_nms_fill="top_k",
                                  rescoring_iou="raw")
    instaseg = YolactConventions(box_clip="before_nms", crop="pixel_centre", fast_nms_fill="none",
                                 rescoring_iou="clamp")
    for name in PUBLISHER:
        assert get_preset(name).model.conventions == publisher, name
    for name in TINY:
        assert get_preset(name).model.conventions == instaseg, name
    config = get_preset("yolact_pp_r50_550")
    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize("key,value", [("box_clip", "before"), ("crop", "pixel_center"),
                                       ("fast_nms_fill", "all"), ("rescoring_iou", "clip")])
def test_bad_convention_values_fail_when_the_config_is_built(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"conventions.{key}.*{value}"):
        YolactConventions(**{key: value})
    with pytest.raises(ConfigError, match=f"conventions.{key}.*{value}"):
        apply_overrides(get_preset("yolact_r50_550"), [f"model.conventions.{key}={value}"])


def test_components_take_the_values_of_the_preset() -> None:
    model = build_model("yolact_pp_r18_tiny", input__square=64)
    assert (model.clip_boxes_before_nms, model.crop_rule, model.fill_below_threshold,
            model.clamp_rescoring_iou) == (True, "pixel_centre", False, True)
    model = build_model("yolact_pp_r18_tiny", input__square=64, model__conventions__crop="pixel_index",
                        model__conventions__box_clip="after_nms", model__conventions__fast_nms_fill="top_k",
                        model__conventions__rescoring_iou="raw")
    assert (model.clip_boxes_before_nms, model.crop_rule, model.fill_below_threshold,
            model.clamp_rescoring_iou) == (False, "pixel_index", True, False)


# ------------------------------------------------------------------------ crop


def test_pixel_index_crop_matches_yolact_crop() -> None:
    """Many boxes at a non-square prototype size: inside, past every edge, sub-pixel, inverted,
    and with edges on whole and half pixels."""
    generator = torch.Generator().manual_seed(0)
    height, width = 23, 31
    rel = torch.rand(3000, 4, generator=generator, dtype=torch.float64) * 1.6 - 0.3
    rel[:500, 2:] = rel[:500, :2] + torch.rand(500, 2, generator=generator, dtype=torch.float64) * 0.03  # sub-pixel
    rel[500:700] = torch.randint(-3, 35, (200, 4), generator=generator).double() / 2 / width  # half pixels
    scaled = rel * torch.tensor([width, height, width, height], dtype=torch.float64)  # as the reference scales
    got = crop_masks(torch.ones(len(rel), height, width, dtype=torch.float64), scaled, 1.0, rule="pixel_index")
    expected = torch.stack([_ref_crop_window(box, height, width) for box in rel.tolist()])
    assert torch.equal(got.bool(), expected)


def test_550_preset_crops_like_yolact(r50) -> None:
    generator = torch.Generator().manual_seed(1)
    anchors = _random_boxes(300, generator)
    probs = torch.zeros(300, 3, dtype=torch.float64)
    probs[torch.arange(300), torch.arange(300) % 3] = 0.1 + 0.8 * torch.rand(300, generator=generator,
                                                                              dtype=torch.float64)
    det = r50.detect(_raw(anchors, probs), 0)
    assert len(det.boxes) == 100
    windows = torch.stack([_ref_crop_window(box, PROTO, PROTO) for box in _relative(det.boxes)])
    differ = ((det.mask_probs > 0) != windows).flatten(1).any(1)
    assert not differ.any(), f"{int(differ.sum())} of 100 crop windows differ from yolact's"


# ------------------------------------------------------------------------ Fast NMS


@pytest.mark.parametrize("top_k,max_detections", [(200, 100), (7, 10), (50, 5), (200, 30)])
def test_fast_nms_fill_matches_yolact(top_k: int, max_detections: int) -> None:
    """Scores spread over the threshold so that fewer than ``top_k`` entries per class pass it."""
    generator = torch.Generator().manual_seed(top_k + max_detections)
    boxes = _random_boxes(60, generator, 0.0, 200.0, 80.0)
    scores = torch.rand(4, 60, generator=generator, dtype=torch.float64) ** 2 * 0.1
    box_index, labels, kept = fast_nms(boxes, scores, 0.5, top_k, 0.05, max_detections, keep_below_threshold=True)
    expected = _ref_detect(scores.T.tolist(), boxes.tolist(), 0.05, 0.5, top_k, max_detections)
    assert list(zip(box_index.tolist(), labels.tolist(), kept.tolist())) == expected
    if max_detections == 100:
        assert min(s for _, _, s in expected) <= 0.05  # the case this checks: below-threshold entries fill


def test_550_preset_fills_fast_nms_like_yolact(r50) -> None:
    generator = torch.Generator().manual_seed(2)
    anchors = _random_boxes(40, generator, 0.0, 500.0, 120.0)
    probs = torch.rand(40, 3, generator=generator, dtype=torch.float64) * 0.12
    det = r50.detect(_raw(anchors, probs), 0)
    expected = _ref_on_raw(_raw(anchors, probs), r50)
    assert any(s <= r50.inference_config.score_thresh for _, _, s in expected)
    assert len(det.scores) == len(expected), f"{len(det.scores)} detections, yolact keeps {len(expected)}"
    assert det.labels.tolist() == [c for _, c, _ in expected]
    torch.testing.assert_close(det.scores, torch.tensor([s for _, _, s in expected], dtype=torch.float64))
    torch.testing.assert_close(det.boxes, anchors[[a for a, _, _ in expected]])


# ------------------------------------------------------------------------ box clipping


def test_550_preset_does_not_clip_boxes_before_nms(r50) -> None:
    """A box reaching 250 px past the left edge and one inside it: IoU 0.375 as decoded, 1 once
    clipped. YOLACT keeps both; its boxes are clipped only in the results."""
    anchors = torch.tensor([[-250.0, 100, 150, 300], [0, 100, 150, 300], [300, 420, 500, 700]])
    probs = torch.tensor([[0.9, 0.01, 0.01], [0.8, 0.01, 0.01], [0.01, 0.7, 0.01]], dtype=torch.float64)
    raw = _raw(anchors, probs)
    det = r50.detect(raw, 0)
    expected = _ref_on_raw(raw, r50)
    class0 = det.boxes[det.labels == 0].tolist()
    assert [0.0, 100.0, 150.0, 300.0] in class0 and [-250.0, 100.0, 150.0, 300.0] in class0, class0
    assert det.labels.tolist() == [c for _, c, _ in expected]
    torch.testing.assert_close(det.boxes, anchors.double()[[a for a, _, _ in expected]])
    result = r50.postprocess(raw, [(SIZE, SIZE)])[0]
    assert result.boxes.min() >= 0 and result.boxes.max() <= SIZE


# ------------------------------------------------------------------------ YOLACT++ re-scoring


def test_550_pp_preset_does_not_clamp_the_rescoring_iou() -> None:
    torch.manual_seed(3)
    model = build_model("yolact_pp_r50_550", num_classes=3).eval().double()
    with torch.no_grad():
        model.rescoring_head.convs[-1].bias.fill_(1.5)  # predicted IoUs above 1
    generator = torch.Generator().manual_seed(3)
    anchors = _random_boxes(20, generator, 0.0, 500.0, 200.0)
    probs = 0.1 + 0.2 * torch.rand(20, 3, generator=generator, dtype=torch.float64)
    prototypes = torch.rand(1, 32, PROTO, PROTO, generator=generator, dtype=torch.float64)
    coefficients = torch.rand(1, 20, 32, generator=generator, dtype=torch.float64) * 2 - 1
    raw = _raw(anchors, probs, prototypes, coefficients)
    det = model.detect(raw, 0)
    assert (det.mask_scores > det.scores).any(), "the predicted IoU (> 1 here) was clamped"
    expected = _ref_on_raw(raw, model)
    _, scores, mask_scores, _, _ = _ref_postprocess(expected, _relative(anchors), coefficients[0],
                                                    prototypes[0].permute(1, 2, 0), SIZE, SIZE,
                                                    model.rescoring_head)
    torch.testing.assert_close(det.scores, scores)
    torch.testing.assert_close(det.mask_scores, mask_scores)


# ------------------------------------------------------------------------ end to end, 550 px, float64


def _calibrate(model: nn.Module, background_bias: float) -> None:
    """Random but non-degenerate weights: every conv scaled so that its first output has unit
    spread (box deltas 0.5, class logits 0.3: P6/P7 come out several times wider) on one small
    random input; then a background bias that leaves a few dozen candidates above the threshold."""
    head = model.prediction_head
    spread = {head.bbox_layer: 0.5, head.conf_layer: 0.3}

    def rescale(conv: nn.Conv2d, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if getattr(conv, "_calibrated", False):
            return None
        conv._calibrated = True
        conv.weight.mul_(spread.get(conv, 1.0) / output.std().clamp(min=1e-6))
        if conv.bias is not None:
            conv.bias.zero_()
        return conv._conv_forward(inputs[0], conv.weight, conv.bias)

    hooks = [m.register_forward_hook(rescale) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        levels = list(model.neck(list(model.backbone(torch.randn(1, 3, 96, 96)).values())).values())
        model.protonet(levels[0])
        head(levels)
        head.conf_layer.bias.view(-1, model.num_classes + 1)[:, -1] = background_bias
    for hook in hooks:
        hook.remove()


@pytest.mark.slow
def test_yolact_r50_550_gives_yolacts_detections_end_to_end() -> None:
    torch.manual_seed(0)
    model = build_model("yolact_r50_550", num_classes=3).eval()
    _calibrate(model, background_bias=5.5)
    model.double()
    image = torch.rand(3, SIZE, SIZE, dtype=torch.float64) * 255
    height, width = 420, 640  # the original image the 550 px input was resized from
    with torch.no_grad():
        raw = model([image])
        result = model.postprocess(raw, [(height, width)])[0]
        det = model.detect(raw, 0)

    head = get_preset("yolact_r50_550").model.head
    priors = _ref_priors([69, 35, 18, 9, 5], [list(s) for s in head.anchor_scales], list(head.aspect_ratios),
                         SIZE, square=True)
    torch.testing.assert_close(torch.tensor(_center_size(raw.anchors / SIZE)), torch.tensor(priors))
    boxes = [_ref_decode(loc, prior) for loc, prior in zip(raw.box_deltas[0].tolist(), priors)]
    logits = raw.class_logits[0]
    conf = torch.cat([logits[:, -1:], logits[:, :-1]], 1).softmax(-1)[:, 1:]  # the reference: background first
    inf = model.inference_config
    expected = _ref_detect(conf.tolist(), boxes, inf.score_thresh, inf.nms_thresh, model.nms_top_k,
                           inf.detections_per_image)
    classes, scores, _, out_boxes, masks = _ref_postprocess(expected, boxes, raw.mask_coefficients[0],
                                                            raw.prototypes[0].permute(1, 2, 0), height, width)
    # What this image exercises: boxes past the edges, below-threshold fill, a full list.
    kept_boxes = torch.tensor([boxes[a] for a, _, _ in expected], dtype=torch.float64)
    assert ((kept_boxes < 0) | (kept_boxes > 1)).any(1).sum() >= 5
    assert (scores <= inf.score_thresh).sum() >= 5 and len(expected) == inf.detections_per_image

    assert result.labels.tolist() == classes
    torch.testing.assert_close(result.scores, scores, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(det.boxes, kept_boxes * SIZE, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(result.boxes, out_boxes, rtol=1e-9, atol=1e-9)
    differ = (result.masks != masks).flatten(1).sum(1)
    assert differ.max() == 0, f"{int((differ > 0).sum())} masks differ, by up to {int(differ.max())} pixels"
