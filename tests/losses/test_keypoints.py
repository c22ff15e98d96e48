"""The keypoint loss: a hand-computed case, the normalisations, the empty case and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from instaseg.losses.keypoints import fixed_keypoint_normalizer, keypoint_loss


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)


def _hand_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # 2 RoIs, 2 keypoints, 2 x 2 heatmaps
    logits = torch.tensor([
        [[[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [1.0, 1.0]]],
        [[[5.0, 0.0], [0.0, 0.0]], [[-1.0, 0.0], [0.5, 2.0]]],
    ], dtype=torch.float64)
    index = torch.tensor([[3, 1], [2, 0]])
    valid = torch.tensor([[True, True], [True, False]])
    return logits, index, valid


def test_keypoint_loss_hand_computed() -> None:
    logits, index, valid = _hand_case()
    # -log softmax at the target cell, for the three valid keypoints
    first = math.log(1 + math.e + math.e**2 + math.e**3) - 3.0
    second = math.log(4.0)  # uniform map
    third = math.log(math.e**5 + 3.0) - 0.0
    total = first + second + third
    assert keypoint_loss(logits, index, valid).item() == pytest.approx(total / 3, abs=1e-12)
    normalizer = fixed_keypoint_normalizer(num_images=1, num_keypoints=2, batch_size_per_image=8, positive_fraction=0.25)
    assert normalizer == 4.0
    assert keypoint_loss(logits, index, valid, "fixed", normalizer).item() == pytest.approx(total / 4, abs=1e-12)
    # the invalid keypoint's map never counts, whatever its target
    assert keypoint_loss(logits, torch.tensor([[3, 1], [2, 3]]), valid).item() == pytest.approx(total / 3, abs=1e-12)


def test_keypoint_loss_is_a_softmax_over_space() -> None:
    logits, index, valid = _hand_case()
    shifted = logits + torch.randn(2, 2, 1, 1, dtype=torch.float64) * 10  # one constant per map: no change
    assert keypoint_loss(shifted, index, valid).item() == pytest.approx(keypoint_loss(logits, index, valid).item())


def test_keypoint_loss_without_valid_keypoints_is_zero_with_gradient() -> None:
    logits = torch.randn(3, 17, 56, 56, requires_grad=True)
    loss = keypoint_loss(logits, torch.zeros(3, 17, dtype=torch.int64), torch.zeros(3, 17, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None and not logits.grad.any()
    empty = torch.zeros(0, 17, 56, 56, requires_grad=True)
    assert keypoint_loss(empty, torch.zeros(0, 17, dtype=torch.int64), torch.zeros(0, 17, dtype=torch.bool)).item() == 0.0


def test_keypoint_loss_rejects_bad_arguments() -> None:
    logits, index, valid = _hand_case()
    with pytest.raises(ValueError, match="normalization"):
        keypoint_loss(logits, index, valid, "positives")
    with pytest.raises(ValueError, match="fixed_normalizer"):
        keypoint_loss(logits, index, valid, "fixed")
    with pytest.raises(ValueError, match="gt_index"):
        keypoint_loss(logits, index[:1], valid)


@pytest.mark.parametrize("normalization", ["visible", "fixed"])
def test_keypoint_loss_gradcheck(normalization: str) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    index = torch.randint(0, 16, (2, 3), generator=generator)
    valid = torch.rand(2, 3, generator=generator) > 0.4
    assert valid.any() and not valid.all()
    assert torch.autograd.gradcheck(lambda x: keypoint_loss(x, index, valid, normalization, 7.0), (logits,))
