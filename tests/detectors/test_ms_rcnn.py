import torch

from instaseg.hub import build_model

from tests.detectors._toy_data import toy_scene

SMALL = {"input__min_size_test": 96, "input__max_size_test": 128}


def test_ms_rcnn_is_mask_rcnn_with_one_more_part():
    plain = build_model("mask_rcnn_r18_fpn_tiny", num_classes=3, **SMALL)
    scoring = build_model("ms_rcnn_r18_fpn_tiny", num_classes=3, **SMALL)
    assert type(plain) is type(scoring)
    extra = set(scoring.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("maskiou_head.") for k in extra)


def test_ms_rcnn_trains_and_fuses_scores():
    model = build_model("ms_rcnn_r18_fpn_tiny", num_classes=3, model__inference__score_thresh=0.0, **SMALL)
    images, targets = zip(*[toy_scene(s) for s in range(2)])
    model.train()
    raw = model(list(images), list(targets))
    total, losses = model.loss(raw, list(targets))
    assert "loss_maskiou" in losses and torch.isfinite(total)
    # the MaskIoU loss trains its head but not the mask head through its input (a fixed input)
    head_grad, mask_grad = torch.autograd.grad(
        losses["loss_maskiou"], [model.maskiou_head.predictor.weight, model.mask_head.predictor.weight],
        retain_graph=True, allow_unused=True,
    )
    assert head_grad is not None and head_grad.abs().sum() > 0
    assert mask_grad is None
    total.backward()
    model.eval()
    raw = model(list(images))
    results = model.postprocess(raw, [(96, 96)] * 2)
    detections = model.detect(raw)
    labels = torch.cat([d.labels for d in detections])
    # the MaskIoU head's prediction for each detection's class, by hand
    features = model._pool(raw.roi_maps, [d.boxes for d in detections], model.mask_config.pooler_resolution)
    with torch.no_grad():
        maskiou = model._predict_maskiou(model.mask_head(features), features, labels)
    predicted = maskiou[torch.arange(labels.numel()), labels].clamp(0, 1)
    scores = torch.cat([r.scores for r in results])
    mask_scores = torch.cat([r.mask_scores for r in results])
    assert labels.numel() > 0
    torch.testing.assert_close(mask_scores, scores * predicted)


def test_soft_nms_switch_changes_post_processing():
    image, _ = toy_scene(0)
    torch.manual_seed(0)
    hard = build_model("mask_rcnn_r18_fpn_tiny", num_classes=3, model__inference__score_thresh=0.0, **SMALL).eval()
    soft = build_model("mask_rcnn_r18_fpn_tiny", num_classes=3, model__inference__score_thresh=0.0,
                       model__inference__nms="soft_nms", **SMALL).eval()
    soft.load_state_dict(hard.state_dict())
    a, b = hard.predict([image])[0], soft.predict([image])[0]
    assert len(b) >= len(a)  # SoftNMS decays scores instead of removing boxes
    assert torch.all(b.scores[:-1] >= b.scores[1:])
