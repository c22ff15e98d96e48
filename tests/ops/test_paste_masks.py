import math

import pytest
import torch
import torch.nn.functional as F

from instaseg.ops.paste_masks import paste_masks_in_image, paste_masks_torchvision_style


# --------------------------------------------------------------------------- references


def _bilinear_zero_outside(grid, u, v):
    """Bilinear sample of ``grid`` (list of rows) at column ``u``, row ``v``; cells outside are 0."""
    rows, cols = len(grid), len(grid[0])
    u0, v0 = math.floor(u), math.floor(v)
    total = 0.0
    for dv in (0, 1):
        for du in (0, 1):
            i, j = v0 + dv, u0 + du
            if 0 <= i < rows and 0 <= j < cols:
                wv = 1.0 - abs(v - i)
                wu = 1.0 - abs(u - j)
                total += wv * wu * grid[i][j]
    return total


def _paste_reference(masks, boxes, height, width):
    """Every pixel of the whole image, float64: u = (c + 0.5 - x1) / (x2 - x1) * Mw - 0.5."""
    out = torch.zeros(len(masks), height, width, dtype=torch.float64)
    for n, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        if not (x2 > x1 and y2 > y1):
            continue  # degenerate boxes paste nothing
        grid = masks[n].double().tolist()
        rows, cols = len(grid), len(grid[0])
        for r in range(height):
            v = (r + 0.5 - y1) / (y2 - y1) * rows - 0.5
            for c in range(width):
                u = (c + 0.5 - x1) / (x2 - x1) * cols - 0.5
                out[n, r, c] = _bilinear_zero_outside(grid, u, v)
    return out


def _resize_bilinear_reference(grid, out_h, out_w):
    """F.interpolate(bilinear, align_corners=False) by hand: half-pixel centres, negatives to 0."""
    in_h, in_w = len(grid), len(grid[0])

    def source(dst, in_size, out_size):
        s = (dst + 0.5) * (in_size / out_size) - 0.5
        s = max(s, 0.0)
        low = int(s)
        high = low + 1 if low < in_size - 1 else low
        return low, high, s - low

    out = [[0.0] * out_w for _ in range(out_h)]
    for i in range(out_h):
        y0, y1, ly = source(i, in_h, out_h)
        for j in range(out_w):
            x0, x1, lx = source(j, in_w, out_w)
            out[i][j] = (
                (1 - ly) * ((1 - lx) * grid[y0][x0] + lx * grid[y0][x1])
                + ly * ((1 - lx) * grid[y1][x0] + lx * grid[y1][x1])
            )
    return out


def _paste_torchvision_reference(masks, boxes, height, width, padding=1):
    """Loop re-implementation of torchvision's legacy integer-box paste rule."""
    out = torch.zeros(len(masks), height, width, dtype=torch.float64)
    for n, (bx1, by1, bx2, by2) in enumerate(boxes.tolist()):
        m = masks[n].shape[-1]
        size = m + 2 * padding
        padded = [
            [float(masks[n][i - padding][j - padding]) if 0 <= i - padding < m and 0 <= j - padding < m else 0.0
             for j in range(size)]
            for i in range(size)
        ]
        scale = size / m
        cx, cy = (bx1 + bx2) / 2, (by1 + by2) / 2
        hw, hh = (bx2 - bx1) / 2 * scale, (by2 - by1) / 2 * scale
        x1, y1, x2, y2 = int(cx - hw), int(cy - hh), int(cx + hw), int(cy + hh)  # int() truncates
        w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
        resized = _resize_bilinear_reference(padded, h, w)
        for r in range(height):
            for c in range(width):
                if y1 <= r <= y2 and x1 <= c <= x2:
                    out[n, r, c] = resized[r - y1][c - x1]
    return out


# --------------------------------------------------------------------------- paste_masks_in_image

_BOXES = [
    [3.0, 2.0, 11.0, 9.0],  # integer box inside
    [-4.3, -2.7, 6.6, 5.2],  # past the top-left corner, fractional
    [14.2, 10.5, 27.9, 22.4],  # past the bottom-right corner
    [2.5, 11.0, 23.0, 17.5],  # wider than 2 * M pixels: the bilinear fringe exceeds one pixel
    [8.4, 6.1, 8.9, 6.45],  # tiny: may contain no pixel centre
    [1.25, 1.5, 2.75, 20.0],  # thin and tall
]


def test_paste_matches_reference_float64():
    boxes = torch.tensor(_BOXES, dtype=torch.float64)
    masks = torch.rand(len(_BOXES), 6, 6, dtype=torch.float64)
    got = paste_masks_in_image(masks, boxes, (18, 24))
    assert got.shape == (len(_BOXES), 18, 24) and got.dtype == torch.float64
    torch.testing.assert_close(got, _paste_reference(masks, boxes, 18, 24), rtol=1e-10, atol=1e-10)


def test_paste_matches_reference_float32_non_square_and_4d():
    boxes = torch.tensor(_BOXES[:4])
    masks = torch.rand(4, 1, 5, 7)
    got = paste_masks_in_image(masks, boxes, (20, 22))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _paste_reference(masks[:, 0], boxes, 20, 22), rtol=1e-5, atol=1e-5)


def test_paste_agrees_with_full_image_grid_sample():
    boxes = torch.tensor(_BOXES[:4])
    masks = torch.rand(4, 1, 8, 8)
    height, width = 19, 26
    xs = torch.arange(width) + 0.5
    ys = torch.arange(height) + 0.5
    gx = (xs[None] - boxes[:, 0:1]) / (boxes[:, 2:3] - boxes[:, 0:1]) * 2 - 1
    gy = (ys[None] - boxes[:, 1:2]) / (boxes[:, 3:4] - boxes[:, 1:2]) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(-1, height, -1), gy[:, :, None].expand(-1, -1, width)], dim=-1)
    expected = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
    torch.testing.assert_close(paste_masks_in_image(masks, boxes, (height, width)), expected, rtol=1e-5, atol=1e-5)


def test_paste_threshold():
    boxes = torch.tensor(_BOXES, dtype=torch.float64)
    masks = torch.rand(len(_BOXES), 6, 6, dtype=torch.float64)
    got = paste_masks_in_image(masks, boxes, (18, 24), threshold=0.5)
    assert got.dtype == torch.bool and got.shape == (len(_BOXES), 18, 24)
    reference = _paste_reference(masks, boxes, 18, 24)
    decided = (reference - 0.5).abs() > 1e-9  # ignore ties at the threshold
    assert torch.equal(got[decided], (reference >= 0.5)[decided])
    assert got.any()
    with pytest.raises(ValueError):
        paste_masks_in_image(masks, boxes, (18, 24), threshold=0.0)


def test_paste_constant_one_mask():
    # Integer boxes no larger than M pixels: every pixel centre in the box maps to u in [0, M - 1],
    # where a constant-1 grid interpolates to exactly 1, and every pixel outside to u <= -1 or >= M.
    boxes = torch.tensor([[3.0, 4.0, 17.0, 12.0], [-5.0, 10.0, 6.0, 30.0]])
    masks = torch.ones(2, 28, 28)
    got = paste_masks_in_image(masks, boxes, (24, 20))
    expected = torch.zeros(2, 24, 20)
    expected[0, 4:12, 3:17] = 1
    expected[1, 10:24, 0:6] = 1
    torch.testing.assert_close(got, expected)
    # A box larger than the grid (cells 3 px wide, 4 px tall): exactly 1 where the pixel centre is
    # at least half a cell inside the box, exactly 0 once it is half a cell or more outside.
    big = paste_masks_in_image(torch.ones(1, 4, 4), torch.tensor([[5.0, 5.0, 17.0, 21.0]]), (26, 24))[0]
    torch.testing.assert_close(big[7:19, 6:16], torch.ones(12, 10))
    assert not big[:, :4].any() and not big[:, 18:].any() and not big[:3].any() and not big[23:].any()
    assert big[:, 4].max() > 0 and big[3].max() > 0  # the fringe is more than one pixel wide
    assert big.min() >= 0 and big.max() <= 1 + 1e-6


def test_paste_degenerate_empty_and_outside():
    masks = torch.rand(4, 5, 5)
    boxes = torch.tensor(
        [[3.0, 3.0, 3.0, 8.0], [5.0, 6.0, 2.0, 9.0], [30.0, 30.0, 40.0, 40.0], [-20.0, -9.0, -12.0, -1.5]]
    )
    got = paste_masks_in_image(masks, boxes, (12, 14))
    assert got.shape == (4, 12, 14) and not got.any()
    assert paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (7, 9)).shape == (0, 7, 9)
    assert paste_masks_in_image(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (7, 9), 0.5).dtype == torch.bool


def test_paste_gradcheck_wrt_masks():
    boxes = torch.tensor([[1.3, 0.6, 6.2, 5.1], [-1.0, 2.0, 4.5, 8.0]], dtype=torch.float64)
    masks = torch.rand(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: paste_masks_in_image(m, boxes, (7, 6)), (masks,))


# --------------------------------------------------------------------------- torchvision style


def test_torchvision_style_matches_loop_reference():
    boxes = torch.tensor(
        [
            [2.0, 3.0, 9.0, 8.0],
            [-3.4, -2.6, 5.7, 4.2],  # negative corners: truncation toward zero, not floor
            [10.6, 7.3, 25.2, 19.9],  # past the bottom-right corner
            [4.0, 4.0, 4.2, 4.1],  # tiny
            [6.0, 2.0, 5.0, 4.0],  # inverted: width forced to 1
        ],
        dtype=torch.float64,
    )
    masks = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    got = paste_masks_torchvision_style(masks, boxes, (15, 17))
    assert got.shape == (5, 15, 17) and got.dtype == torch.float64
    expected = _paste_torchvision_reference(masks[:, 0], boxes, 15, 17)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_torchvision_style_padding_and_edge_cases():
    boxes = torch.tensor([[1.5, 2.5, 8.5, 6.5], [3.0, 1.0, 7.0, 9.0]], dtype=torch.float64)
    masks = torch.rand(2, 3, 3, dtype=torch.float64)
    for padding in (0, 2):
        got = paste_masks_torchvision_style(masks, boxes, (10, 11), padding=padding)
        expected = _paste_torchvision_reference(masks, boxes, 10, 11, padding=padding)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    outside = torch.tensor([[-30.0, -30.0, -20.0, -20.0], [40.0, 2.0, 50.0, 6.0]])
    assert not paste_masks_torchvision_style(torch.rand(2, 4, 4), outside, (10, 11)).any()
    assert paste_masks_torchvision_style(torch.zeros(0, 1, 28, 28), torch.zeros(0, 4), (5, 6)).shape == (0, 5, 6)
