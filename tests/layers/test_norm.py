"""FrozenBatchNorm2d, convert_frozen_batchnorm and get_norm."""

import pytest
import torch
from torch import nn

from instaseg.layers.norm import FrozenBatchNorm2d, convert_frozen_batchnorm, get_norm


def _random_stats(num_features: int, dtype=torch.float64) -> dict[str, torch.Tensor]:
    return {
        "weight": torch.randn(num_features, dtype=dtype),
        "bias": torch.randn(num_features, dtype=dtype),
        "running_mean": torch.randn(num_features, dtype=dtype),
        "running_var": torch.rand(num_features, dtype=dtype) + 0.1,
    }


def _reference_frozen_bn(x, stats, eps):
    """Per-element loop: (x - mean) / sqrt(var + eps) * weight + bias, in float64."""
    out = torch.empty_like(x, dtype=torch.float64)
    n, c, h, w = x.shape
    for b in range(n):
        for ch in range(c):
            denom = (float(stats["running_var"][ch]) + eps) ** 0.5
            for i in range(h):
                for j in range(w):
                    normed = (float(x[b, ch, i, j]) - float(stats["running_mean"][ch])) / denom
                    gamma, beta = float(stats["weight"][ch]), float(stats["bias"][ch])
                    out[b, ch, i, j] = normed * gamma + beta
    return out


def test_frozen_bn_matches_loop_reference_and_eval_batchnorm():
    stats = _random_stats(3)
    frozen = FrozenBatchNorm2d(3, eps=1e-3).double()
    frozen.load_state_dict(stats)
    bn = nn.BatchNorm2d(3, eps=1e-3).double().eval()
    bn.load_state_dict(stats, strict=False)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    expected = _reference_frozen_bn(x, stats, 1e-3)
    torch.testing.assert_close(frozen(x), expected)
    torch.testing.assert_close(bn(x), expected)


def test_frozen_bn_keeps_half_dtype():
    frozen = FrozenBatchNorm2d(4)
    frozen.load_state_dict(_random_stats(4, torch.float32))
    x = torch.randn(1, 4, 3, 3)
    out = frozen(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), frozen(x), atol=0.1, rtol=0.05)


def test_frozen_bn_has_no_parameters_and_torchvision_buffer_names():
    frozen = FrozenBatchNorm2d(5)
    assert list(frozen.parameters()) == []
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    bn_keys = set(nn.BatchNorm2d(5).state_dict()) - {"num_batches_tracked"}
    assert set(frozen.state_dict()) == bn_keys


def test_frozen_bn_loads_batchnorm_state_dict_with_num_batches_tracked():
    bn = nn.BatchNorm2d(4)
    bn.load_state_dict({**_random_stats(4, torch.float32), "num_batches_tracked": torch.tensor(7)})
    model = nn.Sequential(nn.Conv2d(2, 4, 1), FrozenBatchNorm2d(4))
    source = nn.Sequential(nn.Conv2d(2, 4, 1), bn)
    state = source.state_dict()
    assert "1.num_batches_tracked" in state
    model.load_state_dict(state, strict=True)  # the stray key must not count as unexpected
    for name in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(getattr(model[1], name), getattr(bn, name).detach())


def test_frozen_bn_still_rejects_truly_unexpected_keys():
    state = {**_random_stats(2, torch.float32), "something_else": torch.zeros(1)}
    with pytest.raises(RuntimeError, match="something_else"):
        FrozenBatchNorm2d(2).load_state_dict(state, strict=True)


def test_frozen_bn_gradient_flows_to_input():
    frozen = FrozenBatchNorm2d(2).double()
    frozen.load_state_dict(_random_stats(2))
    x = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(frozen, (x,))


def test_convert_frozen_batchnorm_replaces_nested_and_keeps_outputs():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4, eps=1e-4),
        nn.Sequential(nn.ReLU(), nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6)),
        nn.GroupNorm(2, 6),
    )
    with torch.no_grad():
        for bn in (model[1], model[2][2]):
            for name, value in _random_stats(bn.num_features, torch.float32).items():
                getattr(bn, name).copy_(value)
    model.eval()
    x = torch.randn(2, 3, 5, 5)
    expected = model(x)
    converted = convert_frozen_batchnorm(model)
    assert converted is model
    assert isinstance(model[1], FrozenBatchNorm2d) and model[1].eps == 1e-4
    assert isinstance(model[2][2], FrozenBatchNorm2d)
    assert isinstance(model[3], nn.GroupNorm)  # only batch norms are frozen
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model.train()  # frozen statistics must not depend on the mode
    torch.testing.assert_close(model(x), expected)


def test_convert_frozen_batchnorm_top_level_and_no_affine():
    bn = nn.BatchNorm2d(3, affine=False)
    bn.running_mean.fill_(2.0)
    frozen = convert_frozen_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d)
    torch.testing.assert_close(frozen.weight, torch.ones(3))
    torch.testing.assert_close(frozen.bias, torch.zeros(3))
    torch.testing.assert_close(frozen.running_mean, torch.full((3,), 2.0))
    double = convert_frozen_batchnorm(nn.BatchNorm2d(2).double())
    assert double.running_var.dtype == torch.float64 and double.weight.dtype == torch.float64


@pytest.mark.parametrize(
    "name, expected_type",
    [
        ("FrozenBN", FrozenBatchNorm2d),
        ("BN", nn.BatchNorm2d),
        ("SyncBN", nn.SyncBatchNorm),
        ("GN", nn.GroupNorm),
    ],
)
def test_get_norm_types(name, expected_type):
    layer = get_norm(name, 64)
    assert type(layer) is expected_type
    if name == "GN":
        assert layer.num_groups == 32 and layer.num_channels == 64
    else:
        assert layer.num_features == 64


def test_get_norm_none_and_errors():
    assert get_norm("", 8) is None
    assert get_norm(None, 8) is None
    with pytest.raises(ValueError, match="FrozenBN"):
        get_norm("LayerNorm", 8)
    with pytest.raises(ValueError, match="32 groups"):
        get_norm("GN", 48)
