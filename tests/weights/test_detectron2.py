"""Detectron2 Mask R-CNN (R-50/R-101, FPN/C4) -> instaseg: layout detection, every tensor in its
place, Detectron2 conventions in the config, exact round trip, .pkl read through the safe unpickler.

The synthetic Detectron2 state dicts are generated here from Detectron2's naming rules
(modeling/backbone/resnet.py, fpn.py, proposal_generator/rpn.py, roi_heads/*.py), small num_classes.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from instaseg.cli.main import main as cli_main
from tests.structures.test_image_list_resize import _detectron2_pixels, _detectron2_size
from instaseg.detectors.build import build_from_config
from instaseg.errors import CheckpointError
from instaseg.hub import load_model
from instaseg.layers.norm import FrozenBatchNorm2d
from instaseg.weights.detectron2 import (
    DETECTRON2_PIXEL_MEAN_BGR,
    convert_detectron2_maskrcnn,
    detect_detectron2_layout,
    detectron2_config,
    detectron2_name_to_ours,
    to_detectron2_maskrcnn,
)

NORM = ("weight", "bias", "running_mean", "running_var")
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def d2_shapes(fpn: bool, depth: int, num_classes: int, groups: int = 1,
              width_per_group: int = 64) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a Detectron2 GeneralizedRCNN Mask R-CNN (StandardROIHeads or Res5ROIHeads);
    ``groups``/``width_per_group``: a ResNeXt (Detectron2's NUM_GROUPS / WIDTH_PER_GROUP)."""
    body = "backbone.bottom_up." if fpn else "backbone."
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, shape: tuple[int, ...]) -> None:  # a Detectron2 Conv2d with a FrozenBN norm
        shapes[name + ".weight"] = shape
        shapes.update({f"{name}.norm.{p}": (shape[0],) for p in NORM})

    conv(body + "stem.conv1", (64, 3, 7, 7))
    in_channels = 64
    for stage, blocks in zip(range(2, 6), BLOCKS[depth]):
        planes = 64 * 2 ** (stage - 2)
        width = planes * width_per_group // 64 * groups
        prefix = f"{body}res{stage}." if (fpn or stage < 5) else "roi_heads.res5."
        for i in range(blocks):
            conv(f"{prefix}{i}.conv1", (width, in_channels, 1, 1))
            conv(f"{prefix}{i}.conv2", (width, width // groups, 3, 3))
            conv(f"{prefix}{i}.conv3", (4 * planes, width, 1, 1))
            if i == 0:
                conv(f"{prefix}{i}.shortcut", (4 * planes, in_channels, 1, 1))
            in_channels = 4 * planes

    def layer(name: str, shape: tuple[int, ...]) -> None:  # weight + bias
        shapes[name + ".weight"] = shape
        shapes[name + ".bias"] = (shape[1],) if "deconv" in name else (shape[0],)

    feat, anchors = (256, 3) if fpn else (1024, 15)
    if fpn:
        for level, channels in zip(range(2, 6), (256, 512, 1024, 2048)):
            layer(f"backbone.fpn_lateral{level}", (256, channels, 1, 1))
            layer(f"backbone.fpn_output{level}", (256, 256, 3, 3))
    layer("proposal_generator.rpn_head.conv", (feat, feat, 3, 3))
    layer("proposal_generator.rpn_head.objectness_logits", (anchors, feat, 1, 1))
    layer("proposal_generator.rpn_head.anchor_deltas", (4 * anchors, feat, 1, 1))
    box_features = 1024 if fpn else 2048
    if fpn:
        layer("roi_heads.box_head.fc1", (1024, 256 * 7 * 7))
        layer("roi_heads.box_head.fc2", (1024, 1024))
        for k in range(1, 5):
            layer(f"roi_heads.mask_head.mask_fcn{k}", (256, 256, 3, 3))
    layer("roi_heads.box_predictor.cls_score", (num_classes + 1, box_features))
    layer("roi_heads.box_predictor.bbox_pred", (4 * num_classes, box_features))
    layer("roi_heads.mask_head.deconv", (256 if fpn else 2048, 256, 2, 2))  # ConvTranspose2d: (in, out, k, k)
    layer("roi_heads.mask_head.predictor", (num_classes, 256, 1, 1))
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], as_numpy: bool = False) -> dict:
    state = {}
    for index, (name, shape) in enumerate(shapes.items()):
        value = torch.rand(shape) + index  # distinct ranges: a misplaced tensor cannot pass
        state[name] = value.numpy() if as_numpy else value
    return state


_BLOCK = [(r"conv(\d)\.weight", r"conv\1.weight"), (r"conv(\d)\.norm\.(\w+)", r"bn\1.\2"),
          (r"shortcut\.weight", "downsample.0.weight"), (r"shortcut\.norm\.(\w+)", r"downsample.1.\1")]


def expected_our_name(name: str) -> str:
    """Our name of a Detectron2 tensor, written independently of the converter."""
    name = re.sub(r"^backbone\.bottom_up\.", "backbone.", name)
    m = re.fullmatch(r"backbone\.stem\.(.+)", name)
    if m:
        return "backbone." + _block(m[1])
    m = re.fullmatch(r"backbone\.res(\d)\.(\d+)\.(.+)", name)
    if m:
        return f"backbone.layer{int(m[1]) - 1}.{m[2]}.{_block(m[3])}"
    m = re.fullmatch(r"roi_heads\.res5\.(\d+)\.(.+)", name)
    if m:
        return f"box_head.res5.{m[1]}.{_block(m[2])}"
    table = {r"backbone\.fpn_lateral(\d)\.(\w+)": lambda m: f"neck.lateral_convs.{int(m[1]) - 2}.{m[2]}",
             r"backbone\.fpn_output(\d)\.(\w+)": lambda m: f"neck.output_convs.{int(m[1]) - 2}.{m[2]}",
             r"proposal_generator\.rpn_head\.(\w+)\.(\w+)": lambda m: f"rpn_head.{m[1]}.{m[2]}",
             r"roi_heads\.box_head\.fc(\d)\.(\w+)": lambda m: f"box_head.fcs.{int(m[1]) - 1}.{m[2]}",
             r"roi_heads\.box_predictor\.(\w+)\.(\w+)": lambda m: f"box_predictor.{m[1]}.{m[2]}",
             r"roi_heads\.mask_head\.mask_fcn(\d)\.(\w+)": lambda m: f"mask_head.convs.{int(m[1]) - 1}.{m[2]}",
             r"roi_heads\.mask_head\.(deconv|predictor)\.(\w+)": lambda m: f"mask_head.{m[1]}.{m[2]}"}
    for pattern, build in table.items():
        m = re.fullmatch(pattern, name)
        if m:
            return build(m)
    raise AssertionError(name)


def _block(rest: str) -> str:
    for pattern, replacement in _BLOCK:
        if re.fullmatch(pattern, rest):
            return re.sub(pattern, replacement, rest)
    raise AssertionError(rest)


def meta_shapes(config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def r50_fpn() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    return random_state(d2_shapes(True, 50, 3))


@pytest.fixture(scope="module")
def r50_c4() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return random_state(d2_shapes(False, 50, 2))


# ----------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("layout", ["r50_fpn", "r50_c4"])
def test_every_tensor_lands_where_it_should(layout: str, request) -> None:
    state = request.getfixturevalue(layout)
    result = convert_detectron2_maskrcnn(state)
    fpn = layout.endswith("fpn")
    assert (result.layout.fpn, result.layout.depth) == (fpn, 50)
    assert result.layout.num_classes == (3 if fpn else 2)
    assert result.config.model.num_classes == result.layout.num_classes
    # nothing missing, nothing unused: exactly the built model's keys and shapes
    assert {k: tuple(v.shape) for k, v in result.state.items()} == meta_shapes(result.config)
    for name, value in state.items():
        assert torch.equal(result.state[expected_our_name(name)], value), name
    # Detectron2 already puts background last: the predictor rows are not reordered
    assert torch.equal(result.state["box_predictor.cls_score.weight"][-1],
                       state["roi_heads.box_predictor.cls_score.weight"][-1])


def test_r101_fpn_layout_and_keys() -> None:
    shapes = d2_shapes(True, 101, 4)
    state = {k: torch.zeros(s) for k, s in shapes.items()}  # zeros: only names and shapes matter here
    result = convert_detectron2_maskrcnn(state)
    assert (result.layout.fpn, result.layout.depth, result.layout.num_classes) == (True, 101, 4)
    assert result.config.model.backbone.name == "resnet101"
    assert {k: tuple(v.shape) for k, v in result.state.items()} == meta_shapes(result.config)
    c4 = {k: torch.empty(s, device="meta") for k, s in d2_shapes(False, 101, 4).items()}
    assert detect_detectron2_layout(c4).preset == "mask_rcnn_r101_c4"


def test_config_carries_detectron2_conventions(r50_fpn) -> None:
    config = convert_detectron2_maskrcnn(r50_fpn).config
    assert config.name == "mask_rcnn_r50_fpn_detectron2"
    assert config.input.channel_order == "BGR"
    assert config.input.pixel_mean == (103.530, 116.280, 123.675) and config.input.pixel_std == (1.0, 1.0, 1.0)
    model = config.model
    assert model.backbone.stride_in_1x1 and model.rpn.anchor_convention == "detectron2"
    assert model.box_head.aligned and model.box_head.sampling_ratio == 0
    assert model.mask_head.paste == "centres" and not model.mask_head.class_agnostic
    # older checkpoints stored the pixel statistics: they win over the defaults
    stored = {**r50_fpn, "pixel_mean": torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1),
              "pixel_std": torch.tensor([4.0, 5.0, 6.0]).view(3, 1, 1)}
    result = convert_detectron2_maskrcnn(stored)
    assert result.config.input.pixel_mean == (1.0, 2.0, 3.0) and result.config.input.pixel_std == (4.0, 5.0, 6.0)
    assert "pixel_mean" not in result.state


@pytest.mark.parametrize("height, width", [(480, 640), (375, 500), (410, 300)])
def test_converted_model_sees_detectron2s_input(r50_fpn, height: int, width: int) -> None:
    """DefaultPredictor at the default test size: ResizeShortestEdge(800, 1333) on the uint8 BGR
    image (PIL bilinear), then (x - PIXEL_MEAN) / PIXEL_STD, zero-padded to a multiple of 32."""
    config = convert_detectron2_maskrcnn(r50_fpn).config
    assert (config.input.resize_rounding, config.input.resize_filter) == ("round", "pil_bilinear")
    model = build_from_config(config).eval()
    rng = np.random.default_rng(height)
    rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    batch = model.preprocess([torch.from_numpy(rgb).permute(2, 0, 1).float()])
    size = _detectron2_size(height, width, 800, 1333)
    resized = torch.from_numpy(_detectron2_pixels(np.ascontiguousarray(rgb[..., ::-1]), size).copy())
    expected = (resized.permute(2, 0, 1).float() - torch.tensor(DETECTRON2_PIXEL_MEAN_BGR).view(3, 1, 1))
    assert batch.image_sizes == [size]
    padded = tuple(-(-s // 32) * 32 for s in size)
    assert tuple(batch.tensor.shape) == (1, 3, *padded)
    assert torch.equal(batch.tensor[0, :, : size[0], : size[1]], expected)
    assert not batch.tensor[0, :, size[0]:].any() and not batch.tensor[0, :, :, size[1]:].any()


@pytest.mark.parametrize("layout", ["r50_fpn", "r50_c4"])
def test_round_trip_is_exact(layout: str, request) -> None:
    state = request.getfixturevalue(layout)
    result = convert_detectron2_maskrcnn(state)
    back = to_detectron2_maskrcnn(result.state, fpn=result.layout.fpn)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_ignored_and_refused_keys(r50_c4) -> None:
    extra = {**r50_c4, "backbone.res2.0.conv1.norm.num_batches_tracked": torch.tensor(3),
             "proposal_generator.anchor_generator.cell_anchors.0": torch.zeros(15, 4)}
    assert set(convert_detectron2_maskrcnn(extra).state) == set(convert_detectron2_maskrcnn(r50_c4).state)
    with pytest.raises(CheckpointError, match="no counterpart"):
        convert_detectron2_maskrcnn({**r50_c4, "roi_heads.keypoint_head.conv_fcn1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="Caffe2"):
        convert_detectron2_maskrcnn({"conv1_w": np.zeros(1), "res2_0_branch2a_w": np.zeros(1)})
    with pytest.raises(CheckpointError, match="deformable"):
        convert_detectron2_maskrcnn({**r50_c4, "backbone.res3.0.conv2_offset.weight": torch.zeros(1)})
    grouped = dict(r50_c4)
    grouped["backbone.res2.0.conv2.weight"] = torch.zeros(64, 2, 3, 3)
    with pytest.raises(CheckpointError, match="ResNeXt"):
        convert_detectron2_maskrcnn(grouped)
    shallow = {k: v for k, v in r50_c4.items() if not k.startswith("backbone.res4.5.")}
    with pytest.raises(CheckpointError, match="blocks per stage"):
        convert_detectron2_maskrcnn(shallow)


def test_x101_32x8d_fpn_maps_onto_its_preset_with_its_conventions() -> None:
    # Shapes only (meta tensors): the real model has 107 M parameters.
    state = {k: torch.empty(shape, device="meta") for k, shape in d2_shapes(True, 101, 80, 32, 8).items()}
    layout = detect_detectron2_layout(state)
    assert (layout.preset, layout.groups, layout.width_per_group) == ("mask_rcnn_x101_32x8d_fpn", 32, 8)
    config = detectron2_config(layout)
    # configs/COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml: a C2 model, stride in the 3x3
    assert config.model.backbone.name == "resnext101_32x8d" and not config.model.backbone.stride_in_1x1
    assert config.input.pixel_std == (57.375, 57.120, 58.395) and config.input.channel_order == "BGR"
    renamed = {detectron2_name_to_ours(k, fpn=True): tuple(v.shape) for k, v in state.items()}
    assert renamed == meta_shapes(config)
    other = {k: torch.empty(shape, device="meta") for k, shape in d2_shapes(True, 101, 80, 64, 4).items()}
    with pytest.raises(CheckpointError, match="X-101-32x8d FPN"):
        detect_detectron2_layout(other)


def test_class_agnostic_mask_head(r50_c4) -> None:
    state = {**r50_c4, "roi_heads.mask_head.predictor.weight": torch.randn(1, 256, 1, 1),
             "roi_heads.mask_head.predictor.bias": torch.randn(1)}
    result = convert_detectron2_maskrcnn(state)
    assert result.config.model.mask_head.class_agnostic
    assert {k: tuple(v.shape) for k, v in result.state.items()} == meta_shapes(result.config)


def test_norms_without_statistics_become_the_exact_affine(r50_c4) -> None:
    # Caffe2-era checkpoints stored only the folded affine (weight, bias) of each norm.
    state = {k: v for k, v in r50_c4.items() if not k.endswith(("running_mean", "running_var"))}
    result = convert_detectron2_maskrcnn(state)
    assert any("no running statistics" in note for note in result.notes)
    assert set(result.state) == set(convert_detectron2_maskrcnn(r50_c4).state)
    for layer in ("backbone.bn1", "backbone.layer3.2.bn3", "box_head.res5.0.downsample.1"):
        weight, bias = result.state[f"{layer}.weight"], result.state[f"{layer}.bias"]
        bn = FrozenBatchNorm2d(weight.numel())
        bn.load_state_dict({p: result.state[f"{layer}.{p}"] for p in NORM})
        x = torch.randn(2, weight.numel(), 4, 4)
        assert torch.equal(bn(x), x * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_model_zoo_pkl_through_the_cli(tmp_path: Path, capsys) -> None:
    torch.manual_seed(4)
    arrays = random_state(d2_shapes(True, 50, 3), as_numpy=True)
    src, dst = tmp_path / "model_final_f10217.pkl", tmp_path / "converted.pth"
    with src.open("wb") as handle:  # the model-zoo layout: numpy arrays in a plain pickle
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, handle, protocol=4)
    assert cli_main(["convert", "--from", "detectron2", str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "R-50-FPN (Detectron2)" in printed and "num_classes: 3" in printed
    assert f"converted:   {len(arrays)} tensors" in printed
    model, config = load_model(dst)
    assert config.name == "mask_rcnn_r50_fpn_detectron2" and config.input.pixel_mean == DETECTRON2_PIXEL_MEAN_BGR
    loaded = model.state_dict()
    for name in ("backbone.bottom_up.res4.5.conv2.norm.running_var", "backbone.fpn_lateral3.weight",
                 "roi_heads.mask_head.predictor.weight", "roi_heads.box_predictor.cls_score.bias"):
        assert torch.equal(loaded[expected_our_name(name)], torch.from_numpy(arrays[name]))

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "__author__": _Evil(marker)}, protocol=2))
    assert cli_main(["convert", "--from", "detectron2", str(evil), str(tmp_path / "e.pth")]) == 2
    assert "refused to unpickle the global" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "e.pth").exists()


def test_c4_loads_strictly_into_a_real_model(r50_c4) -> None:
    result = convert_detectron2_maskrcnn(r50_c4)
    model = build_from_config(result.config)
    outcome = model.load_state_dict(result.state, strict=True)
    assert not outcome.missing_keys and not outcome.unexpected_keys
    assert torch.equal(model.box_head.res5[2].bn3.running_mean, r50_c4["roi_heads.res5.2.conv3.norm.running_mean"])
    assert model.backbone.layer2[0].conv1.stride == (2, 2)  # stride in the 1x1, as MSRA weights need


def test_pth_payloads_are_unwrapped() -> None:
    from instaseg.weights.detectron2 import _detectron2_state

    state = {"backbone.res2.0.conv1.weight": torch.zeros(1)}
    assert _detectron2_state({"model": state, "iteration": 4999, "scheduler": {}}, "x") is state
    assert _detectron2_state(state, "x") is state
    with pytest.raises(CheckpointError, match="blobs"):
        _detectron2_state({"blobs": {"conv1_w": np.zeros(1)}}, "x")
