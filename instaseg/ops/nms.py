"""Greedy non-maximum suppression: ``nms`` and ``batched_nms``.

Soft-NMS (``soft_nms.py``) and YOLACT's Fast NMS (``fast_nms.py``) reuse the helpers here: the
threshold rounding (``floor_to_dtype``), the suppression-pair sweep and the chunk sizes.

All boxes are ``(N, 4)`` absolute-pixel ``xyxy`` in continuous coordinates (width ``x2 - x1``, no
"+1"), with IoU as in :func:`instaseg.structures.boxes.box_iou`: empty or inverted boxes have
area 0 and IoU 0 with everything (torchvision would use a negative area for inverted boxes).
Coordinates must be finite. An IoU "above the threshold" compares the IoU computed in the boxes'
dtype with the threshold as real numbers, like torchvision (see ``floor_to_dtype``).

Greedy NMS without a per-box loop
---------------------------------
Sort the boxes by score and let ``S[i, j]`` (``i < j``) mean "IoU(i, j) > threshold". Greedy NMS
keeps ``j`` iff no kept ``i < j`` has ``S[i, j]``. On this DAG that rule has exactly one solution,
so any fixed point of ``keep <- not any_i (keep[i] and S[i, j])`` *is* the greedy answer, and the
Jacobi iteration reaches it in (longest suppression chain + 1) steps.

``S`` is sparse, and is listed without the dense ``N x N`` IoU matrix: for boxes ``p``, ``q`` with
``x1_p <= x1_q``, ``inter <= (x2_p - x1_q) * h_p`` and ``union >= w_p * h_p``, so ``IoU > t``
needs ``x1_q < x2_p - t * w_p``. After sorting by ``x1`` each box only meets the next few boxes
(a window), tested exactly in slabs of consecutive rows read as ``unfold`` views (no gathers).
The sweep runs along x or y, whichever lists fewer pairs. Long chains switch to one exact pass
over the edge list; inputs with too many overlapping pairs to list (e.g. thousands of identical
boxes) switch to an exact dense pass over score-ordered blocks, with memory ``O(block x N)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from instaseg.ops._dispatch import torchvision_ops
from instaseg.structures.boxes import box_iou

__all__ = ["nms", "batched_nms", "top_batched_nms", "floor_to_dtype"]

# First try of top_batched_nms: NMS over this many candidates per box wanted.
_PREFIX_FACTOR = 4

# Windows are tested in cells of this many columns: a cell's max IoU screens it before the
# (slow) exact comparison and nonzero run on the few cells that can hold a pair.
_CELL = 32
# Jacobi steps before switching to the exact one-pass resolution over the edge list.
_MAX_JACOBI_STEPS = 24


def _chunk_elements(device: torch.device) -> int:
    """Elements of one chunk of pairwise work (a slab of the sweep, a dense block).

    On CPU, chunks below PyTorch's parallel grain (32768 elements) stay in cache and run on one
    thread: a second thread gains little at that size and stalls whenever the cores are
    oversubscribed. Accelerators want big chunks (few kernel launches).
    """
    return (1 << 15) - 1 if device.type == "cpu" else 1 << 22


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS, a drop-in for ``torchvision.ops.nms``.

    Args:
        boxes: ``(N, 4)`` float xyxy, absolute pixels.
        scores: ``(N,)`` float.
        iou_threshold: a box is dropped if its IoU with a higher-scored *kept* box is
            ``> iou_threshold`` (an IoU exactly equal to the threshold does not suppress).

    Returns:
        ``(K,)`` int64 indices of the kept boxes, by decreasing score. Equal scores are ordered
        by index (a stable sort: the lower index counts as the higher score), like torchvision's
        CPU kernel.
    """
    ops = torchvision_ops()
    if ops is not None:
        return ops.nms(boxes, scores, iou_threshold)
    return _nms_torch(boxes, scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Per-category NMS, a drop-in for ``torchvision.ops.batched_nms``.

    ``boxes (N, 4)``, ``scores (N,)``, ``idxs (N,)`` int (e.g. class labels): a box only
    suppresses boxes with the same ``idxs``. Returns ``(K,)`` int64 indices by decreasing score
    (ties by index). The pure-PyTorch path keeps categories apart without torchvision's
    coordinate offset, so large offsets cannot cost float precision.
    """
    ops = torchvision_ops()
    if ops is not None:
        return ops.batched_nms(boxes, scores, idxs, iou_threshold)
    return _nms_torch(boxes, scores, iou_threshold, idxs)


def top_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, max_keep: int) -> Tensor:
    """``batched_nms(boxes, scores, idxs, iou_threshold)[:max_keep]``, without running NMS on all boxes.

    In greedy per-category NMS a box's fate depends only on the boxes of its category ranked above
    it (higher score; equal scores by lower index). So NMS over the candidates scoring at least
    some ``s`` (kept in their original order, hence ranked alike) keeps exactly the boxes of the
    full run that score at least ``s``; once it keeps ``max_keep`` boxes, those are the full run's
    first ``max_keep``. The candidate set grows 4x until that holds (or it is everything).
    With ``score_thresh = 0`` Mask R-CNN's 1000 RoIs x 80 classes give 80000 candidates, of which
    a few hundred decide the 100 detections.

    ``boxes (N, 4)``, ``scores (N,)``, ``idxs (N,)`` -> ``(K,)`` int64 indices, K <= max_keep.
    """
    n = scores.numel()
    prefix = _PREFIX_FACTOR * max(max_keep, 1)
    while prefix < n:
        cut = scores.topk(prefix, sorted=False).values.min()
        chosen = torch.nonzero(scores >= cut).squeeze(1)  # ties at the cut included, order kept
        if chosen.numel() >= n:
            break
        keep = batched_nms(boxes[chosen], scores[chosen], idxs[chosen], iou_threshold)
        if keep.numel() >= max_keep:
            return chosen[keep[:max_keep]]
        prefix *= _PREFIX_FACTOR
    return batched_nms(boxes, scores, idxs, iou_threshold)[:max_keep]


def _nms_torch(
    boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None = None
) -> Tensor:
    """Pure-PyTorch greedy NMS (per category when ``idxs (N,)`` is given); see :func:`nms`."""
    boxes, scores = boxes.detach(), scores.detach()  # indices only: no gradient flows through NMS
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1] or (idxs is not None and idxs.shape != scores.shape):
        raise ValueError(f"scores and idxs must be ({boxes.shape[0]},)")
    order = torch.argsort(scores, descending=True, stable=True)
    threshold = floor_to_dtype(float(iou_threshold), boxes.dtype)
    # An IoU (<= 1) never exceeds a threshold >= 1 (or NaN): nothing is suppressed.
    if boxes.shape[0] <= 1 or not threshold < 1.0:
        return order
    sorted_boxes = boxes.index_select(0, order)
    sorted_idxs = None if idxs is None else idxs.index_select(0, order)
    edges = None
    if threshold >= 0.0:  # below 0 every pair suppresses and the sweep's window does not hold
        edges = _suppression_edges(sorted_boxes, sorted_idxs, threshold)
    if edges is None:
        keep = _dense_greedy(sorted_boxes, sorted_idxs, threshold)
    else:
        keep = _resolve_edges(edges[0], edges[1], boxes.shape[0])
    return _select(order, keep)


def floor_to_dtype(value: float, dtype: torch.dtype) -> float:
    """The largest number of ``dtype`` that is ``<= value``.

    Comparing a ``dtype`` tensor with it, ``x > result`` holds exactly when ``x > value`` holds
    for the real numbers (as torchvision, which compares float IoUs with a double threshold);
    a plain ``x > value`` would round ``value`` to the nearest ``dtype`` number, possibly up.
    """
    if not dtype.is_floating_point:
        raise TypeError(f"boxes and scores must be floating point, got {dtype}")
    if not math.isfinite(value):
        return value
    rounded = torch.tensor(value, dtype=dtype)
    if rounded.item() > value:
        rounded = torch.nextafter(rounded, torch.tensor(-math.inf, dtype=dtype))
    return rounded.item()


def _select(values: Tensor, mask: Tensor) -> Tensor:
    """``values[mask]`` for 1-D tensors; on CPU this form stays on one thread for our sizes
    (``values[mask]`` and ``masked_select`` split across threads and stall on a busy core)."""
    return values.index_select(0, torch.nonzero(mask).flatten())


def _suppression_edges(
    boxes: Tensor, idxs: Tensor | None, threshold: float
) -> tuple[Tensor, Tensor] | None:
    """Every pair ``(src, dst)``, ``src < dst`` (score ranks), with IoU > threshold, same category.

    ``boxes (N, 4)`` are sorted by score. Returns two ``(E,)`` int64 tensors, or None when the
    pairs are too many to list (the caller then takes the dense path).
    """
    n, device = boxes.shape[0], boxes.device
    arange = torch.arange(n, device=device)
    sweeps = []
    for lo, hi, perm in ((0, 2, [0, 1, 2, 3]), (1, 3, [1, 0, 3, 2])):
        order, end = _sweep_windows(boxes[:, lo], boxes[:, hi], idxs, threshold)
        counts = (end - arange - 1).clamp(min=0)
        sweeps.append((int(counts.sum()), order, counts, perm))
    _, order, counts, perm = min(sweeps, key=lambda sweep: sweep[0])
    # The y sweep swaps the roles of x and y, which leaves every IoU unchanged.
    swept_boxes = boxes.index_select(0, order).index_select(1, torch.tensor(perm, device=device))
    swept_idxs = None if idxs is None else idxs.index_select(0, order)
    return _swept_pairs(swept_boxes, swept_idxs, order, counts, threshold, max(16 * n, 1 << 16))


def _sweep_windows(
    low: Tensor, high: Tensor, idxs: Tensor | None, threshold: float
) -> tuple[Tensor, Tensor]:
    """Sort by ``(idxs, low)`` exactly; return the order and each sorted entry's window end.

    Entry ``p`` of the order can only pair with entries ``p < q < end[p]`` (module docstring).
    """
    order = torch.argsort(low, stable=True)
    if idxs is not None:  # category-major, then by `low` within a category
        order = order.index_select(0, torch.argsort(idxs.index_select(0, order), stable=True))
    # float64 keeps the window arithmetic far more precise than any input (MPS has no float64).
    calc = torch.float32 if low.device.type == "mps" else torch.float64
    lo, hi = low.index_select(0, order).to(calc), high.index_select(0, order).to(calc)
    key = lo
    if idxs is not None:  # one increasing key: categories a span apart, so windows stay inside
        cats = idxs.index_select(0, order)
        cat_rank = torch.cat((cats[:1] * 0, (cats[1:] != cats[:-1]).cumsum(dim=0)))  # 0, 1, ...
        span = (hi.max() - lo.min()).clamp(min=0) + 1.0
        key = (lo - lo.min()) + cat_rank.to(calc) * span
    width = (hi - lo).clamp(min=0)
    # The caller compares IoUs rounded in the input dtype: widen the window to cover that
    # rounding (relative to the width) and the rounding of the key itself.
    slack = min(1.0, 64.0 * torch.finfo(low.dtype).eps)
    margin = 1e-12 * (key.abs() + width)
    limit = key + width * (1.0 - threshold * (1.0 - slack)) + margin
    return order, _searchsorted(key, limit)


def _searchsorted(sorted_values: Tensor, values: Tensor) -> Tensor:
    """``torch.searchsorted(sorted_values, values, side="left")``, one thread on CPU.

    PyTorch splits this op across threads from 200 values on (its parallel grain); pieces of
    200 keep each call on one thread, which is as fast here and never waits on a busy core.
    """
    if values.device.type != "cpu":
        return torch.searchsorted(sorted_values, values, side="left")
    out = torch.empty(values.shape, dtype=torch.long)
    for start in range(0, values.numel(), 200):
        part = slice(start, start + 200)
        torch.searchsorted(sorted_values, values[part], side="left", out=out[part])
    return out


def _swept_pairs(
    boxes: Tensor,
    idxs: Tensor | None,
    ranks: Tensor,
    counts: Tensor,
    threshold: float,
    max_edges: int,
) -> tuple[Tensor, Tensor] | None:
    """Suppression edges among swept ``boxes (N, 4)``, as ``(src, dst)`` score ranks.

    Tests the pairs ``p < q <= p + counts[p]`` (and some beyond: real pairs too) of the swept
    order; ``ranks (N,)`` maps swept positions to score ranks. Rows ``r0 <= p < r1`` form a
    slab whose partners ``p + 1 .. p + W`` are an ``unfold`` view of one small table. Returns
    None once more than ``max_edges`` edges are found.
    """
    n, device = boxes.shape[0], boxes.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    window_max = -(-int(counts.max()) // _CELL) * _CELL
    if window_max == 0:
        return empty, empty
    table = _pair_table(boxes, window_max)
    rows_per_slab = max(1, _chunk_elements(device) // window_max)
    num_slabs = -(-n // rows_per_slab)
    padded = counts.new_zeros(num_slabs * rows_per_slab)
    padded[:n] = counts
    slab_windows = padded.view(num_slabs, rows_per_slab).amax(dim=1).tolist()
    sources, targets, total = [empty], [empty], 0
    for slab, count in enumerate(slab_windows):
        if count == 0:
            continue
        window = -(-count // _CELL) * _CELL
        r0 = slab * rows_per_slab
        r1 = min(r0 + rows_per_slab, n)
        partners = table[:, r0 + 1 : r1 + window].unfold(1, window, 1)
        iou = _pair_iou(table[:, r0:r1, None], partners)
        row, offset = _hits(iou, threshold)
        p = row + r0
        q = p + 1 + offset
        if idxs is not None:
            same = idxs.index_select(0, p) == idxs.index_select(0, q)
            p, q = _select(p, same), _select(q, same)
        p, q = ranks.index_select(0, p), ranks.index_select(0, q)
        sources.append(torch.minimum(p, q))
        targets.append(torch.maximum(p, q))
        total += p.numel()
        if total > max_edges:
            return None
    return torch.cat(sources), torch.cat(targets)


def _pair_table(boxes: Tensor, pad: int) -> Tensor:
    """Component-major ``(5, N + pad)`` table of ``boxes (N, 4)``: x1, y1, x2, y2, area.

    The ``pad`` trailing boxes sit at x = +inf: they intersect nothing, so windows may run
    past the last box.
    """
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    tail = boxes.new_zeros(5, pad)
    tail[[0, 2]] = math.inf
    return torch.cat((torch.cat((boxes.t(), area[None]), dim=0), tail), dim=1)


def _pair_iou(row: Tensor, col: Tensor) -> Tensor:
    """IoU ``(R, W)`` of tables ``row (5, R, 1)`` and ``col (5, R, W)`` with ``x1_col >= x1_row``.

    Same arithmetic as ``box_iou`` (so both NMS paths agree bit for bit), except that the sort
    guarantees ``max(x1_row, x1_col) = x1_col`` within a category (other pairs are dropped).
    """
    # Explicit row-major outputs: the unfold view's overlapping strides leave the layout open.
    iw, ih = (col.new_empty(col.shape[1:]) for _ in range(2))
    torch.minimum(row[2], col[2], out=iw).sub_(col[0]).clamp_(min=0)
    torch.minimum(row[3], col[3], out=ih).sub_(torch.maximum(row[1], col[1])).clamp_(min=0)
    inter = iw.mul_(ih)
    union = (row[4] + col[4]).sub_(inter).clamp_(min=torch.finfo(inter.dtype).tiny)
    return inter.div_(union)


def _hits(iou: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Row and column indices of ``iou (R, W) > threshold``, ``W`` a multiple of ``_CELL``.

    Pairs above the threshold are rare: the max of each cell of ``_CELL`` columns screens the
    slab, and the comparison and nonzero (slow kernels) only run on the cells that pass.
    """
    rows, width = iou.shape
    cells = iou.view(rows * (width // _CELL), _CELL)
    (cell,) = (cells.amax(dim=1) > threshold).nonzero(as_tuple=True)
    which, offset = (cells.index_select(0, cell) > threshold).nonzero(as_tuple=True)
    cell = cell.index_select(0, which)
    return cell // (width // _CELL), (cell % (width // _CELL)) * _CELL + offset


def _resolve_edges(src: Tensor, dst: Tensor, n: int) -> Tensor:
    """Greedy keep mask ``(n,)`` bool from the suppression DAG ``src[e] < dst[e]`` (score ranks).

    Jacobi steps until a fixed point (exact, module docstring); long chains switch to one pass
    over the edges sorted by source, where each source's fate is final when it is reached.
    """
    keep = torch.ones(n, dtype=torch.uint8, device=src.device)
    if src.numel() == 0:
        return keep.bool()
    for _ in range(_MAX_JACOBI_STEPS):
        # suppressed[j] = any kept i with an edge (i, j), as a scatter-max over the edges.
        suppressed = torch.zeros_like(keep)
        suppressed.scatter_reduce_(0, dst, keep.index_select(0, src), "amax")
        if torch.equal(suppressed, 1 - keep):
            return keep.bool()
        keep = 1 - suppressed
    perm = torch.argsort(src, stable=True)
    flags = bytearray(n)
    for s, d in zip(src.index_select(0, perm).tolist(), dst.index_select(0, perm).tolist()):
        if not flags[s]:
            flags[d] = 1
    suppressed = torch.frombuffer(flags, dtype=torch.uint8).to(src.device, torch.bool)
    return ~suppressed


def _suppression_matrix(
    a: Tensor, b: Tensor, a_idxs: Tensor | None, b_idxs: Tensor | None, threshold: float
) -> Tensor:
    """``(A, B)`` bool: IoU(a, b) > threshold, within the same category if categories are given."""
    hit = box_iou(a, b) > threshold
    if a_idxs is not None and b_idxs is not None:
        hit &= a_idxs[:, None] == b_idxs[None, :]
    return hit


def _dense_greedy(boxes: Tensor, idxs: Tensor | None, threshold: float) -> Tensor:
    """Exact greedy keep mask ``(N,)`` over score-sorted ``boxes (N, 4)``, block by block.

    Each block of still-alive boxes is resolved exactly (Jacobi on its small dense matrix); its
    kept boxes then suppress the later alive boxes in column chunks (memory ``O(block x N)``).
    """
    n, device = boxes.shape[0], boxes.device
    suppressed = torch.zeros(n, dtype=torch.bool, device=device)
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    positions = torch.arange(n, device=device)

    chunk = _chunk_elements(device) // 2  # box_iou holds (A, B, 2) corner tensors
    block_size = math.isqrt(chunk)
    upper = torch.arange(block_size, device=device)
    upper = upper[:, None] < upper[None, :]  # strictly upper triangle, built once

    def cats(index: Tensor) -> Tensor | None:
        return None if idxs is None else idxs.index_select(0, index)

    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        block = _select(positions[start:stop], ~suppressed[start:stop])
        if block.numel() == 0:
            continue
        block_boxes = boxes.index_select(0, block)
        inner = _suppression_matrix(block_boxes, block_boxes, cats(block), cats(block), threshold)
        inner &= upper[: block.numel(), : block.numel()]
        kept = _select(block, _greedy_dense_block(inner))
        keep.index_fill_(0, kept, True)
        kept_boxes = boxes.index_select(0, kept)
        later = _select(positions[stop:], ~suppressed[stop:])
        for part in later.split(max(1, chunk // kept.numel())):
            part_boxes = boxes.index_select(0, part)
            hit = _suppression_matrix(kept_boxes, part_boxes, cats(kept), cats(part), threshold)
            suppressed.index_fill_(0, _select(part, hit.any(dim=0)), True)
    return keep


def _greedy_dense_block(upper: Tensor) -> Tensor:
    """Greedy keep mask ``(M,)`` from a strictly upper-triangular ``(M, M)`` suppression matrix."""
    keep = torch.ones(upper.shape[0], dtype=torch.bool, device=upper.device)
    for _ in range(upper.shape[0] + 1):  # converges within (longest chain + 1) steps
        new_keep = ~(upper & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep

