"""What every converter does the same way, whoever published the weights."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from instaseg.errors import CheckpointError

__all__ = ["rename_state_dict"]


def rename_state_dict(state: dict[str, Tensor], rename: Callable[[str], str | None], what: str) -> dict[str, Tensor]:
    """``state`` with every key renamed by ``rename``; a key it maps to ``None`` has no counterpart
    and fails the whole conversion (``CheckpointError`` naming the first 8, ``what`` naming the source)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for name, value in state.items():
        new = rename(name)
        if new is None:
            unknown.append(name)
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(f"{len(unknown)} {what} tensors have no counterpart: {unknown[:8]}")
    return out
