import math

import pytest
import torch

import instaseg
from instaseg.hub import build_model
from instaseg.structures.boxes import box_iou

from tests.detectors._toy_data import toy_scene

TINY = "mask_rcnn_r18_fpn_tiny"
SMALL_INPUT = {"input__min_size_test": 96, "input__max_size_test": 128}


def _batch(n=2, size=96):
    images, targets = zip(*[toy_scene(seed, size) for seed in range(n)])
    return list(images), list(targets)


@pytest.mark.parametrize("preset_overrides", [
    {},
    {"model__box_head__pooler_type": "pool"},
    {"model__mask_head__loss": "softmax"},
    {"model__mask_head__class_agnostic": True},
    {"model__mask_head__head": "mlp"},
])
def test_train_forward_loss_and_inference_contract(preset_overrides):
    model = build_model(TINY, num_classes=3, **SMALL_INPUT, **preset_overrides)
    images, targets = _batch()
    model.train()
    raw = model(images, targets)
    total, losses = model.loss(raw, targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[:5])
    model.eval()
    results = model.predict(images)
    assert len(results) == 2
    for result, image in zip(results, images):
        assert result.masks.shape[1:] == image.shape[1:]
        assert result.masks.dtype == torch.bool
        assert len(result) <= model.inference_config.detections_per_image
        if len(result):
            assert (result.labels >= 0).all() and (result.labels < 3).all()
            assert (result.boxes[:, 2] <= image.shape[2] + 1e-4).all()


def test_untrained_mask_loss_starts_near_ln2():
    model = build_model(TINY, num_classes=3, **SMALL_INPUT)
    images, targets = _batch()
    model.train()
    _, losses = model.loss(model(images, targets), targets)
    assert abs(float(losses["loss_mask"]) - math.log(2)) < 0.02
    assert abs(float(losses["loss_cls"]) - math.log(4)) < 0.1  # uniform over 3 classes + background


def test_softmax_mask_probability_is_foreground_whatever_class_the_mask_head_guesses():
    """Multinomial masks (Table 2(b)): the loss labels a RoI's pixels inside its mask with the RoI's
    class and the others background, so a pixel is in the object when it is not background. The
    mask head that cannot yet tell the classes apart spreads that foreground over the C classes;
    thresholding the detected class's share (at most 1/C of it) then gave empty masks."""
    model = build_model(TINY, num_classes=3, model__mask_head__loss="softmax")
    logits = torch.zeros(2, 4, 28, 28)  # channels: 3 classes, background last
    logits[:, 3] = 4.0  # outside: background
    logits[:, 3, 7:21, 7:21] = -4.0  # inside: foreground, the three classes equally likely
    logits[1, 2, 7:21, 7:21] = 6.0  # second RoI: the head is sure of class 2 (not the detected class 1)
    probs = model.class_mask_probabilities(logits, torch.tensor([1, 1]))
    inside = torch.zeros(28, 28, dtype=torch.bool)
    inside[7:21, 7:21] = True
    assert probs.shape == (2, 28, 28)
    assert (probs[:, inside] > 0.95).all() and (probs[:, ~inside] < 0.1).all()
    expected = 1 - logits.softmax(dim=1)[:, 3]
    torch.testing.assert_close(probs, expected)


def test_c4_model_runs_train_and_inference():
    model = build_model("mask_rcnn_r50_c4", num_classes=2, model__backbone__name="resnet18",
                        model__backbone__norm="BN", model__backbone__freeze_at=0,
                        model__rpn__pre_nms_topk_test=200, model__rpn__post_nms_topk_test=50,
                        model__box_head__batch_size_per_image=32, **SMALL_INPUT)
    images, targets = _batch(1)
    targets[0].labels.clamp_(max=1)
    model.train()
    raw = model(images, targets)
    total, losses = model.loss(raw, targets)
    assert torch.isfinite(total) and raw.mask_logits.shape[-1] == 14
    model.eval()
    assert model.predict(images)[0].masks.shape[1:] == images[0].shape[1:]


def test_inference_returns_original_coordinates_after_resizing():
    model = build_model(TINY, num_classes=3, input__min_size_test=192, input__max_size_test=256)
    model.eval()
    image, _ = toy_scene(0, 96)
    raw = model([image])
    assert raw.image_sizes == [(192, 192)]
    result = model.postprocess(raw, [(96, 96)])[0]
    assert result.masks.shape == (len(result), 96, 96)
    assert (result.boxes <= 96 + 1e-4).all()


@pytest.mark.slow
def test_tiny_preset_learns_a_few_images():
    torch.manual_seed(0)
    model = build_model(TINY, num_classes=3, **SMALL_INPUT, model__inference__score_thresh=0.3,
                        model__box_head__batch_size_per_image=64)
    images, targets = _batch(3)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02,
                                momentum=0.9, weight_decay=1e-4)
    model.train()
    first_mask_loss = None
    for step in range(200):
        lr = 0.02 * min(1.0, (step + 1) / 40)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total, losses = model.loss(model(images, targets), targets)
        first_mask_loss = first_mask_loss or float(losses["loss_mask"])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert abs(first_mask_loss - math.log(2)) < 0.02
    model.eval()
    results = model.predict(images)
    ious = []
    for result, target in zip(results, targets):
        for g in range(len(target)):
            same = torch.where(result.labels == target.labels[g])[0]
            assert same.numel() > 0, "a ground-truth object was not detected with its class"
            best = same[box_iou(target.boxes[g : g + 1], result.boxes[same]).argmax()]
            inter = (result.masks[best] & target.masks[g]).sum()
            union = (result.masks[best] | target.masks[g]).sum()
            ious.append(float(inter) / float(union))
    assert min(ious) > 0.8, ious
