"""YOLACT converter: a synthetic state dict with the reference's key names and shapes."""

from __future__ import annotations

import torch

from instaseg.detectors.build import build_model
from instaseg.weights.yolact import convert_yolact_state_dict, yolact_config_for


def _reference_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our tiny model's weights under dbolya/yolact's names (written out by hand from yolact.py)."""
    proto = {"convs.0": 0, "convs.1": 2, "convs.2": 4, "post_conv": 8, "out_conv": 10}
    ref = {}
    for name, tensor in model.state_dict().items():
        t = torch.randn_like(tensor) if tensor.is_floating_point() else tensor.clone()
        part, rest = name.split(".", 1)
        if part == "backbone":
            if rest.startswith("layer"):
                stage, tail = rest[len("layer"):].split(".", 1)
                rest = f"layers.{int(stage) - 1}.{tail}".replace("conv_offset.", "conv_offset_mask.")
            ref[f"backbone.{rest}"] = t
        elif part == "neck":
            kind, index, param = rest.split(".")
            if kind == "extra_convs":
                ref[f"fpn.downsample_layers.{index}.{param}"] = t
            else:
                ref_kind = "lat_layers" if kind == "lateral_convs" else "pred_layers"
                ref[f"fpn.{ref_kind}.{2 - int(index)}.{param}"] = t  # reference lists C5 first
        elif part == "protonet":
            module, param = rest.rsplit(".", 1)
            ref[f"proto_net.{proto[module]}.{param}"] = t
        elif part == "prediction_head":
            module, param = rest.split(".")
            module = "upfeature.0" if module == "upfeature" else module
            ref[f"prediction_layers.0.{module}.{param}"] = t
        elif part == "semantic_head":
            ref[f"semantic_seg_conv.{rest.split('.')[-1]}"] = t
        elif part == "rescoring_head":
            _, index, param = rest.split(".")
            ref[f"maskiou_net.maskiou_net.{2 * int(index)}.{param}"] = t
    for key in [k for k in ref if k.endswith("conv_offset_mask.weight")]:
        ref[key.replace("conv_offset_mask.weight", "bias")] = torch.zeros(ref[key.replace("conv_offset_mask.", "")].shape[0])
    return ref


def test_convert_loads_strictly_and_moves_background_last() -> None:
    model = build_model("yolact_pp_r18_tiny")
    ref = _reference_state(model)
    ours, notes = convert_yolact_state_dict(ref)
    model.load_state_dict(ours, strict=True)
    num_anchors, num_classes = 9, model.num_classes
    conf = ref["prediction_layers.0.conf_layer.weight"]
    converted = model.prediction_head.conf_layer.weight
    for a in range(num_anchors):
        base = a * (num_classes + 1)
        assert torch.equal(converted[base + num_classes], conf[base])  # background: first -> last
        for c in range(num_classes):
            assert torch.equal(converted[base + c], conf[base + 1 + c])
    assert torch.equal(model.neck.lateral_convs[2].weight, ref["fpn.lat_layers.0.weight"])
    assert torch.equal(model.protonet.post_conv.weight, ref["proto_net.8.weight"])
    assert torch.equal(model.rescoring_head.convs[5].weight, ref["maskiou_net.maskiou_net.10.weight"])
    assert torch.equal(model.backbone.layer4[0].conv2.conv_offset.weight,
                       ref["backbone.layers.3.0.conv2.conv_offset_mask.weight"])
    assert any("background" in n for n in notes)


def test_config_detection_from_key_names() -> None:
    def fake(res4_blocks: int, plus: bool, num_classes: int = 80, anchors: int = 3) -> dict[str, torch.Tensor]:
        state = {f"backbone.layers.2.{j}.conv1.weight": torch.zeros(1) for j in range(res4_blocks)}
        state["prediction_layers.0.bbox_layer.weight"] = torch.zeros(anchors * 4, 1, 1, 1)
        state["prediction_layers.0.conf_layer.weight"] = torch.zeros(anchors * (num_classes + 1), 1, 1, 1)
        if plus:
            state["maskiou_net.maskiou_net.0.weight"] = torch.zeros(1)
        return state

    assert yolact_config_for(fake(23, False)).name == "yolact_r101_550"
    assert yolact_config_for(fake(6, True, anchors=9)).name == "yolact_pp_r50_550"
    assert yolact_config_for(fake(6, False, num_classes=3)).model.num_classes == 3
