"""The publishers' test-time resize rules: sizes and pixels, against slow references of their code.

Each reference names the publisher's lines it reproduces. Sizes are checked at the publishers'
default test size (800 / 1333) on image sizes that need rounding (640x480, 500x375, 300x410, ...).
"""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from instaseg.config.io import apply_overrides
from instaseg.config.presets import get_preset
from instaseg.config.schema import InputConfig
from instaseg.errors import ConfigError
from instaseg.structures.image_list import resize_image, resized_shape

# (height, width) pairs that need rounding at 800 / 1333, plus tall, wide and already-sized ones
_SIZES = [(480, 640), (375, 500), (410, 300), (427, 640), (640, 480), (333, 500), (300, 1200),
          (799, 1000), (800, 1333), (1000, 3000), (37, 53)]


def _random_sizes(count: int = 150) -> list[tuple[int, int]]:
    rng = random.Random(0)
    return [(rng.randint(20, 2500), rng.randint(20, 2500)) for _ in range(count)]


def _torchvision_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """torchvision/models/detection/transform.py ``_resize_image_and_masks`` (eager branch):
    ``scale_factor = min(self_min_size / min_size, self_max_size / max_size)`` on the Python ints,
    then ``F.interpolate(image[None], scale_factor=scale_factor, mode="bilinear",
    recompute_scale_factor=True, align_corners=False)``: the size is whatever interpolate makes."""
    scale_factor = min(min_size / min(height, width), max_size / max(height, width))
    image = torch.empty(1, 1, height, width, device="meta")
    out = F.interpolate(image, scale_factor=scale_factor, mode="bilinear", recompute_scale_factor=True,
                        align_corners=False)
    return int(out.shape[-2]), int(out.shape[-1])


def _detectron2_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """detectron2/data/transforms/augmentation_impl.py ``ResizeShortestEdge.get_transform``
    (``scale = size * 1.0 / min(h, w)`` ... ``neww = int(neww + 0.5)``), line by line."""
    size = short_edge
    scale = size * 1.0 / min(height, width)
    if height < width:
        newh, neww = size, scale * width
    else:
        newh, neww = scale * height, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    neww = int(neww + 0.5)
    newh = int(newh + 0.5)
    return newh, neww


def test_floor_rule_is_torchvisions_size_at_the_default_test_size():
    assert resized_shape(480, 640, 800, 1333) == (800, 1066)  # torchvision: 1066x800, not 1066x799
    assert resized_shape(375, 500, 800, 1333) == (800, 1066)
    assert resized_shape(300, 410, 800, 1333) == (800, 1093)
    for min_size, max_size in ((800, 1333), (640, 1066), (512, 853), (144, 216)):
        for height, width in _SIZES + _random_sizes():
            expected = _torchvision_size(height, width, min_size, max_size)
            assert resized_shape(height, width, min_size, max_size) == expected, (height, width, min_size)


def test_round_rule_is_detectron2s_resize_shortest_edge():
    assert resized_shape(480, 640, 800, 1333, rounding="round") == (800, 1067)
    for min_size, max_size in ((800, 1333), (640, 1066), (600, 1000)):
        for height, width in _SIZES + _random_sizes():
            expected = _detectron2_size(height, width, min_size, max_size)
            assert resized_shape(height, width, min_size, max_size, rounding="round") == expected, (height, width)


def _mmcv_size(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """mmcv/image/geometric.py ``rescale_size((w, h), scale=(max_size, short_edge))`` as
    MMDetection's ``Resize(keep_ratio=True)`` calls it: ``scale_factor = min(max_long_edge /
    max(h, w), max_short_edge / min(h, w))``, then ``_scale_size``: ``int(w * float(scale) + 0.5)``."""
    scale_factor = min(max(max_size, short_edge) / max(height, width), min(max_size, short_edge) / min(height, width))
    return int(height * float(scale_factor) + 0.5), int(width * float(scale_factor) + 0.5)


def test_mmcv_rule_is_mmdetections_keep_ratio_resize():
    assert resized_shape(480, 640, 800, 1333, rounding="mmcv") == (800, 1067)
    # one of the sizes where Detectron2's order of operations rounds the other way
    assert resized_shape(22, 124, 800, 1333, rounding="mmcv") == (237, 1333)
    assert resized_shape(22, 124, 800, 1333, rounding="round") == (236, 1333)
    for min_size, max_size in ((800, 1333), (640, 1066), (550, 550)):
        for height, width in _SIZES + _random_sizes() + [(22, 124), (44, 22), (30, 172)]:
            expected = _mmcv_size(height, width, min_size, max_size)
            assert resized_shape(height, width, min_size, max_size, rounding="mmcv") == expected, (height, width)


def _detectron2_pixels(image_hwc: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """detectron2/data/transforms/transform.py ``ResizeTransform.apply_image`` for a uint8 image:
    ``pil_image = Image.fromarray(img)``; ``pil_image.resize((self.new_w, self.new_h), interp)``
    with ``interp = Image.BILINEAR`` (ResizeShortestEdge's default); ``np.asarray(pil_image)``."""
    return np.asarray(Image.fromarray(image_hwc).resize((size[1], size[0]), Image.BILINEAR))


@pytest.mark.parametrize("size", [(800, 1067), (30, 41), (37, 53), (64, 20)])
def test_pil_bilinear_filter_gives_detectron2s_pixels(size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    image[5:20, 8:30] = (250, 10, 128)  # edges, where filters differ most
    ours = resize_image(torch.from_numpy(image).permute(2, 0, 1).double(), size, "pil_bilinear")
    expected = torch.from_numpy(_detectron2_pixels(image, size)).permute(2, 0, 1).double()
    assert ours.dtype == torch.float64 and tuple(ours.shape) == (3, *size)
    assert torch.equal(ours, expected)
    if size != (37, 53):  # the float filter is a different rule: it must not pass by accident
        assert not torch.equal(resize_image(torch.from_numpy(image).permute(2, 0, 1).double(), size), expected)


def test_unknown_resize_rules_are_refused_when_the_config_is_made():
    with pytest.raises(ConfigError, match="resize_rounding"):
        InputConfig(resize_rounding="ceil")
    with pytest.raises(ConfigError, match="resize_filter"):
        apply_overrides(get_preset("mask_rcnn_r50_fpn"), ["input.resize_filter=bicubic"])
    with pytest.raises(ConfigError, match="anchor_strides"):
        apply_overrides(get_preset("mask_rcnn_r50_fpn"), ["model.rpn.anchor_strides=auto"])
    with pytest.raises(ValueError):
        resized_shape(480, 640, 800, 1333, rounding="ceil")
