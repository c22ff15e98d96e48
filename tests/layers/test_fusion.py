"""FrozenBatchNorm2d folded into convolutions, and the fast-path switches."""

import copy
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from instaseg.layers import ConvNormAct, FrozenBatchNorm2d, ModulatedDeformConv2d
from instaseg.layers.fusion import (
    _FOLDED,
    FastPaths,
    conv_norm,
    fast_path_settings,
    fast_paths,
    fold_frozen_batchnorm,
    fold_frozen_batchnorm_differentiable,
    to_channels_last,
)


def _frozen_bn(channels, dtype=torch.float64):
    bn = FrozenBatchNorm2d(channels, eps=1e-3).to(dtype)
    bn.weight.uniform_(0.5, 1.5)
    bn.bias.uniform_(-0.5, 0.5)
    bn.running_mean.uniform_(-0.3, 0.3)
    bn.running_var.uniform_(0.2, 2.0)
    return bn


def _reference_conv_bn(x, conv, bn):
    """Conv, then the frozen norm written per channel as in its definition (float64 loops)."""
    y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    out = torch.empty_like(y)
    for c in range(y.shape[1]):
        scale = float(bn.weight[c]) / (float(bn.running_var[c]) + bn.eps) ** 0.5
        out[:, c] = (y[:, c] - float(bn.running_mean[c])) * scale + float(bn.bias[c])
    return out


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("stride, groups", [(1, 1), (2, 1), (1, 2)])
def test_folded_weights_reproduce_conv_then_norm(bias, stride, groups):
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=1, groups=groups, bias=bias).double()
    bn = _frozen_bn(6)
    x = torch.randn(2, 4, 9, 7, dtype=torch.float64)
    weight, folded_bias = fold_frozen_batchnorm(conv.weight, conv.bias, bn)
    folded = F.conv2d(x, weight, folded_bias, stride, 1, 1, groups)
    torch.testing.assert_close(folded, _reference_conv_bn(x, conv, bn), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_norm_folds_at_inference_into_cached_weights(channels_last):
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False).double()
    bn = _frozen_bn(5)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = _reference_conv_bn(x, conv, bn)
    conv.eval()
    with torch.no_grad():
        torch.testing.assert_close(conv_norm(conv, bn, x), expected, rtol=1e-12, atol=1e-12)
    assert conv in _FOLDED


def _norm_calls(bn: nn.Module) -> list:
    calls: list = []
    bn.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("bias", [False, True])
def test_training_folds_the_frozen_norm_with_the_unfolded_gradients(bias):
    """With autograd on, the fold is recomputed from the live weight each call: the output and the
    gradients of the weight, bias and input equal conv-then-norm's (float64), and gradcheck holds."""
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=bias).double().train()
    bn = _frozen_bn(5)
    calls = _norm_calls(bn)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 5, 5, 4, dtype=torch.float64)
    out = conv_norm(conv, bn, x)
    assert calls == [] and conv not in _FOLDED  # folded, and nothing cached
    torch.testing.assert_close(out, _reference_conv_bn(x.detach(), conv, bn), rtol=1e-12, atol=1e-12)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    grads = torch.autograd.grad(out, params, upstream)
    with fast_paths(fold_batchnorm=False):
        plain = conv_norm(conv, bn, x)
    assert calls == [1]
    for got, want in zip(grads, torch.autograd.grad(plain, params, upstream)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    weight = conv.weight.detach().clone().requires_grad_(True)

    def folded_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, *fold_frozen_batchnorm_differentiable(weight, conv.bias, bn), 2, 1)

    assert torch.autograd.gradcheck(folded_conv, (x, weight))


def test_a_frozen_conv_under_autograd_uses_the_cached_fold():
    """A frozen stage (weights without gradient) on an input without gradient records nothing for
    autograd: it takes the cached fold, as at inference; an input that needs a gradient does not."""
    conv = nn.Conv2d(3, 4, 1).double().train().requires_grad_(False)
    bn = _frozen_bn(4)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(conv_norm(conv, bn, x), _reference_conv_bn(x, conv, bn), rtol=1e-12, atol=1e-12)
    assert conv in _FOLDED
    _FOLDED.clear()
    out = conv_norm(conv, bn, x.requires_grad_(True))
    assert out.requires_grad and conv not in _FOLDED


def test_cache_follows_weight_changes_and_stays_out_of_the_state_dict():
    conv = nn.Conv2d(3, 4, 1, bias=True).double().eval()
    bn = _frozen_bn(4)
    keys = set(conv.state_dict())
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        conv_norm(conv, bn, x)
        assert set(conv.state_dict()) == keys
        conv.weight.mul_(2.0)  # an optimizer step or load_state_dict changes parameters in place
        torch.testing.assert_close(conv_norm(conv, bn, x), _reference_conv_bn(x, conv, bn))
        bn.running_var.fill_(4.0)  # buffers too
        torch.testing.assert_close(conv_norm(conv, bn, x), _reference_conv_bn(x, conv, bn))
        bn.eps = 0.5  # a plain attribute
        torch.testing.assert_close(conv_norm(conv, bn, x), _reference_conv_bn(x, conv, bn))
        conv.float()
        bn.float()
        x32 = x.float()
        out = conv_norm(conv, bn, x32)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, _reference_conv_bn(x32, conv, bn), rtol=1e-5, atol=1e-5)
        conv.load_state_dict({"weight": torch.ones_like(conv.weight), "bias": torch.zeros(4)})
        torch.testing.assert_close(conv_norm(conv, bn, x32), _reference_conv_bn(x32, conv, bn), rtol=1e-5, atol=1e-5)


def test_switch_off_runs_the_plain_modules():
    conv = nn.Conv2d(2, 2, 1).double().eval()
    bn = _frozen_bn(2)
    calls = []
    bn.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        conv_norm(conv, bn, x)
        assert calls == []  # folded: the norm module is not called
        with fast_paths(fold_batchnorm=False, channels_last=False) as settings:
            assert not settings.fold_batchnorm and not fast_path_settings().channels_last
            assert to_channels_last(x) is x
            conv_norm(conv, bn, x)
        assert calls == [1]
    assert fast_path_settings().fold_batchnorm and fast_path_settings().channels_last


def test_switches_are_scoped_to_the_block_and_the_thread():
    seen = {}
    entered, checked = threading.Event(), threading.Event()

    def other_thread():
        entered.wait(5)
        seen["other"] = fast_path_settings()
        checked.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with pytest.raises(RuntimeError):
        with fast_paths(fold_batchnorm=False):
            with fast_paths(channels_last=False) as inner:
                assert inner == FastPaths(fold_batchnorm=False, channels_last=False)
                entered.set()
                checked.wait(5)
                raise RuntimeError("leave both blocks")
    worker.join(5)
    assert seen["other"] == FastPaths()  # another thread never saw this thread's switches
    assert fast_path_settings() == FastPaths()  # restored, although the block raised


def test_conv_norm_act_folds_its_frozen_norm():
    layer = ConvNormAct(3, 4, 3, norm="FrozenBN", activation=nn.ReLU).double().eval()
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.running_var.uniform_(0.5, 2.0)
        layer.norm.running_mean.uniform_(-1, 1)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    expected = torch.relu(_reference_conv_bn(x, layer, layer.norm))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
        assert layer in _FOLDED


def test_deformable_conv_folds_its_frozen_norm():
    conv = ModulatedDeformConv2d(4, 6, 3, padding=1).double().eval()
    with torch.no_grad():  # non-zero offsets and mask, so the deformable path really deforms
        conv.conv_offset.weight.normal_(0, 0.1)
        conv.conv_offset.bias.normal_(0, 0.5)
    bn = _frozen_bn(6)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        y = conv(x)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        expected = (y - bn.running_mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(conv_norm(conv, bn, x), expected, rtol=1e-12, atol=1e-12)
        assert conv in _FOLDED


def test_deep_copies_do_not_share_a_stale_cache():
    conv = nn.Conv2d(2, 3, 1).double().eval()
    bn = _frozen_bn(3)
    x = torch.randn(1, 2, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        conv_norm(conv, bn, x)
        conv2, bn2 = copy.deepcopy(conv), copy.deepcopy(bn)
        conv2.weight.add_(1.0)
        torch.testing.assert_close(conv_norm(conv2, bn2, x), _reference_conv_bn(x, conv2, bn2))
        torch.testing.assert_close(conv_norm(conv, bn, x), _reference_conv_bn(x, conv, bn))
