"""YOLACT / YOLACT++ wiring: presets, forward/loss/postprocess contract, head layouts, DCN layout."""

from __future__ import annotations

import pytest
import torch

from instaseg.backbones.resnet import build_resnet
from instaseg.config.io import config_from_dict, config_to_dict, load_yaml, save_yaml
from instaseg.config.presets import get_preset, list_presets
from instaseg.config.schema import MaskRCNNConfig, YolactConfig
from instaseg.hub import build_model
from instaseg.heads.mask_rescoring import MaskRescoringHead
from instaseg.heads.yolact_head import ProtoNet, YolactPredictionHead
from instaseg.structures.instances import Instances, Targets

TINY = ["yolact_r18_tiny", "yolact_pp_r18_tiny"]
YOLACT_PRESETS = [name for name in list_presets() if name.startswith("yolact")]


def _targets(size: int = 64) -> Targets:
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    masks[0, 4:30, 6:40] = True
    masks[1, 30:60, 34:58] = True
    return Targets(torch.tensor([[6.0, 4, 40, 30], [34, 30, 58, 60]]), torch.tensor([1, 3]), masks)


def _small(name: str) -> torch.nn.Module:
    return build_model(name, input__square=64)


@pytest.mark.parametrize("name", YOLACT_PRESETS)
def test_yolact_presets_round_trip_through_dict(name: str) -> None:
    config = get_preset(name)
    assert isinstance(config.model, YolactConfig)
    assert config_from_dict(config_to_dict(config)) == config


def test_yaml_picks_the_model_config_by_arch(tmp_path) -> None:
    save_yaml(get_preset("yolact_pp_r18_tiny"), tmp_path / "y.yaml")
    save_yaml(get_preset("mask_rcnn_r18_fpn_tiny"), tmp_path / "m.yaml")
    assert isinstance(load_yaml(tmp_path / "y.yaml").model, YolactConfig)
    assert isinstance(load_yaml(tmp_path / "m.yaml").model, MaskRCNNConfig)


@pytest.mark.parametrize("name", TINY)
def test_train_forward_loss_and_backward(name: str) -> None:
    model = _small(name).train()
    targets = [_targets(), Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                                   torch.zeros(0, 64, 64, dtype=torch.bool))]
    raw = model([torch.rand(3, 64, 64) * 255 for _ in range(2)], targets)
    total, losses = model.loss(raw, targets)
    expected = {"loss_cls", "loss_box", "loss_mask", "loss_semantic"}
    if name.startswith("yolact_pp"):
        expected.add("loss_rescoring")
    assert set(losses) == expected and torch.isfinite(total)
    total.backward()
    assert model.prediction_head.mask_layer.weight.grad.abs().sum() > 0
    assert model.protonet.out_conv.weight.grad.abs().sum() > 0
    if model.rescoring_head is not None:
        assert model.rescoring_head.convs[-1].weight.grad is not None


def test_a_few_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    model = _small("yolact_r18_tiny").train()
    image, targets = [torch.rand(3, 64, 64) * 255], [_targets()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    values = []
    for _ in range(8):
        total, _ = model.loss(model(image, targets), targets)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        values.append(total.item())
    assert values[-1] < values[0]


@pytest.mark.parametrize("name", TINY)
def test_predict_returns_instances_in_the_original_frame(name: str) -> None:
    model = _small(name).eval()
    results = model.predict([torch.rand(3, 50, 70) * 255, torch.rand(3, 64, 64) * 255])
    assert len(results) == 2
    for result, (h, w) in zip(results, [(50, 70), (64, 64)]):
        assert isinstance(result, Instances) and result.image_size == (h, w)
        assert len(result) <= model.inference_config.detections_per_image
        assert (result.boxes[:, 2] <= w).all() and (result.boxes[:, 3] <= h).all()
        assert (result.mask_scores is not None) == name.startswith("yolact_pp")
        if len(result):
            assert result.labels.max() < model.num_classes


def test_postprocess_with_no_detection() -> None:
    model = _small("yolact_r18_tiny").eval()
    model.inference_config = type(model.inference_config)(score_thresh=1.1)
    result = model.predict([torch.rand(3, 40, 40) * 255])[0]
    assert len(result) == 0 and result.masks.shape == (0, 40, 40)


def test_protonet_doubles_p3_and_is_nonnegative() -> None:
    out = ProtoNet(8, 8, 4)(torch.randn(2, 8, 5, 7))
    assert out.shape == (2, 4, 10, 14) and (out >= 0).all()
    assert ProtoNet(8, 8, 4, upsample=4)(torch.randn(1, 8, 5, 7)).shape == (1, 4, 20, 28)
    with pytest.raises(ValueError, match="upsample"):
        ProtoNet(8, 8, 4, upsample=0)


def test_fpn_variants_of_the_config() -> None:
    """The reference FPN by default (also for configs saved before ``fpn.extra_from`` and
    ``fpn.relu_outputs`` existed); MMDetection's (P6 from C5, no ReLU) when the config says so."""
    config = get_preset("yolact_r18_tiny")
    data = config_to_dict(config)
    del data["model"]["fpn"]["extra_from"], data["model"]["fpn"]["relu_outputs"]
    reference = build_model(config_from_dict(data)).neck
    assert reference.relu_outputs and reference.extra_from == "output"
    assert reference.extra_convs[0].weight.shape[1] == 64  # reads P5
    mmdet = build_model("yolact_r18_tiny", model__fpn__extra_from="input", model__fpn__relu_outputs=False).neck
    assert not mmdet.relu_outputs and mmdet.extra_from == "input"
    assert mmdet.extra_convs[0].weight.shape[1] == 512  # reads C5 of the ResNet-18
    features = [torch.randn(1, c, s, s) for c, s in ((128, 8), (256, 4), (512, 2))]
    assert (mmdet(features)["p3"] < 0).any()  # no ReLU on the outputs
    assert not build_model("mask_rcnn_r18_fpn_tiny").neck.relu_outputs  # None: R-CNN's FPN has none


def test_finer_prototypes_train_and_predict() -> None:
    """``model.head.proto_upsample=4``: stride-2 prototypes, through the loss and inference."""
    torch.manual_seed(0)
    model = build_model("yolact_r18_tiny", num_classes=3, input__square=64, model__head__proto_upsample=4)
    assert model.protonet.upsample == 4
    images = [torch.rand(3, 64, 64) * 255 for _ in range(2)]
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, 10:30, 12:40] = True
    targets = [Targets(torch.tensor([[12.0, 10.0, 40.0, 30.0]]), torch.tensor([1]), masks) for _ in range(2)]
    model.train()
    raw = model(images, targets)
    assert raw.prototypes.shape[-2:] == (32, 32)  # P3 of a 64 px input is 8x8
    total, terms = model.loss(raw, targets)
    total.backward()
    assert torch.isfinite(total) and model.protonet.out_conv.weight.grad.abs().sum() > 0
    model.eval()
    model.inference_config = type(model.inference_config)(score_thresh=0.0)
    result = model.predict([images[0]])[0]
    assert result.masks.shape[-2:] == (64, 64) and len(result) > 0


def test_prediction_head_flattens_location_major_anchor_minor() -> None:
    head = YolactPredictionHead(4, num_classes=2, num_anchors=3, num_prototypes=2, hidden=4)
    x = torch.randn(1, 4, 3, 5)
    logits, deltas, coefficients = head([x])
    raw = head.bbox_layer(torch.relu(head.upfeature(x)))  # (1, 3 * 4, 3, 5)
    for y in range(3):
        for col in range(5):
            for a in range(3):
                index = (y * 5 + col) * 3 + a
                assert torch.allclose(deltas[0, index], raw[0, a * 4:(a + 1) * 4, y, col])
    assert logits.shape == (1, 45, 3) and coefficients.abs().max() <= 1


def test_rescoring_head_shapes() -> None:
    head = MaskRescoringHead(num_classes=3)
    assert head(torch.rand(2, 138, 138)).shape == (2, 3)
    assert head(torch.rand(2, 16, 16)).shape == (2, 3)  # padded up to the 63 px minimum
    assert (head(torch.rand(1, 70, 70)) >= 0).all()


def _deformable_blocks(backbone: torch.nn.Module) -> dict[str, list[int]]:
    return {
        name: [i for i, block in enumerate(getattr(backbone, name)) if hasattr(block.conv2, "conv_offset")]
        for name in ("layer1", "layer2", "layer3", "layer4")
    }


def test_yolact_pp_dcn_layout() -> None:
    r101 = get_preset("yolact_pp_r101_550").model.backbone
    backbone = build_resnet(r101.name, out_features=r101.out_features, deform_stages=r101.deform_stages,
                            deform_interval=r101.deform_interval)
    # The reference's dcn_interval=3 on res3-res5 of R-101: blocks 0, 3 | 0, 3, ..., 21 | 0.
    assert _deformable_blocks(backbone) == {"layer1": [], "layer2": [0, 3], "layer3": list(range(0, 23, 3)),
                                            "layer4": [0]}
    r50 = get_preset("yolact_pp_r50_550").model.backbone
    backbone = build_resnet(r50.name, out_features=r50.out_features, deform_stages=r50.deform_stages,
                            deform_interval=r50.deform_interval)
    assert _deformable_blocks(backbone) == {"layer1": [], "layer2": [0, 1, 2, 3], "layer3": list(range(6)),
                                            "layer4": [0, 1, 2]}


@pytest.mark.parametrize("method", ["fast_nms", "nms", "soft_nms"])
def test_yolact_suppression_switch(method):
    model = build_model("yolact_r18_tiny", num_classes=3, model__inference__nms=method,
                        model__inference__score_thresh=0.0, input__square=64)
    assert model.inference_config.nms == method
    result = model.predict([torch.rand(3, 48, 56) * 255])[0]
    assert result.masks.shape[1:] == (48, 56) and len(result) <= model.inference_config.detections_per_image
    assert torch.all(result.scores[:-1] >= result.scores[1:])


def test_mask_loss_of_a_subsample_estimates_the_full_sum() -> None:
    """With ``masks_to_train`` < positives the reference scales the sampled sum by P / sampled:
    the mean over single-mask samples of that estimate is the loss over all P masks."""
    model = _small("yolact_r18_tiny").train()
    targets = [_targets()]
    with torch.no_grad():
        raw = model([torch.rand(3, 64, 64) * 255], targets)
        full = model.loss(raw, targets)[1]["loss_mask"]
        index, logits = raw.mask_index[0], raw.mask_logits[0]
        assert index.numel() == int(raw.anchor_targets[0].positive.sum()) > 1
        singles = []
        for j in range(index.numel()):
            raw.mask_index, raw.mask_logits = [index[j:j + 1]], [logits[j:j + 1]]
            singles.append(model.loss(raw, targets)[1]["loss_mask"])
    torch.testing.assert_close(torch.stack(singles).mean(), full)
