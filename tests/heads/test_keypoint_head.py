"""The keypoint head: shapes, initialisation, and the peers' layouts renamed onto it."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instaseg.heads.keypoint_head import KeypointHead


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)


def test_keypoint_head_paper_shapes() -> None:
    head = KeypointHead(in_channels=256, num_keypoints=17)
    assert len(head.convs) == 8 and all(c.out_channels == 512 for c in head.convs)
    assert head.score_lowres.kernel_size == (4, 4) and head.score_lowres.stride == (2, 2)
    out = head(torch.randn(1, 256, 14, 14))
    assert out.shape == (1, 17, 56, 56)
    assert head(torch.randn(0, 256, 14, 14)).shape == (0, 17, 56, 56)


def test_keypoint_head_narrow_and_init() -> None:
    head = KeypointHead(in_channels=8, num_keypoints=3, conv_dims=(16, 32), up_scale=2)
    assert head(torch.randn(1, 8, 7, 7)).shape == (1, 3, 28, 28)
    for layer in [*head.convs, head.score_lowres]:
        assert not layer.bias.any()
    # fan_out = weight.shape[0] * receptive field, for the deconv (in, out, k, k) as for the convs
    for layer in [*head.convs, head.score_lowres]:
        w = layer.weight
        expected = math.sqrt(2.0 / (w.shape[0] * w.shape[2] * w.shape[3]))
        assert w.std().item() == pytest.approx(expected, rel=0.25)


def _torchvision_layout(in_channels: int, dims: tuple[int, ...], num_keypoints: int) -> nn.ModuleDict:
    """The peer's module layout (conv, ReLU pairs in a Sequential; a separate predictor)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for dim in dims:
        layers += [nn.Conv2d(channels, dim, 3, padding=1), nn.ReLU()]
        channels = dim
    predictor = nn.Module()
    predictor.kps_score_lowres = nn.ConvTranspose2d(channels, num_keypoints, 4, stride=2, padding=1)
    return nn.ModuleDict({"keypoint_head": nn.Sequential(*layers), "keypoint_predictor": predictor})


def test_peer_weights_rename_onto_the_head() -> None:
    dims = (6, 6, 5)
    peer = _torchvision_layout(4, dims, 3)
    renamed = {}
    for key, value in peer.state_dict().items():
        if key.startswith("keypoint_head."):
            _, index, param = key.split(".")
            renamed[f"convs.{int(index) // 2}.{param}"] = value
        else:
            renamed[key.replace("keypoint_predictor.kps_score_lowres.", "score_lowres.")] = value
    head = KeypointHead(4, 3, conv_dims=dims)
    head.load_state_dict(renamed)  # strict: every key and shape matches
    x = torch.randn(2, 4, 5, 5)
    expected = F.interpolate(peer["keypoint_predictor"].kps_score_lowres(peer["keypoint_head"](x)),
                             scale_factor=2.0, mode="bilinear", align_corners=False)
    assert torch.allclose(head(x), expected, atol=1e-6)
    detectron2_keys = {f"conv_fcn{i + 1}.weight" for i in range(3)} | {"score_lowres.weight"}
    ours = {k for k in head.state_dict() if k.endswith("weight")}
    assert {re.sub(r"conv_fcn(\d)", lambda m: f"convs.{int(m[1]) - 1}", k) for k in detectron2_keys} == ours
