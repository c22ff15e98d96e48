"""Training a model built from a config: ``instaseg train`` and ``instaseg demo``.

``instaseg.engine.train`` trains whatever model it is handed (a factory, called after seeding); here
that model is :func:`~instaseg.hub.build.model_from_config` (ImageNet backbone weights included), and
``init_weights`` (an instaseg checkpoint, e.g. from ``--weights``) initialises it for fine-tuning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from instaseg.config.schema import Config
from instaseg.engine import train as engine_train
from instaseg.engine.checkpoint import load_checkpoint
from instaseg.engine.train import Initialiser, TestLoaderFn, TrainLoaderFn
from instaseg.hub.build import load_pretrained_weights, model_from_config

__all__ = ["train", "train_on_dataset", "fine_tuning_initialiser"]


def fine_tuning_initialiser(config: Config, init_weights: str | Path | None) -> Initialiser | None:
    """Initialise a fresh model of ``config`` from the checkpoint ``init_weights`` (class-sized tensors
    re-initialised when its number of classes differs: :func:`~instaseg.hub.build.load_pretrained_weights`);
    None without one."""
    if init_weights is None:
        return None

    def initialise(model: nn.Module) -> list[str]:
        return load_pretrained_weights(model, config, load_checkpoint(init_weights), str(init_weights))

    return initialise


def train(config: Config, train_json: str | Path, train_images: str | Path, out_dir: str | Path,
          val_json: str | Path | None = None, val_images: str | Path | None = None, resume: bool = False,
          overrides_note: str | None = None, progress: bool = True, *, log_period: int = 20,
          device: str | None = None, init_weights: str | Path | None = None) -> dict[str, Any]:
    """Train ``config``'s model on a COCO dataset (:func:`instaseg.engine.train.train`).

    ``train_json`` / ``val_json`` are COCO instance annotation files, ``*_images`` their image
    folders. ``init_weights``: an instaseg checkpoint to start from; a resumed run ignores it.
    """
    return engine_train.train(config, train_json, train_images, out_dir, val_json, val_images, resume,
                              overrides_note, progress, model_factory=model_from_config, log_period=log_period,
                              device=device, initialise=fine_tuning_initialiser(config, init_weights))


def train_on_dataset(config: Config, train_dataset: Any, out_dir: str | Path, *, val_dataset: Any = None,
                     resume: bool = False, overrides_note: str | None = None, progress: bool = True,
                     log_period: int = 20, device: str | None = None, train_loader_fn: TrainLoaderFn | None = None,
                     test_loader_fn: TestLoaderFn | None = None,
                     init_weights: str | Path | None = None) -> dict[str, Any]:
    """Train ``config``'s model on dataset objects (:func:`instaseg.engine.train.train_on_dataset`).

    ``init_weights``: an instaseg checkpoint to start from; a resumed run ignores it.
    """
    return engine_train.train_on_dataset(
        config, train_dataset, out_dir, model_factory=model_from_config, val_dataset=val_dataset, resume=resume,
        overrides_note=overrides_note, progress=progress, log_period=log_period, device=device,
        train_loader_fn=train_loader_fn, test_loader_fn=test_loader_fn,
        initialise=fine_tuning_initialiser(config, init_weights))
