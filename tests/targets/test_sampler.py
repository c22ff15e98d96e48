import pytest
import torch

from instaseg.targets.sampler import ohem_negatives, sample_balanced


def _labels(num_pos, num_neg, num_ignore):
    labels = torch.tensor([1] * num_pos + [0] * num_neg + [-1] * num_ignore)
    return labels[torch.randperm(len(labels))]


@pytest.mark.parametrize(
    "num_pos, num_neg, num_ignore, batch, fraction",
    [
        (50, 500, 30, 256, 0.5),  # enough of both
        (10, 500, 30, 256, 0.5),  # few positives: negatives fill the batch
        (200, 20, 5, 256, 0.5),  # few negatives
        (3, 4, 0, 256, 0.25),  # fewer than the batch in total
        (0, 40, 10, 16, 0.25),  # no positives
        (30, 0, 10, 16, 0.25),  # no negatives
        (7, 9, 2, 10, 0.25),  # int(10 * 0.25) = 2 positives (floor)
    ],
)
def test_sample_balanced_counts(num_pos, num_neg, num_ignore, batch, fraction):
    labels = _labels(num_pos, num_neg, num_ignore)
    pos_idx, neg_idx = sample_balanced(labels, batch, fraction)
    expected_pos = min(num_pos, int(batch * fraction))
    expected_neg = min(num_neg, batch - expected_pos)
    assert pos_idx.numel() == expected_pos and neg_idx.numel() == expected_neg
    assert pos_idx.dtype == torch.int64 and neg_idx.dtype == torch.int64
    assert len(set(pos_idx.tolist())) == expected_pos and len(set(neg_idx.tolist())) == expected_neg
    assert all(labels[i].item() == 1 for i in pos_idx.tolist())
    assert all(labels[i].item() == 0 for i in neg_idx.tolist())  # never -1


def test_sample_balanced_is_deterministic_with_a_seeded_generator():
    labels = _labels(60, 300, 20)
    first = sample_balanced(labels, 64, 0.25, generator=torch.Generator().manual_seed(7))
    second = sample_balanced(labels, 64, 0.25, generator=torch.Generator().manual_seed(7))
    other = sample_balanced(labels, 64, 0.25, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not (torch.equal(first[0], other[0]) and torch.equal(first[1], other[1]))


def test_sample_balanced_is_uniform():
    # 5 of 20 positives per draw: each should be chosen 1/4 of the time.
    labels = torch.tensor([1] * 20 + [0] * 5)
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(25)
    draws = 2000
    for _ in range(draws):
        pos_idx, neg_idx = sample_balanced(labels, 10, 0.5, generator=gen)
        counts[pos_idx] += 1
        assert neg_idx.numel() == 5  # all negatives fill the rest
    freq = counts[:20] / draws
    assert torch.all((freq - 0.25).abs() < 0.05), freq  # ~5 standard deviations (sd = 0.0097)


def test_sample_balanced_rejects_bad_input():
    with pytest.raises(ValueError):
        sample_balanced(torch.zeros(2, 3, dtype=torch.int64), 4, 0.5)
    with pytest.raises(ValueError):
        sample_balanced(torch.zeros(3, dtype=torch.int64), 4, 1.5)


def _ohem_reference(neg_loss, positive, ignore, ratio):
    """Loop reference for one row: sort candidates by (-loss, index), keep ratio * num_pos."""
    losses, pos, ign = neg_loss.tolist(), positive.tolist(), ignore.tolist()
    candidates = [i for i in range(len(losses)) if not pos[i] and not ign[i]]
    candidates.sort(key=lambda i: (-losses[i], i))
    keep = set(candidates[: ratio * sum(pos)])
    return [i in keep for i in range(len(losses))]


@pytest.mark.parametrize("ratio", [1, 3])
def test_ohem_matches_reference_batched(ratio):
    num_images, num_pred = 4, 40
    # Quantized losses give ties; a huge loss on positives/ignored ones must never be picked.
    neg_loss = torch.randint(0, 6, (num_images, num_pred)).double()
    positive = torch.rand(num_images, num_pred) < 0.1
    positive[0] = False  # an image without positives keeps no negatives
    positive[1, :12] = True  # 3 * 12 > candidates: keep every candidate
    ignore = (torch.rand(num_images, num_pred) < 0.2) & ~positive
    neg_loss[positive | ignore] = 100.0
    keep = ohem_negatives(neg_loss, positive, ignore, neg_pos_ratio=ratio)
    assert keep.dtype == torch.bool and keep.shape == (num_images, num_pred)
    for row in range(num_images):
        expected = _ohem_reference(neg_loss[row], positive[row], ignore[row], ratio)
        assert keep[row].tolist() == expected
    assert not keep[0].any()
    assert not (keep & (positive | ignore)).any()


def test_ohem_single_image_hand_checked():
    neg_loss = torch.tensor([0.1, 5.0, 0.3, 9.0, 2.0, 4.0, 8.0], requires_grad=True)
    positive = torch.tensor([False, False, False, True, False, False, False])
    ignore = torch.tensor([False, False, False, False, False, False, True])
    keep = ohem_negatives(neg_loss, positive, ignore, neg_pos_ratio=3)
    # Candidates by loss: 5.0 (1), 4.0 (5), 2.0 (4), 0.3 (2), 0.1 (0); keep 3.
    assert torch.nonzero(keep).flatten().tolist() == [1, 4, 5]
    empty = ohem_negatives(torch.zeros(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool))
    assert empty.shape == (0,)
