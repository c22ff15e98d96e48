"""Choosing which matched predictions contribute to the losses.

- ``sample_balanced``: a fixed-size random mini-batch with a cap on the positive fraction (the
  RPN's 256 anchors at 50% and the RoI heads' 512 RoIs at 25% per image in Mask R-CNN).
- ``ohem_negatives``: online hard negative mining (SSD, used by YOLACT for classification at 3:1).

Both work on one image's labels as produced by ``Matcher`` (``{-1, 0, 1}``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_balanced", "ohem_negatives"]


def _random_subset(indices: Tensor, count: int, generator: torch.Generator | None) -> Tensor:
    # randperm runs on the generator's device (a CPU generator cannot drive a CUDA randperm).
    perm_device = generator.device if generator is not None else indices.device
    perm = torch.randperm(indices.numel(), generator=generator, device=perm_device)[:count]
    return indices[perm.to(indices.device)]


def sample_balanced(
    labels: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample positives and negatives from one image's ``labels (A,)`` in ``{-1, 0, 1}``.

    Detectron2's ``subsample_labels`` semantics: ``num_pos = min(#positives,
    int(batch_size_per_image * positive_fraction))``, ``num_neg = min(#negatives,
    batch_size_per_image - num_pos)`` (negatives fill the places positives leave free), each drawn
    uniformly without replacement (``randperm``). Labels -1 are never sampled.

    Returns ``(pos_idx, neg_idx)``: int64 indices into ``labels``, in random order. Pass a seeded
    ``generator`` for reproducible draws; ``None`` uses the global RNG.
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be (A,), got shape {tuple(labels.shape)}")
    if batch_size_per_image < 0 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError("need batch_size_per_image >= 0 and 0 <= positive_fraction <= 1")
    positive = torch.nonzero(labels == 1).flatten()
    negative = torch.nonzero(labels == 0).flatten()
    num_pos = min(positive.numel(), int(batch_size_per_image * positive_fraction))
    num_neg = min(negative.numel(), batch_size_per_image - num_pos)
    return _random_subset(positive, num_pos, generator), _random_subset(negative, num_neg, generator)


def ohem_negatives(
    neg_loss: Tensor,
    positive: Tensor,
    ignore: Tensor,
    neg_pos_ratio: int = 3,
) -> Tensor:
    """Hard negatives: ``(..., A)`` bool, True for the negatives to keep in the loss.

    ``neg_loss (..., A)`` is each prediction's loss as background (YOLACT: ``logsumexp(conf) -
    conf[background]``); ``positive`` and ``ignore`` are bool masks of the same shape. Per row
    (one image; any leading batch dims are independent rows), among the predictions that are
    neither positive nor ignored, keep the ``min(neg_pos_ratio * num_pos, #candidates)`` with the
    largest loss, where ``num_pos`` counts that row's positives. A row without positives keeps no
    negatives, as in YOLACT's ``ohem_conf_loss`` (``num_neg = negpos_ratio * num_pos``; its extra
    cap at ``A - 1`` never binds here since candidates exclude the positives). Equal losses are
    broken by the lower index. The loss is only ranked, never differentiated.
    """
    if not neg_loss.shape == positive.shape == ignore.shape:
        raise ValueError("neg_loss, positive and ignore must have the same shape")
    if neg_loss.numel() == 0:
        return torch.zeros_like(positive, dtype=torch.bool)
    candidate = ~positive & ~ignore
    ranked_loss = torch.where(candidate, neg_loss.detach(), torch.full_like(neg_loss, -torch.inf))
    order = torch.sort(ranked_loss, dim=-1, descending=True, stable=True).indices
    # rank[i] = position of prediction i in the descending order.
    positions = torch.arange(neg_loss.shape[-1], device=neg_loss.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    num_pos = positive.sum(dim=-1, keepdim=True)
    num_neg = torch.minimum(neg_pos_ratio * num_pos, candidate.sum(dim=-1, keepdim=True))
    return (rank < num_neg) & candidate
