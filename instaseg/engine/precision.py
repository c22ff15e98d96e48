"""Reduced-precision training and inference: one place that turns ``train.precision`` into autocast.

``"bf16"`` runs the forward under ``torch.autocast(bfloat16)``: convolutions and matrix products in
bfloat16 (oneDNN's AVX512-BF16 / AMX kernels on the CPU, tensor cores on the GPU), everything else
(box coding, proposal selection, RoIAlign's sampling positions, target building) in the dtype of its
inputs. The weights, their gradients and the optimizer stay float32 (autocast casts a copy per
use), and :func:`float32_outputs` hands the loss float32 logits, so the loss terms and their
reductions are float32 too. bfloat16 has float32's exponent range, so no loss scaling is needed.
``"fp16"`` (GPU only) is float16 autocast with a ``GradScaler`` against gradient underflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, TypeVar

import torch
from torch import Tensor

from instaseg.detectors.base import full_precision

__all__ = ["autocast_dtype", "autocast", "float32_outputs", "grad_scaler", "bf16_is_native"]

T = TypeVar("T")

_DTYPES = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_is_native() -> bool:
    """Whether this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX); without it oneDNN emulates it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``precision`` ("float32", "bf16", "fp16") means on ``device``; None for
    float32. fp16 on a CPU is refused with a warning (it is slower than float32 there) and runs float32."""
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(_DTYPES)}")
    if precision == "fp16" and device.type != "cuda":
        warnings.warn(f"precision fp16 needs CUDA; running float32 on {device} (bf16 is the CPU's reduced "
                      "precision)", stacklevel=2)
        return None
    return _DTYPES[precision]


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``; nothing for None (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for float16 (small gradients underflow it); None otherwise."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def float32_outputs(outputs: T) -> T:
    """``outputs`` with every reduced-precision floating tensor cast to float32, through dataclasses,
    lists, tuples and dicts (the raw outputs a detector's ``loss`` reads). Casting is differentiable,
    so the gradients flow back into the bfloat16 forward."""
    if isinstance(outputs, Tensor):
        return full_precision(outputs)
    if dataclasses.is_dataclass(outputs) and not isinstance(outputs, type):
        changes = {f.name: float32_outputs(getattr(outputs, f.name)) for f in dataclasses.fields(outputs) if f.init}
        return dataclasses.replace(outputs, **changes)
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(float32_outputs(item) for item in outputs)
    if isinstance(outputs, dict):
        return {key: float32_outputs(value) for key, value in outputs.items()}
    return outputs
