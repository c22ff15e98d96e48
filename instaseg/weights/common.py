"""What every converter does the same way, whoever published the weights, and what it returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from instaseg.config.schema import Config
from instaseg.errors import CheckpointError

__all__ = ["ConversionSummary", "ConvertedWeights", "rename_state_dict"]


@dataclass(frozen=True)
class ConversionSummary:
    """What a converter read and wrote (the CLI prints it)."""

    architecture: str  # e.g. "Mask R-CNN R-50-FPN (torchvision)"
    num_classes: int  # foreground classes
    num_tensors: int  # tensors written to the instaseg checkpoint
    config_name: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConvertedWeights:
    """A peer checkpoint in instaseg's terms: what every ``read_*_file`` converter returns.

    Nothing is built or saved here: ``instaseg.hub.save_converted`` builds ``config``'s model, loads
    ``state`` strictly and writes the instaseg checkpoint.
    """

    state: dict[str, Tensor]  # instaseg tensor names
    config: Config  # the model the tensors fit, with the publisher's inference conventions
    summary: ConversionSummary
    categories: dict[str, list] | None = None  # {"ids": [...], "names": [...]} in label order, when known


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
