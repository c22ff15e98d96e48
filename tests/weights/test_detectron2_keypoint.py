"""Detectron2 Keypoint R-CNN (COCO-Keypoints/keypoint_rcnn_R_50_FPN_*) -> instaseg: layout detection
(keypoint head, mask head maybe absent), every tensor in its place, Detectron2's keypoint conventions
in the config, exact round trip, and the converted model's keypoints equal to a slow reference of
Detectron2's decode and rescale run on the model's own heatmaps.

Detectron2's code cannot run here; the references below are written from its published source
(facebookresearch/detectron2, the lines named in each docstring).
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from instaseg.cli.main import main as cli_main
from instaseg.detectors.build import build_from_config
from instaseg.errors import CheckpointError
from instaseg.hub import load_model
from instaseg.weights.detectron2 import convert_detectron2_maskrcnn, detect_detectron2_layout, to_detectron2_maskrcnn

from tests.weights._torchvision_parity import IMAGE_SIZES, parity_image
from tests.weights.test_detectron2 import d2_shapes, expected_our_name, meta_shapes, random_state
from tests.zoo._synthetic import scaled_state


def d2_keypoint_shapes(num_keypoints: int = 17, conv_dims: tuple[int, ...] = (512,) * 8, mask: bool = False,
                       depth: int = 50) -> dict[str, tuple[int, ...]]:
    """Key -> shape of Detectron2's keypoint_rcnn_R_50_FPN (one class): KRCNNConvDeconvUpsampleHead
    ``conv_fcn{1..}`` (Conv2d 3x3) and ``score_lowres`` (ConvTranspose2d (in, K, 4, 4))."""
    shapes = {k: v for k, v in d2_shapes(True, depth, 1).items() if mask or "mask_head" not in k}
    channels = 256
    for i, dim in enumerate(conv_dims, start=1):
        shapes[f"roi_heads.keypoint_head.conv_fcn{i}.weight"] = (dim, channels, 3, 3)
        shapes[f"roi_heads.keypoint_head.conv_fcn{i}.bias"] = (dim,)
        channels = dim
    shapes["roi_heads.keypoint_head.score_lowres.weight"] = (channels, num_keypoints, 4, 4)
    shapes["roi_heads.keypoint_head.score_lowres.bias"] = (num_keypoints,)
    return shapes


def expected_keypoint_name(name: str) -> str:
    if m := re.fullmatch(r"roi_heads\.keypoint_head\.conv_fcn(\d)\.(\w+)", name):
        return f"keypoint_head.convs.{int(m[1]) - 1}.{m[2]}"
    if m := re.fullmatch(r"roi_heads\.keypoint_head\.score_lowres\.(\w+)", name):
        return f"keypoint_head.score_lowres.{m[1]}"
    return expected_our_name(name)


@pytest.fixture(scope="module")
def keypoint_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(6)
    return random_state(d2_keypoint_shapes())


# ------------------------------------------------------------------------------ layout and tensors
def test_layout_keypoint_head_with_and_without_masks(keypoint_state) -> None:
    layout = detect_detectron2_layout(keypoint_state)
    assert (layout.num_keypoints, layout.keypoint_conv_dims, layout.mask) == (17, (512,) * 8, False)
    assert layout.preset == "keypoint_rcnn_r50_fpn" and "Keypoint R-CNN R-50-FPN" in layout.architecture
    both = {k: torch.empty(s, device="meta") for k, s in d2_keypoint_shapes(mask=True).items()}
    assert detect_detectron2_layout(both).preset == "keypoint_mask_rcnn_r50_fpn"
    masks_only = {k: torch.empty(s, device="meta") for k, s in d2_shapes(True, 50, 3).items()}
    assert detect_detectron2_layout(masks_only).num_keypoints == 0
    deep = {k: torch.empty(s, device="meta") for k, s in d2_keypoint_shapes(depth=101).items()}
    with pytest.raises(CheckpointError, match="R-50-FPN"):
        detect_detectron2_layout(deep)


@pytest.mark.parametrize("mask", [False, True])
def test_every_tensor_lands_where_it_should(mask: bool) -> None:
    torch.manual_seed(7)
    state = random_state(d2_keypoint_shapes(mask=mask))
    result = convert_detectron2_maskrcnn(state)
    assert {k: tuple(v.shape) for k, v in result.state.items()} == meta_shapes(result.config)
    for name, value in state.items():
        assert torch.equal(result.state[expected_keypoint_name(name)], value), name
    back = to_detectron2_maskrcnn(result.state, fpn=True)  # the round trip
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_config_carries_detectron2s_keypoint_conventions(keypoint_state) -> None:
    config = convert_detectron2_maskrcnn(keypoint_state).config
    model = config.model
    assert config.name == "keypoint_rcnn_r50_fpn_detectron2" and model.num_classes == 1 and model.mask_head is None
    kp = model.keypoint_head  # config/defaults.py ROI_KEYPOINT_HEAD: ROIAlignV2, ratio 0, 14, 8 x 512
    assert (kp.num_keypoints, kp.pooler_resolution, kp.sampling_ratio, kp.score) == (17, 14, 0, "detectron2")
    assert kp.conv_dims == (512,) * 8 and model.box_head.aligned  # the keypoint pooler uses box_head.aligned
    # Base-Keypoint-RCNN-FPN.yaml: POST_NMS_TOPK_TRAIN 1500, SMOOTH_L1_BETA 0.5; Base-RCNN-FPN: test 1000
    assert (model.rpn.post_nms_topk_train, model.rpn.post_nms_topk_test) == (1500, 1000)
    assert model.box_head.smooth_l1_beta == 0.5
    assert model.inference.detections_per_image == 100 and model.inference.score_thresh == 0.05
    assert config.input.min_size_train == (640, 672, 704, 736, 768, 800)
    assert (config.input.min_size_test, config.input.max_size_test) == (800, 1333)
    assert (config.input.resize_rounding, config.input.resize_filter, config.input.channel_order) == (
        "round", "pil_bilinear", "BGR")


def test_keypoint_convs_without_a_predictor_are_refused(keypoint_state) -> None:
    broken = {k: v for k, v in keypoint_state.items() if "score_lowres" not in k}
    with pytest.raises(CheckpointError, match="no counterpart"):
        convert_detectron2_maskrcnn(broken)


def test_model_zoo_pkl_through_the_cli(tmp_path: Path, capsys) -> None:
    arrays = {k: v.numpy() for k, v in random_state(d2_keypoint_shapes()).items()}
    src, dst = tmp_path / "model_final_04e291.pkl", tmp_path / "converted.pth"
    with src.open("wb") as handle:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, handle, protocol=4)
    assert cli_main(["convert", "--from", "detectron2", str(src), str(dst)]) == 0
    assert "Keypoint R-CNN R-50-FPN (Detectron2)" in capsys.readouterr().out
    model, config = load_model(dst)
    assert config.model.keypoint_head.score == "detectron2" and model.mask_head is None
    assert torch.equal(model.state_dict()["keypoint_head.convs.7.weight"],
                       torch.from_numpy(arrays["roi_heads.keypoint_head.conv_fcn8.weight"]))


# ------------------------------------------------------------------ Detectron2's decode, slowly
def _f32(value: float) -> float:
    return float(np.float32(value))


def reference_heatmaps_to_keypoints(maps: torch.Tensor, rois: torch.Tensor) -> list[list[tuple[float, float, float]]]:
    """detectron2/structures/keypoints.py ``heatmaps_to_keypoints`` + roi_heads/keypoint_head.py
    ``keypoint_rcnn_inference`` (which keeps columns [0, 1, 3]: x, y, score), one keypoint at a time.

    * widths/heights ``(x2 - x1).clamp(min=1)`` and their ``ceil``; the map resized bicubically
      (``align_corners=False``) to ``ceil(h) x ceil(w)``;
    * the first arg-max ``(y_int, x_int)``; ``x = (x_int.float() + 0.5) * width_corrections[i] +
      offset_x[i]``: ``x_int.float()`` is float32 and the 0-dim float64 factors do not promote it, so
      Detectron2 computes the location in float32 whatever the model's dtype (emulated with numpy);
    * score ``roi_map_scores = exp(roi_map - max) / sum(exp(maps[i] - max))`` at the peak: the sum over
      the *unresized* map, in the model's dtype.
    """
    out = []
    for heatmaps, roi in zip(maps, rois.tolist()):
        width, height = max(roi[2] - roi[0], 1.0), max(roi[3] - roi[1], 1.0)
        out_w, out_h = math.ceil(width), math.ceil(height)
        resized = F.interpolate(heatmaps[None], size=(out_h, out_w), mode="bicubic", align_corners=False)[0]
        rows = []
        for k in range(heatmaps.shape[0]):
            values = resized[k].flatten().tolist()
            peak = max(values)
            pos = values.index(peak)  # the first maximum
            y_int, x_int = divmod(pos, out_w)
            x = _f32(_f32(_f32(x_int + 0.5) * _f32(width / out_w)) + _f32(roi[0]))
            y = _f32(_f32(_f32(y_int + 0.5) * _f32(height / out_h)) + _f32(roi[1]))
            score = 1.0 / float((heatmaps[k] - peak).exp().sum())  # exp(peak - peak) = 1 over the sum
            rows.append((x, y, score))
        out.append(rows)
    return out


def reference_rescale(keypoints: list[list[tuple[float, float, float]]], model_size: tuple[int, int],
                      image_size: tuple[int, int]) -> torch.Tensor:
    """detectron2/modeling/postprocessing.py ``detector_postprocess``: ``scale_x = output_width /
    results.image_size[1]`` (Python floats), ``pred_keypoints[:, :, 0] *= scale_x`` (y likewise)."""
    scale_x, scale_y = image_size[1] / model_size[1], image_size[0] / model_size[0]
    return torch.tensor([[(x * scale_x, y * scale_y, s) for x, y, s in rows] for rows in keypoints],
                        dtype=torch.float64)


@pytest.fixture(scope="module")
def float64_model():
    """A converted synthetic Detectron2 keypoint_rcnn_R_50_FPN in float64 (a 2 x 64 keypoint head: the
    decode under test does not depend on the head's width, and 8 x 512 convs on 100 RoIs in float64
    take minutes here)."""
    arrays = {k: v.numpy() for k, v in scaled_state(d2_keypoint_shapes(conv_dims=(64, 64)), seed=8).items()}
    result = convert_detectron2_maskrcnn(arrays)
    model = build_from_config(result.config).eval()
    model.load_state_dict(result.state)
    return model.double()


@pytest.mark.slow
@pytest.mark.parametrize("size", IMAGE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_keypoints_are_detectron2s_decode_and_rescale_of_the_models_heatmaps(float64_model, size) -> None:
    """At 800 / 1333 (ResizeShortestEdge: 480x640 -> 800x1067, 410x300 -> 1093x800), float64."""
    model = float64_model
    captured = []
    hook = model.keypoint_head.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        with torch.no_grad():
            raw = model([parity_image(size) * 255])
            boxes = model.detect(raw)[0].boxes
            result = model.postprocess(raw, [size])[0]
    finally:
        hook.remove()
    assert len(result) > 10 and len(captured) == 1
    model_size = raw.image_sizes[0]
    expected = reference_rescale(reference_heatmaps_to_keypoints(captured[0], boxes), model_size, size)
    ours = result.keypoints
    # scores: float64 on both sides
    torch.testing.assert_close(ours[..., 2], expected[..., 2], rtol=1e-12, atol=0)
    # locations: Detectron2's float32 arithmetic (above) and instaseg's float32 size ratio (torchvision's)
    # differ by float32 rounding only; a different heatmap cell would be >= 0.3 px off
    diff = (ours[..., :2] - expected[..., :2]).abs()
    spacing = torch.finfo(torch.float32).eps * expected[..., :2].abs().clamp(min=1)
    print(f"{size}: {len(result)} detections, max keypoint diff {float(diff.max()):.2e} px "
          f"({float((diff / spacing).max()):.2f} float32 spacings)")
    assert float((diff / spacing).max()) <= 2.0
