"""torchvision keypointrcnn_resnet50_fpn -> instaseg: the layout is told apart from Mask R-CNN's,
every tensor lands where it should (the keypoint head's Sequential indices 0, 2, ..., 14 onto convs
0..7), the counts come from the file, the round trip is exact and ``instaseg convert`` builds the
``keypoint_rcnn_r50_fpn_torchvision`` model from it.

The synthetic state dicts follow torchvision's naming rules (``KeypointRCNNHeads`` is a Sequential of
conv, ReLU pairs; ``KeypointRCNNPredictor.kps_score_lowres`` a ConvTranspose2d (in, K, 4, 4)).
Detection-level parity with torchvision's own code is test_torchvision_keypoint_parity.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from instaseg.cli.main import main as cli_main
from instaseg.errors import CheckpointError
from instaseg.hub import build_model, load_model
from instaseg.weights.torchvision import (
    INSTASEG_BN_EPS,
    convert_torchvision_keypointrcnn,
    convert_torchvision_maskrcnn,
    detect_torchvision_layout,
    read_torchvision_file,
    to_torchvision_keypointrcnn,
    to_torchvision_maskrcnn,
)

from tests.weights.test_torchvision import expected_our_name, is_bn_weight, random_state, torchvision_shapes


def keypointrcnn_shapes(num_outputs: int = 2, num_keypoints: int = 17,
                        conv_dims: tuple[int, ...] = (512,) * 8) -> dict[str, tuple[int, ...]]:
    """Key -> shape of torchvision's keypointrcnn_resnet50_fpn (``num_outputs`` classes incl. background)."""
    shapes = {k: v for k, v in torchvision_shapes(num_outputs).items() if "mask_" not in k}
    channels = 256
    for i, dim in enumerate(conv_dims):  # Sequential(conv, ReLU, conv, ReLU, ...): convs at 0, 2, 4, ...
        shapes[f"roi_heads.keypoint_head.{2 * i}.weight"] = (dim, channels, 3, 3)
        shapes[f"roi_heads.keypoint_head.{2 * i}.bias"] = (dim,)
        channels = dim
    shapes["roi_heads.keypoint_predictor.kps_score_lowres.weight"] = (channels, num_keypoints, 4, 4)
    shapes["roi_heads.keypoint_predictor.kps_score_lowres.bias"] = (num_keypoints,)
    return shapes


def expected_keypoint_name(tv_name: str) -> str:
    """The instaseg name of a torchvision Keypoint R-CNN tensor, written apart from the converter."""
    if m := re.fullmatch(r"roi_heads\.keypoint_head\.(\d+)\.(\w+)", tv_name):
        return f"keypoint_head.convs.{int(m[1]) // 2}.{m[2]}"
    if m := re.fullmatch(r"roi_heads\.keypoint_predictor\.kps_score_lowres\.(\w+)", tv_name):
        return f"keypoint_head.score_lowres.{m[1]}"
    return expected_our_name(tv_name)


@pytest.fixture(scope="module")
def coco_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    return random_state(keypointrcnn_shapes())


@pytest.fixture(scope="module")
def model_keys() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_model("keypoint_rcnn_r50_fpn_torchvision", num_classes=1)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_layouts_are_told_apart(coco_state) -> None:
    layout = detect_torchvision_layout(coco_state)
    assert (layout.num_classes, layout.num_keypoints, layout.keypoint_conv_dims) == (1, 17, (512,) * 8)
    assert "Keypoint R-CNN" in layout.architecture
    mask = detect_torchvision_layout(random_state(torchvision_shapes(3)))
    assert (mask.num_classes, mask.num_keypoints) == (2, 0) and "Mask R-CNN" in mask.architecture
    with pytest.raises(CheckpointError, match="not a torchvision Keypoint R-CNN"):
        convert_torchvision_keypointrcnn(random_state(torchvision_shapes(3)))
    with pytest.raises(CheckpointError, match="unknown torchvision keys"):  # the Mask R-CNN converter refuses it
        convert_torchvision_maskrcnn(coco_state)


def test_every_tensor_lands_where_it_should(coco_state, model_keys) -> None:
    ours, layout = convert_torchvision_keypointrcnn(coco_state, source_bn_eps=INSTASEG_BN_EPS)
    assert layout.num_classes == 1
    assert {k: tuple(v.shape) for k, v in ours.items()} == model_keys  # nothing missing, nothing unused
    for tv_name, value in coco_state.items():
        new = expected_keypoint_name(tv_name)
        if tv_name.endswith(("cls_score.weight", "cls_score.bias")):
            assert torch.equal(ours[new][0], value[1]) and torch.equal(ours[new][1], value[0])  # person, background
        elif "bbox_pred" in tv_name and "roi_heads" in tv_name:
            assert torch.equal(ours[new], value[4:])
        else:
            assert torch.equal(ours[new], value), tv_name


@pytest.mark.parametrize("eps", [INSTASEG_BN_EPS, 0.0])
def test_round_trip_reproduces_the_torchvision_dict(coco_state, eps: float) -> None:
    ours, layout = convert_torchvision_keypointrcnn(coco_state, source_bn_eps=eps)
    back = to_torchvision_keypointrcnn(ours, layout.num_classes, target_bn_eps=eps)
    assert set(back) == set(coco_state)
    for name, value in coco_state.items():
        if "bbox_pred" in name and "roi_heads" in name:
            assert torch.equal(back[name][4:], value[4:]) and not back[name][:4].any()
        elif is_bn_weight(name) and eps != INSTASEG_BN_EPS:
            torch.testing.assert_close(back[name], value, rtol=3e-7, atol=0)
        else:
            assert torch.equal(back[name], value), name
    with pytest.raises(CheckpointError, match="to_torchvision_keypointrcnn"):
        to_torchvision_maskrcnn(ours, layout.num_classes)


def test_counts_come_from_the_file(tmp_path: Path) -> None:
    """A fine-tuned checkpoint: 3 classes, 5 keypoints, a narrower 4-conv head."""
    state = random_state(keypointrcnn_shapes(num_outputs=4, num_keypoints=5, conv_dims=(64,) * 4))
    src = tmp_path / "kp.pth"
    torch.save({"model": state, "epoch": 3}, src)
    converted = read_torchvision_file(src)
    head = converted.config.model.keypoint_head
    assert converted.config.name == "keypoint_rcnn_r50_fpn_torchvision" and converted.config.model.num_classes == 3
    assert (head.num_keypoints, head.conv_dims) == (5, (64,) * 4)
    assert converted.config.model.mask_head is None
    assert "Keypoint R-CNN" in converted.summary.architecture


def test_cli_end_to_end(tmp_path: Path, coco_state, capsys) -> None:
    src, dst = tmp_path / "keypointrcnn.pth", tmp_path / "converted.pth"
    torch.save(coco_state, src)
    assert cli_main(["convert", "--from", "torchvision", str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "Keypoint R-CNN R-50-FPN" in printed and "num_classes: 1" in printed
    model, config = load_model(dst)  # built from the stored config, loaded strictly
    assert config.name == "keypoint_rcnn_r50_fpn_torchvision" and model.mask_head is None
    kp = config.model.keypoint_head
    assert (kp.num_keypoints, kp.sampling_ratio, kp.score) == (17, 2, "logit")
    assert not config.model.box_head.aligned  # torchvision's legacy RoIAlign, the keypoint pooler's too
    expected, _ = convert_torchvision_keypointrcnn(coco_state)  # default: COCO_V1's eps 0
    loaded = model.state_dict()
    assert set(loaded) == set(expected) and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert torch.equal(loaded["keypoint_head.convs.7.weight"], coco_state["roi_heads.keypoint_head.14.weight"])
