"""Checkpoints: weights and the config together, written atomically, read without unpickling code.

A checkpoint is a ``torch.save`` of plain containers only::

    {"format": "instaseg", "version": 1, "config": {...nested dict...}, "model": state_dict,
     "iteration": int, ... optional "optimizer", "scheduler", "rng", "data" for resuming}

and is always read with ``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers, so a malicious file cannot run code.

Nothing here knows a model: building the model a checkpoint's config describes, and fine-tuning
initialisation, are ``instaseg.hub`` (``load_model``, ``load_pretrained_weights``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instaseg.config.io import config_to_dict
from instaseg.config.schema import Config
from instaseg.data.coco_keypoints import KeypointSchema
from instaseg.errors import CheckpointError
from instaseg.structures.keypoints import COCO_PERSON_KEYPOINT_NAMES, COCO_PERSON_SKELETON

__all__ = [
    "atomic_torch_save",
    "point_last_at",
    "rotate_checkpoints",
    "checkpoint_categories",
    "checkpoint_keypoints",
    "load_checkpoint",
    "load_state_dict_checked",
    "save_checkpoint",
]

FORMAT = "instaseg"
VERSION = 1


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash (or a full disk) while writing leaves the previous file intact.
    An ``OSError`` from a write (``ENOSPC``: disk full) is raised as itself, not as the
    ``RuntimeError`` that torch's zip writer turns it into, so callers can tell it apart.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    writer = None
    try:
        with os.fdopen(fd, "wb") as handle:
            writer = _RecordingWriter(handle)
            torch.save(obj, writer)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if writer is not None and writer.error is not None and writer.error is not error:
            raise writer.error from error
        raise


class _RecordingWriter:
    """A write-only file wrapper that keeps the first ``OSError`` a write raised."""

    def __init__(self, handle: Any) -> None:
        self.handle, self.error = handle, None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(path: str | Path, model: nn.Module, config: Config, **extra: Any) -> None:
    """Save ``model``'s weights with its ``config`` (and resume state in ``extra``) atomically."""
    payload = {"format": FORMAT, "version": VERSION, "config": config_to_dict(config),
               "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    payload.update(extra)
    atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; clear errors for missing, truncated, foreign or unsafe files.

    Raises:
        CheckpointError: the file is missing, truncated, not an instaseg checkpoint, or holds
            Python objects (a pickle that could run code is refused before anything runs).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused, truncated zip, not a torch file ...
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise CheckpointError(
                f"{path}: refused to load: the file contains Python objects that could run code "
                f"when unpickled ({message}). Only tensors and plain containers are accepted."
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {message}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an instaseg checkpoint; convert peer weights first with `instaseg convert`"
        )
    return payload


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], allow_partial: bool = False,
                            source: str = "checkpoint") -> list[str]:
    """Load ``state`` into ``model``; every missing, unexpected or mis-shaped tensor is named.

    With ``allow_partial`` the tensors that fit are loaded and the names of the rest returned.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    problems = ([f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]
                + [f"shape {m}" for m in mismatched])
    if problems and not allow_partial:
        shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise CheckpointError(
            f"{source} does not fit this model ({len(problems)} problems; a different preset or number "
            f"of classes?):\n  {shown}\nUse --allow-partial to load only the tensors that fit."
        )
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(fitting, strict=False)
    return problems


def checkpoint_categories(payload: dict[str, Any], num_classes: int) -> tuple[list[int], list[str]]:
    """The dataset category ids and names a checkpoint was trained with (label k -> ids[k]).

    Checkpoints from ``instaseg train`` store them under ``"categories"``; converted or older ones
    fall back to ids 1..C and names "class_k".
    """
    categories = payload.get("categories") or {}
    ids = list(categories.get("ids") or range(1, num_classes + 1))
    names = list(categories.get("names") or [f"class_{k}" for k in range(num_classes)])
    if len(ids) != num_classes or len(names) != num_classes:
        raise CheckpointError(f"checkpoint lists {len(ids)} categories but its model has {num_classes} classes")
    return ids, names


def checkpoint_keypoints(payload: dict[str, Any], num_keypoints: int) -> KeypointSchema | None:
    """The keypoint names and skeleton (0-based pairs) a keypoint model was trained with; None when
    ``num_keypoints`` is 0 (a model without a keypoint head).

    ``instaseg train`` stores them beside the categories (``"categories": {..., "keypoints": {"names":
    [...], "skeleton": [[a, b], ...]}}``, from the training set's COCO categories). Checkpoints without
    them (converted, or trained before they were stored) get COCO's person keypoints and skeleton
    when the model predicts 17 keypoints, else ``keypoint_k`` names and no skeleton (joints, no limbs).
    """
    if num_keypoints <= 0:
        return None
    stored = (payload.get("categories") or {}).get("keypoints")
    if stored:
        names = tuple(stored.get("names") or ())
        skeleton = tuple((int(a), int(b)) for a, b in stored.get("skeleton") or ())
        if len(names) != num_keypoints or any(not (0 <= i < num_keypoints) for pair in skeleton for i in pair):
            raise CheckpointError(f"checkpoint lists {len(names)} keypoints (skeleton {list(skeleton)}) but its "
                                  f"model predicts {num_keypoints}")
        return KeypointSchema(names, skeleton)
    if num_keypoints == len(COCO_PERSON_KEYPOINT_NAMES):
        return KeypointSchema(COCO_PERSON_KEYPOINT_NAMES, COCO_PERSON_SKELETON)
    return KeypointSchema(tuple(f"keypoint_{k}" for k in range(num_keypoints)), ())


def point_last_at(path: Path) -> None:
    """Make ``last.pt`` a copy of ``path`` atomically (a hard link when the file system allows)."""
    tmp = path.with_name(".last.pt.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, path.with_name("last.pt"))


def rotate_checkpoints(ckpt_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` ``model_*.pt`` (0 keeps all; last/best untouched)."""
    if keep_last <= 0:
        return
    for old in sorted(ckpt_dir.glob("model_*.pt"))[:-keep_last]:
        old.unlink(missing_ok=True)
