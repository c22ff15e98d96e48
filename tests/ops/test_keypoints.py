"""Heatmap decoding, both paths (the eager loop over RoIs and the ragged one ``torch.export``
traces), against a slow float64 loop reference (its own bicubic resize), and hand cases."""

from __future__ import annotations

import math

import pytest
import torch

from instaseg.ops.keypoints import heatmaps_to_keypoints, heatmaps_to_keypoints_ragged
from instaseg.targets.keypoints import keypoints_to_heatmap


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)

DECODERS = {"loop": heatmaps_to_keypoints, "ragged": heatmaps_to_keypoints_ragged}


def _cubic(t: float, a: float = -0.75) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def _taps(out_index: int, in_size: int, out_size: int) -> list[tuple[int, float]]:
    """Input rows and weights of one output row: half-pixel centres, border rows repeated."""
    src = (out_index + 0.5) * in_size / out_size - 0.5
    base = math.floor(src)
    frac = src - base
    return [(min(max(base + k, 0), in_size - 1), _cubic(frac - k)) for k in (-1, 0, 1, 2)]


def _resize(grid: list[list[float]], out_h: int, out_w: int) -> list[list[float]]:
    in_h, in_w = len(grid), len(grid[0])
    return [[sum(wy * wx * grid[iy][ix] for iy, wy in _taps(r, in_h, out_h) for ix, wx in _taps(c, in_w, out_w))
             for c in range(out_w)] for r in range(out_h)]


def _reference(heatmaps: torch.Tensor, rois: torch.Tensor, score: str) -> list[list[list[float]]]:
    result = []
    for maps, (x0, y0, x1, y1) in zip(heatmaps.tolist(), rois.tolist()):
        w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        out_w, out_h = math.ceil(w), math.ceil(h)
        row_result = []
        for grid in maps:
            big = _resize(grid, out_h, out_w)
            best, best_r, best_c = -math.inf, 0, 0
            for r in range(out_h):
                for c in range(out_w):
                    if big[r][c] > best:  # strict: the first maximum in row-major order
                        best, best_r, best_c = big[r][c], r, c
            value = best if score == "logit" else 1.0 / sum(math.exp(v - best) for row in grid for v in row)
            row_result.append([x0 + (best_c + 0.5) * w / out_w, y0 + (best_r + 0.5) * h / out_h, value])
        result.append(row_result)
    return result


HAND_ROIS = [
    [2.0, 3.0, 14.4, 9.7],  # non-integer width and height
    [0.5, 0.25, 6.5, 6.25],  # the heatmap's size: no resampling to speak of
    [10.0, 10.0, 10.6, 13.2],  # narrower than a pixel: width clamped to 1
    [-3.3, 4.1, 1.2, 20.0],  # partly left of the image, tall
    [7.0, 1.0, 16.0, 4.5],
]


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("score", ["logit", "detectron2"])
def test_heatmaps_to_keypoints_matches_loop_reference(decoder: str, score: str) -> None:
    generator = torch.Generator().manual_seed(0)
    heatmaps = torch.randn(5, 3, 6, 6, dtype=torch.float64, generator=generator) * 3
    rois = torch.tensor(HAND_ROIS, dtype=torch.float64)
    out = DECODERS[decoder](heatmaps, rois, score)
    assert out.shape == (5, 3, 3) and out.dtype == torch.float64
    assert torch.allclose(out, torch.tensor(_reference(heatmaps, rois, score), dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("decoder", DECODERS)
def test_random_maps_and_rois_match_loop_reference(decoder: str) -> None:
    # Random sizes on both sides of the map's (down- and upsampling, non-square RoIs), tiny and
    # fractional boxes, and a non-square map.
    generator = torch.Generator().manual_seed(3)
    heatmaps = torch.randn(12, 2, 5, 7, dtype=torch.float64, generator=generator) * 4
    corners = torch.rand(12, 2, dtype=torch.float64, generator=generator) * 30 - 5
    sizes = torch.rand(12, 2, dtype=torch.float64, generator=generator) ** 2 * 25
    rois = torch.cat((corners, corners + sizes), dim=1)
    out = DECODERS[decoder](heatmaps, rois)
    assert torch.allclose(out, torch.tensor(_reference(heatmaps, rois, "logit"), dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("decoder", DECODERS)
def test_ties_go_to_the_first_pixel_in_row_major_order(decoder: str) -> None:
    m = 8
    heatmaps = torch.zeros(2, 3, m, m, dtype=torch.float64)
    heatmaps[:, 0, 3, 5] = heatmaps[:, 0, 3, 1] = 2.0  # one row: the left one
    heatmaps[:, 1, 2, 6] = heatmaps[:, 1, 5, 0] = 2.0  # the upper one, though further right
    # map 2: all zero, every pixel ties: the first one
    rois = torch.tensor([[10.0, 20.0, 18.0, 28.0], [0.0, 0.0, 8.0, 8.0]], dtype=torch.float64)  # m x m px
    out = DECODERS[decoder](heatmaps, rois)
    expected = torch.tensor([[11.5, 23.5, 2.0], [16.5, 22.5, 2.0], [10.5, 20.5, 0.0]], dtype=torch.float64)
    assert torch.equal(out[0], expected)
    assert torch.equal(out[1], expected - torch.tensor([10.0, 20.0, 0.0], dtype=torch.float64))


def test_both_paths_agree_in_float32() -> None:
    # Not bit for bit: PyTorch's bicubic kernel fuses multiply-adds (module docstring).
    generator = torch.Generator().manual_seed(2)
    heatmaps = torch.randn(20, 5, 14, 14, generator=generator) * 3
    corners = torch.rand(20, 2, generator=generator) * 200
    rois = torch.cat((corners, corners + torch.rand(20, 2, generator=generator) * 60 + 0.2), dim=1)
    for score in ("logit", "detectron2"):
        loop, ragged = heatmaps_to_keypoints(heatmaps, rois, score), heatmaps_to_keypoints_ragged(heatmaps, rois, score)
        assert torch.equal(loop[..., :2], ragged[..., :2])
        torch.testing.assert_close(loop[..., 2], ragged[..., 2], rtol=1e-5, atol=1e-5)


def test_heatmaps_to_keypoints_hand_case_and_round_trip() -> None:
    m = 8
    heatmaps = torch.zeros(1, 2, m, m)
    heatmaps[0, 0, 3, 5] = 10.0
    heatmaps[0, 1, 7, 0] = 4.0
    rois = torch.tensor([[10.0, 20.0, 18.0, 28.0]])  # m x m pixels: the resize is the identity
    out = heatmaps_to_keypoints(heatmaps, rois)
    assert torch.allclose(out[0], torch.tensor([[15.5, 23.5, 10.0], [10.5, 27.5, 4.0]]))
    detectron2 = heatmaps_to_keypoints(heatmaps, rois, "detectron2")[0, :, 2]
    assert torch.allclose(detectron2, torch.tensor([1 / (1 + 63 * math.exp(-10.0)), 1 / (1 + 63 * math.exp(-4.0))]))
    # a target cell decodes to that cell's centre
    keypoints = torch.tensor([[[12.2, 26.9, 2.0]]])
    index, valid = keypoints_to_heatmap(keypoints, rois, m)
    one_hot = torch.zeros(1, 1, m * m).index_fill_(2, index[0], 20.0).view(1, 1, m, m)
    assert bool(valid.all())
    assert torch.allclose(heatmaps_to_keypoints(one_hot, rois)[0, 0, :2], torch.tensor([12.5, 26.5]))


@pytest.mark.parametrize("decoder", DECODERS)
def test_half_precision_heatmaps_decode_in_float32(decoder: str) -> None:
    decode = DECODERS[decoder]
    heatmaps = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    rois = torch.tensor([[100.3, 200.7, 131.2, 260.1], [5.0, 6.0, 9.5, 7.0]])
    for dtype in (torch.float16, torch.bfloat16):
        low = heatmaps.to(dtype)
        out = decode(low, rois.to(dtype))
        assert out.dtype == torch.float32
        assert torch.equal(out, decode(low.float(), rois.to(dtype).float()))


@pytest.mark.parametrize("decoder", DECODERS)
def test_heatmaps_to_keypoints_empty_and_bad_arguments(decoder: str) -> None:
    decode = DECODERS[decoder]
    assert decode(torch.zeros(0, 17, 56, 56), torch.zeros(0, 4)).shape == (0, 17, 3)
    with pytest.raises(ValueError, match="score"):
        decode(torch.zeros(1, 1, 4, 4), torch.tensor([[0.0, 0.0, 4.0, 4.0]]), "softmax")
    with pytest.raises(ValueError, match="rois"):
        decode(torch.zeros(2, 1, 4, 4), torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
