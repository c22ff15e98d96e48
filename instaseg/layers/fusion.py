"""Fast paths: FrozenBatchNorm2d folded into its convolution, and channels-last maps at inference.

A frozen batch norm is the per-channel affine map ``y = x * scale + shift``, so after a convolution
``norm(conv(x)) = conv'(x)`` with ``W' = W * scale`` (per output channel) and
``b' = b * scale + shift``: one pass over the output instead of two, and one buffer less.

Folded tensors are never parameters: ``state_dict()``, ``load_state_dict()`` and the optimizer see the
original convolution and norm. At inference they are a cache, used when autograd
records nothing (autograd off, or a frozen stage whose weights and input need no gradient) and nothing
is traced or compiled, and it is rebuilt whenever one of its source tensors changed (a
``load_state_dict``, an optimizer step, ``.to(dtype)`` or ``.to(device)``): each source tensor's storage
and version counter are part of the cache key.

In training the fold is recomputed at every call as autograd operations on the live weight
(:func:`fold_frozen_batchnorm_differentiable`): the weight's gradient flows through the scale, and the
norm's pass over the output, its output buffer and its backward are saved. Measured on a 2-core CPU
(ResNet-50-FPN Mask R-CNN, 2 images, 2 threads, ``benchmarks/train_step.py``, medians of 3 interleaved
rounds): 12.1 s folded vs 12.4 s unfolded at 512x768 on a loaded machine, no measurable difference at
800x1216 on a quiet one (18.5 vs 18.4 s): convolutions are 85% of that step.

Channels-last (``torch.channels_last``) memory format lets oneDNN run convolutions without
reordering their inputs and outputs; at inference ResNet switches its input to it, and every later
layer keeps that layout. Training (autograd on) stays in the default layout: there oneDNN would
reorder every NCHW weight to channels-last and every weight gradient back, each step (the tiny
preset's forward + backward + AdamW step on a 2-core CPU: 0.376 s channels-last vs 0.324 s,
medians of 8 interleaved rounds).

Both switches are on by default; :func:`fast_paths` turns them off for a block of code (to measure
their effect, or to compare outputs). The switches live in a ``contextvars.ContextVar``, not in a
module global: a ``with fast_paths(...)`` block changes them for its own thread (or asyncio task)
only, and restores them on exit even when the block raises.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.layers.norm import FrozenBatchNorm2d

__all__ = [
    "FastPaths",
    "fast_paths",
    "fast_path_settings",
    "fold_frozen_batchnorm",
    "fold_frozen_batchnorm_differentiable",
    "conv_norm",
    "folded_conv_weights",
    "to_channels_last",
]


@dataclass(frozen=True)
class FastPaths:
    """Which speed switches are on (in the current context; see :func:`fast_paths`)."""

    fold_batchnorm: bool = True  # FrozenBatchNorm2d folded into the conv before it (training and inference)
    channels_last: bool = True  # at inference: backbone input (so every feature map) channels-last


# The switches in force: each thread starts with the defaults; fast_paths() sets them for a block.
_SETTINGS: contextvars.ContextVar[FastPaths] = contextvars.ContextVar("instaseg_fast_paths", default=FastPaths())


def fast_path_settings() -> FastPaths:
    """The switches in force now (in this thread / task)."""
    return _SETTINGS.get()


@contextmanager
def fast_paths(fold_batchnorm: bool | None = None, channels_last: bool | None = None) -> Iterator[FastPaths]:
    """Set the speed switches for a ``with`` block (None leaves a switch as it is); restores them after.

    ``with fast_paths(fold_batchnorm=False, channels_last=False): model.predict(images)`` runs the
    plain path, which gives the same results up to float rounding. Other threads keep their own
    switches (a ContextVar, not a process-wide global).
    """
    changes = {k: v for k, v in (("fold_batchnorm", fold_batchnorm), ("channels_last", channels_last)) if v is not None}
    settings = replace(_SETTINGS.get(), **changes)
    token = _SETTINGS.set(settings)
    try:
        yield settings
    finally:
        _SETTINGS.reset(token)


def to_channels_last(x: Tensor) -> Tensor:
    """``x (N, C, H, W)`` in channels-last memory format when that switch is on and autograd is off
    (inference), else ``x``."""
    if torch.compiler.is_dynamo_compiling():  # inductor picks its own layouts (and dynamo cannot read a ContextVar)
        return x
    if _SETTINGS.get().channels_last and x.dim() == 4 and not torch.is_grad_enabled():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def fold_frozen_batchnorm(weight: Tensor, bias: Tensor | None, norm: FrozenBatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight ``(C_out, ...)`` and bias ``(C_out,)`` of ``norm(conv(x))`` as one convolution.

    Computed in float64 and rounded once to ``weight``'s dtype, so the folded layer is as close to
    the two-step one as the dtype allows.
    """
    scale = norm.weight.double() * torch.rsqrt(norm.running_var.double() + norm.eps)
    shift = norm.bias.double() - norm.running_mean.double() * scale
    folded_weight = weight.double() * scale.view(-1, *([1] * (weight.dim() - 1)))
    folded_bias = shift if bias is None else bias.double() * scale + shift
    return folded_weight.to(weight.dtype), folded_bias.to(weight.dtype)


# conv module -> (source tensors, their versions, channels_last flag, eps, folded weight, folded bias).
# eps is a plain attribute (no version counter), so it is compared by value.
# A weak dictionary: the cache dies with the module and never enters its state dict or pickles.
_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _sources(conv: nn.Module, norm: FrozenBatchNorm2d) -> list[Tensor]:
    tensors = [conv.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var]
    return tensors if conv.bias is None else tensors + [conv.bias]


def _tracing() -> bool:
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def _can_fold(conv: nn.Module, norm: nn.Module) -> bool:
    # _tracing() first: dynamo cannot read the ContextVar (a graph break at every convolution), and
    # a compiled graph folds frozen norms itself (inductor's freezing)
    if _tracing() or not (_SETTINGS.get().fold_batchnorm and isinstance(norm, FrozenBatchNorm2d)):
        return False
    return not any(t.is_meta for t in _sources(conv, norm))


def _needs_autograd(conv: nn.Module, x: Tensor) -> bool:
    """Whether autograd would record ``conv(x)``: grad mode on and ``x`` or a conv parameter requiring grad
    (a frozen stage's conv on an input without gradient records nothing, like inference)."""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for p in conv.parameters(recurse=False))


def fold_frozen_batchnorm_differentiable(weight: Tensor, bias: Tensor | None,
                                         norm: FrozenBatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight ``(C_out, ...)`` and bias ``(C_out,)`` of ``norm(conv(x))`` in ``weight``'s dtype, as autograd
    operations: the weight's gradient flows through the per-channel scale. For training, where the
    weight changes every step (nothing is cached)."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    shift = norm.bias - norm.running_mean * scale
    folded_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    return folded_weight, shift if bias is None else torch.addcmul(shift, bias, scale)


def _folded(conv: nn.Module, norm: FrozenBatchNorm2d, channels_last: bool) -> tuple[Tensor, Tensor]:
    sources = _sources(conv, norm)
    versions = tuple(t._version for t in sources)
    cached = _FOLDED.get(conv)
    if cached is not None:
        kept, kept_versions, kept_layout, kept_eps, weight, bias = cached
        same = len(kept) == len(sources) and all(
            a.data_ptr() == b.data_ptr() and a.dtype == b.dtype and a.device == b.device
            for a, b in zip(kept, sources)
        )
        if same and (kept_versions, kept_layout, kept_eps) == (versions, channels_last, norm.eps):
            return weight, bias
    weight, bias = fold_frozen_batchnorm(conv.weight, conv.bias, norm)
    if channels_last and weight.dim() == 4:
        weight = weight.contiguous(memory_format=torch.channels_last)
    # Detached aliases keep the source storages alive, so a new tensor cannot reuse their address.
    _FOLDED[conv] = ([t.detach() for t in sources], versions, channels_last, norm.eps, weight, bias)
    return weight, bias


def folded_conv_weights(conv: nn.Module, norm: nn.Module, x: Tensor) -> tuple[Tensor, Tensor] | None:
    """Folded ``(weight, bias)`` of ``norm(conv(.))`` for input ``x``, or None where folding is off.

    None unless ``norm`` is a FrozenBatchNorm2d, folding is switched on and nothing is being traced or
    compiled. Where autograd records the conv, the fold is computed afresh as autograd operations;
    otherwise it comes from the cache, channels-last when ``x`` is (what oneDNN wants then), for
    ``conv.weight`` of a plain 2-D convolution.
    """
    if not _can_fold(conv, norm):
        return None
    if _needs_autograd(conv, x):
        return fold_frozen_batchnorm_differentiable(conv.weight, conv.bias, norm)
    if any(t.is_inference() for t in _sources(conv, norm)):
        return None  # inference tensors cannot be saved in the cache's detached aliases
    plain_conv = isinstance(conv, nn.Conv2d) and conv.weight.dim() == 4
    return _folded(conv, norm, plain_conv and x.is_contiguous(memory_format=torch.channels_last))


def conv_norm(conv: nn.Module, norm: nn.Module, x: Tensor) -> Tensor:
    """``norm(conv(x))``; with a FrozenBatchNorm2d, one convolution with folded weights.

    ``conv`` is an ``nn.Conv2d`` or an :class:`~instaseg.layers.ModulatedDeformConv2d` (any other
    module is simply called); ``norm`` any module (``nn.Identity`` too). Shapes are the conv's.
    """
    if type(conv) is nn.Conv2d and conv.padding_mode == "zeros":
        folded = folded_conv_weights(conv, norm, x)
        if folded is not None:
            return F.conv2d(x, folded[0], folded[1], conv.stride, conv.padding, conv.dilation, conv.groups)
    elif hasattr(conv, "forward_with_weights"):  # deformable conv: its offset branch stays as it is
        folded = folded_conv_weights(conv, norm, x)
        if folded is not None:
            return conv.forward_with_weights(x, folded[0], folded[1])
    return norm(conv(x))
