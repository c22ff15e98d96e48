"""Tests for the training transforms: boxes, masks and pixels stay aligned; randomness is seeded."""

from __future__ import annotations

import colorsys
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from instaseg.config.schema import Config, InputConfig, TrainConfig
from instaseg.data.transforms import (
    Compose,
    Expand,
    PhotometricDistort,
    RandomHorizontalFlip,
    RandomSampleCrop,
    ResizeShortestEdge,
    ResizeSquare,
    _hsv_to_rgb,
    _rgb_to_hsv,
    build_transforms,
)
from instaseg.errors import ConfigError
from instaseg.structures.image_list import resized_shape
from instaseg.structures.instances import Targets


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rect_scene(height: int = 48, width: int = 64) -> tuple[torch.Tensor, Targets]:
    """Non-overlapping rectangles; the image encodes x (channel 0), y (channel 1) and the instance
    (channel 2: 100 + 30 k on instance k, 0 elsewhere), so a crop/shift can be read off the pixels."""
    rects = [(2, 3, 20, 15), (30, 5, 41, 30), (45, 20, 62, 46), (5, 30, 25, 44)]  # x1, y1, x2, y2
    image = torch.zeros(3, height, width)
    image[0] = torch.arange(width, dtype=torch.float32)[None, :] * 3
    image[1] = torch.arange(height, dtype=torch.float32)[:, None] * 3
    masks = torch.zeros(len(rects), height, width, dtype=torch.bool)
    for k, (x1, y1, x2, y2) in enumerate(rects):
        masks[k, y1:y2, x1:x2] = True
        image[2, y1:y2, x1:x2] = 100 + 30 * k
    boxes = torch.tensor(rects, dtype=torch.float32)
    return image, Targets(boxes, torch.arange(len(rects)), masks)


def _blob_scene(height: int = 37, width: int = 53, seed: int = 0) -> tuple[torch.Tensor, Targets]:
    """Random discs (tight boxes), for resize/flip consistency checks on non-rectangular shapes."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    masks, boxes = [], []
    for _ in range(4):
        cx, cy, r = rng.uniform(5, width - 5), rng.uniform(5, height - 5), rng.uniform(2, 9)
        mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
        masks.append(mask)
        boxes.append(_mask_box(mask))
    image = torch.from_numpy(rng.uniform(0, 255, (3, height, width))).float()
    return image, Targets(torch.tensor(boxes, dtype=torch.float32), torch.arange(4),
                          torch.from_numpy(np.stack(masks)))


def _mask_box(mask: np.ndarray | torch.Tensor) -> list[float]:
    """Tight continuous xyxy box of a non-empty mask (x2 = last column + 1), by a plain loop."""
    mask = np.asarray(mask)
    cols = [c for c in range(mask.shape[1]) if mask[:, c].any()]
    rows = [r for r in range(mask.shape[0]) if mask[r, :].any()]
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


# --- flip -----------------------------------------------------------------------------------------


def test_flip_moves_boxes_masks_and_pixels_together() -> None:
    image, targets = _blob_scene()
    out, flipped = RandomHorizontalFlip(p=1.0)(image, targets, _gen(0))
    width = image.shape[-1]
    for c in range(width):
        assert torch.equal(out[:, :, c], image[:, :, width - 1 - c])
    for k in range(len(flipped)):
        x1, y1, x2, y2 = targets.boxes[k].tolist()
        assert flipped.boxes[k].tolist() == [width - x2, y1, width - x1, y2]
        assert _mask_box(flipped.masks[k]) == flipped.boxes[k].tolist()
    back, twice = RandomHorizontalFlip(p=1.0)(out, flipped, _gen(0))
    assert torch.equal(back, image) and torch.equal(twice.boxes, targets.boxes)
    assert torch.equal(twice.masks, targets.masks)


def test_flip_probability() -> None:
    image, targets = _blob_scene()
    assert RandomHorizontalFlip(p=0.0)(image, targets, _gen(0))[0] is image
    flips = [not torch.equal(RandomHorizontalFlip(0.5)(image, targets, _gen(s))[0], image) for s in range(40)]
    assert 5 < sum(flips) < 35


# --- resizes --------------------------------------------------------------------------------------


def _reference_nearest(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest neighbour at pixel centres, by loops: out[r, c] = in[floor((r + .5) H / h), ...]."""
    height, width = mask.shape
    out = torch.zeros(size, dtype=torch.bool)
    for r in range(size[0]):
        for c in range(size[1]):
            out[r, c] = mask[min(int(math.floor((r + 0.5) * height / size[0])), height - 1),
                             min(int(math.floor((c + 0.5) * width / size[1])), width - 1)]
    return out


def _check_resized(image: torch.Tensor, targets: Targets, out: torch.Tensor, resized: Targets,
                   size: tuple[int, int]) -> None:
    assert out.shape == (3, *size) and resized.masks.shape == (len(resized), *size)
    assert len(resized) == len(targets)  # blobs are large enough to survive
    sx, sy = size[1] / image.shape[-1], size[0] / image.shape[-2]
    for k in range(len(targets)):
        x1, y1, x2, y2 = targets.boxes[k].double().tolist()
        assert resized.boxes[k].double().tolist() == pytest.approx([x1 * sx, y1 * sy, x2 * sx, y2 * sy], abs=1e-4)
        assert torch.equal(resized.masks[k], _reference_nearest(targets.masks[k], size))
        assert np.abs(np.array(_mask_box(resized.masks[k])) - resized.boxes[k].numpy()).max() <= 1.0


@pytest.mark.parametrize("min_size,max_size", [(20, 100), (60, 70), (74, 1000)])
def test_resize_shortest_edge(min_size: int, max_size: int) -> None:
    image, targets = _blob_scene()
    out, resized = ResizeShortestEdge((min_size,), max_size)(image, targets, _gen(0))
    size = resized_shape(37, 53, min_size, max_size)
    _check_resized(image, targets, out, resized, size)


def test_resize_draws_every_min_size_from_the_generator() -> None:
    image, targets = _blob_scene()
    resize = ResizeShortestEdge((30, 40, 50), 1000)
    shorts = [resize(image, targets, _gen(s))[0].shape[-2] for s in range(30)]
    assert set(shorts) == {resized_shape(37, 53, s, 1000)[0] for s in (30, 40, 50)}
    assert shorts == [resize(image, targets, _gen(s))[0].shape[-2] for s in range(30)]


@pytest.mark.parametrize("side", [24, 90])
def test_resize_square(side: int) -> None:
    image, targets = _blob_scene()
    out, resized = ResizeSquare(side)(image, targets, _gen(0))
    _check_resized(image, targets, out, resized, (side, side))


def test_instances_that_vanish_are_removed() -> None:
    image = torch.zeros(3, 20, 20)
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, 1, 1] = True  # a 1-pixel instance that 4x nearest downsampling never samples
    masks[1, 4:16, 4:16] = True
    targets = Targets(torch.tensor([[1.0, 1, 2, 2], [4, 4, 16, 16]]), torch.tensor([3, 5]), masks)
    _, resized = ResizeSquare(5)(image, targets)
    assert resized.labels.tolist() == [5] and resized.masks.shape == (1, 5, 5)


# --- photometric ----------------------------------------------------------------------------------


def test_rgb_hsv_conversions_match_colorsys() -> None:
    rgb = torch.rand(3, 6, 7, dtype=torch.float64)
    rgb[:, 0, 0] = 0.5  # grey: hue and saturation 0
    rgb[:, 0, 1] = 0.0  # black
    hsv = _rgb_to_hsv(rgb)
    for r in range(6):
        for c in range(7):
            h, s, v = colorsys.rgb_to_hsv(*rgb[:, r, c].tolist())
            assert hsv[:, r, c].tolist() == pytest.approx([h * 360.0, s, v], abs=1e-9)
            back = colorsys.hsv_to_rgb(*(hsv[:, r, c] / torch.tensor([360.0, 1, 1], dtype=torch.float64)).tolist())
            assert _hsv_to_rgb(hsv)[:, r, c].tolist() == pytest.approx(list(back), abs=1e-9)
    assert torch.allclose(_hsv_to_rgb(hsv), rgb, atol=1e-9)


def test_photometric_is_seeded_bounded_and_leaves_targets() -> None:
    image, targets = _blob_scene()
    distort = PhotometricDistort()
    outputs = [distort(image, targets, _gen(s)) for s in range(12)]
    for seed, (out, kept) in enumerate(outputs):
        assert kept is targets and out.shape == image.shape
        assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0
        assert torch.equal(out, distort(image, targets, _gen(seed))[0])
    assert sum(not torch.allclose(out, image) for out, _ in outputs) >= 8
    torch.manual_seed(5)
    first = distort(image, targets)[0]
    torch.manual_seed(5)
    assert torch.equal(first, distort(image, targets)[0])  # the global RNG when no generator


def test_channel_swap_alone_permutes_channels() -> None:
    image, targets = _blob_scene()
    distort = PhotometricDistort(brightness_delta=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue_delta=0.0)
    seen = set()
    for seed in range(30):
        out = distort(image, targets, _gen(seed))[0]
        matches = [p for p in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
                   if torch.allclose(out, image.index_select(0, torch.tensor(p)), atol=1e-3)]
        assert matches, "output is not a channel permutation of the input"
        seen.add(matches[0])
    assert len(seen) >= 4


# --- expand and crop ------------------------------------------------------------------------------


def _check_painted(image: torch.Tensor, targets: Targets) -> None:
    """Every instance's mask pixels carry its colour and its mask box equals its box (rectangles)."""
    for k in range(len(targets)):
        colour = 100 + 30 * int(targets.labels[k])
        assert bool((image[2][targets.masks[k]] == colour).all())
        assert int((image[2] == colour).sum()) == int(targets.masks[k].sum())
        assert _mask_box(targets.masks[k]) == targets.boxes[k].tolist()


def test_expand_keeps_masks_on_their_pixels() -> None:
    image, targets = _rect_scene()
    fill = (1.0, 2.0, 3.0)
    for seed in range(6):
        out, expanded = Expand(4.0, fill=fill, p=1.0)(image, targets, _gen(seed))
        assert 48 <= out.shape[1] <= 4 * 48 and 64 <= out.shape[2] <= 4 * 64
        top = int(torch.nonzero(out[1] == 0)[0, 0])  # row of the original row 0 ... (x=0,y=0 pixel)
        left = int(torch.nonzero((out[0] == 0) & (out[1] == 0))[0, 1])
        assert torch.equal(out[:, top:top + 48, left:left + 64], image)
        outside = torch.ones(out.shape[1:], dtype=torch.bool)
        outside[top:top + 48, left:left + 64] = False
        for channel, value in enumerate(fill):
            assert bool(((out[channel] == value) | ~outside).all())
        assert torch.equal(expanded.boxes, targets.boxes + torch.tensor([left, top, left, top]))
        _check_painted(out, expanded)
    assert Expand(p=0.0)(image, targets, _gen(0))[0] is image


def test_sample_crop_keeps_instances_whose_centre_is_inside() -> None:
    image, targets = _rect_scene()
    crop, cropped_count = RandomSampleCrop(), 0
    for seed in range(40):
        out, kept = crop(image, targets, _gen(seed))
        if out.shape == image.shape:
            assert kept is targets
            continue
        cropped_count += 1
        left, top = int(out[0, 0, 0]) // 3, int(out[1, 0, 0]) // 3
        right, bottom = left + out.shape[2], top + out.shape[1]
        assert torch.equal(out, image[:, top:bottom, left:right])
        expected = []
        for k, (x1, y1, x2, y2) in enumerate(targets.boxes.tolist()):
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            if left < cx < right and top < cy < bottom:
                expected.append(k)
                box = [min(max(x1, left), right) - left, min(max(y1, top), bottom) - top,
                       min(max(x2, left), right) - left, min(max(y2, top), bottom) - top]
                assert kept.boxes[len(expected) - 1].tolist() == box
                assert torch.equal(kept.masks[len(expected) - 1], targets.masks[k, top:bottom, left:right])
        assert kept.labels.tolist() == expected and expected
        _check_painted(out, kept)
    assert cropped_count >= 15


def test_sample_crop_leaves_images_without_instances() -> None:
    image = torch.rand(3, 10, 12)
    empty = Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 10, 12, dtype=torch.bool))
    assert RandomSampleCrop()(image, empty, _gen(0))[0] is image


# --- pipelines from a config ----------------------------------------------------------------------


def test_build_rcnn_transforms() -> None:
    config = Config(input=InputConfig(min_size_train=(30, 40), max_size_train=80),
                    train=TrainConfig(flip_prob=0.5))
    train = build_transforms(config, train=True)
    assert [type(t) for t in train.transforms] == [ResizeShortestEdge, RandomHorizontalFlip]
    image, targets = _blob_scene()
    out, _ = train(image, targets, _gen(1))
    assert tuple(out.shape[-2:]) in (resized_shape(37, 53, 30, 80), resized_shape(37, 53, 40, 80))
    identity = build_transforms(config, train=False)
    assert identity(image, targets)[0] is image


def test_build_yolact_transforms_end_square_and_consistent() -> None:
    config = Config(input=InputConfig(square=40, channel_order="BGR", pixel_mean=(1.0, 2.0, 3.0)),
                    train=TrainConfig(augmentation="yolact"))
    pipeline = build_transforms(config, train=True)
    assert [type(t) for t in pipeline.transforms] == [PhotometricDistort, Expand, RandomSampleCrop,
                                                      RandomHorizontalFlip, ResizeSquare]
    assert pipeline.transforms[1].fill == (3.0, 2.0, 1.0)  # the images are RGB
    for seed in range(8):
        image, targets = _blob_scene(seed=seed)
        out, result = pipeline(image, targets, _gen(seed))
        assert out.shape == (3, 40, 40) and result.masks.shape == (len(result), 40, 40)
        for k in range(len(result)):
            box = np.array(_mask_box(result.masks[k]))
            boxes = result.boxes[k].numpy()
            assert (box[:2] >= boxes[:2] - 1).all() and (box[2:] <= boxes[2:] + 1).all()
    with pytest.raises(ConfigError, match="augmentation"):
        build_transforms(replace(config, train=TrainConfig(augmentation="mosaic")), train=True)


def test_compose_passes_one_generator_through() -> None:
    image, targets = _blob_scene()
    pipeline = Compose([PhotometricDistort(), RandomHorizontalFlip(0.5), ResizeShortestEdge((20, 30), 100)])
    first = pipeline(image, targets, _gen(3))
    second = pipeline(image, targets, _gen(3))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1].masks, second[1].masks)
