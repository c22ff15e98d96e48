"""Normalization layers: FrozenBatchNorm2d, its converter, and ``get_norm`` by name.

Detection backbones are fine-tuned with batches of one or two images per device, too few for
batch statistics, so the ImageNet statistics are frozen into a per-channel affine map
(Detectron2 and torchvision detection models both do this).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d", "convert_frozen_batchnorm", "get_norm", "NORM_NAMES"]

# Names accepted by get_norm; "" (or None) means "no normalization".
NORM_NAMES = ("FrozenBN", "BN", "SyncBN", "GN", "")

# GroupNorm with 32 groups, as in Wu & He, "Group Normalization" (2018) and Detectron2's "GN".
_GN_GROUPS = 32


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters: ``y = x * scale + shift``.

    ``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale``, per
    channel. All four tensors are buffers (never trained) and carry torchvision's names, so a
    ``BatchNorm2d`` or torchvision ``FrozenBatchNorm2d`` state dict loads; a stray
    ``num_batches_tracked`` entry (in checkpoints trained with plain BatchNorm2d) is ignored.

    Input and output: ``(N, C, H, W)``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        # BatchNorm2d checkpoints carry a step counter that has no meaning once frozen.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        # Cast to the input dtype so half-precision inputs stay half precision.
        scale = scale.to(x.dtype).reshape(1, -1, 1, 1)
        shift = shift.to(x.dtype).reshape(1, -1, 1, 1)
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace each ``BatchNorm2d`` / ``SyncBatchNorm`` in ``module``'s tree by FrozenBatchNorm2d.

    Running statistics, affine parameters (1 and 0 when the norm has none) and ``eps`` are copied.
    Children are replaced in place; the return value is ``module`` itself, or the new
    FrozenBatchNorm2d when ``module`` is a batch norm (so always use the returned module).
    """
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        reference = next(iter([*module.parameters(), *module.buffers()]), None)
        if reference is not None:  # same device and floating dtype as the layer it replaces
            frozen = frozen.to(device=reference.device, dtype=_float_dtype(module, reference))
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new_child = convert_frozen_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def _float_dtype(module: nn.Module, reference: Tensor) -> torch.dtype:
    if module.running_mean is not None:
        return module.running_mean.dtype
    return reference.dtype if reference.is_floating_point() else torch.get_default_dtype()


def get_norm(norm: str | None, channels: int) -> nn.Module | None:
    """A normalization layer for ``channels`` feature channels, chosen by name.

    ``"FrozenBN"``: FrozenBatchNorm2d; ``"BN"``: BatchNorm2d; ``"SyncBN"``: SyncBatchNorm (needs an
    initialised process group when training); ``"GN"``: GroupNorm with 32 groups; ``""`` or None:
    no normalization (returns None, so callers can also turn the conv bias on).
    """
    if norm is None or norm == "":
        return None
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "GN":
        if channels % _GN_GROUPS != 0:
            raise ValueError(f"GN uses {_GN_GROUPS} groups; {channels} channels do not divide")
        return nn.GroupNorm(_GN_GROUPS, channels)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORM_NAMES} or None")
