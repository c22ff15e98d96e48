"""The training loop: one explicit loop, no hook framework.

Per iteration ``i`` (0-based; ``iteration`` below counts completed iterations):

1. at the boundary, stop if SIGTERM / Ctrl-C asked for it (all ranks agree), then snapshot RNGs
   (data loader workers ignore those signals; if they die anyway after a stop request, the
   loader's RuntimeError is caught and the last exact boundary state is saved);
2. set the LR to ``LRSchedule.lr_at(i)``;
3. for each of ``accumulate`` micro-batches: forward through the (DDP-wrapped) model, loss,
   backward of ``loss / accumulate`` (DDP syncs gradients on the last micro-batch only);
4. clip the gradient norm (optional) and step, unless a loss was non-finite: then the step is
   skipped (no update), a warning is issued, and after ``max_bad_steps`` in a row a checkpoint is
   written and :class:`NonFiniteLossError` raised;
5. every ``log_period``: a line in ``metrics.jsonl``; every ``eval_period`` and at the end:
   COCO evaluation (``metrics.json``, ``checkpoints/best.pt`` by segm AP, or keypoint AP for a
   model without masks: :func:`~instaseg.engine.evaluate.main_metric_type`); every
   ``checkpoint_period`` and at the end: ``checkpoints/model_{iteration:07d}.pt`` + ``last.pt``.

Exact resumption: the data stream is a pure function of (seed, micro-batch index) and is read with
the global RNGs set aside, the LR is a pure function of the iteration, and a checkpoint holds
model, optimizer, grad scaler, iteration and every rank's RNG states taken at an iteration
boundary. So ``N`` iterations equal ``k`` + resume + ``N - k`` (bit-exact on the CPU).

Batch size: ``train.ims_per_batch`` is the number of images per optimizer step over all processes
and micro-batches (Detectron2's meaning), so the LR schedule does not change with the hardware;
each micro-batch holds ``ims_per_batch / (world_size * accumulate)`` images.

The model: the loop trains whatever ``model_factory(config)`` returns, as long as it keeps the
detector contract (``forward(images, targets)``, ``loss(raw, targets)``, ``predict(images)``,
``num_classes``); nothing here imports a detector. ``instaseg.hub.train_on_dataset`` passes
``instaseg.hub.model_from_config`` (and the fine-tuning initialisation of ``--weights``).
"""

from __future__ import annotations

import contextlib
import errno
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from instaseg.config.io import config_from_dict, save_yaml
from instaseg.config.schema import Config
from instaseg.detectors.base import Detector
from instaseg.engine.allocator import malloc_setting, reuse_freed_memory
from instaseg.engine.compile import (TRAIN_PARTS, buffer_snapshot, compile_parts, describe_error, drop_compiled,
                                     eager_parts, is_compile_error, restore_buffers)
from instaseg.engine.checkpoint import (load_checkpoint, load_state_dict_checked, point_last_at, rotate_checkpoints,
                                       save_checkpoint)
from instaseg.engine.distributed import (all_gather_objects, any_across_ranks, barrier, destroy_distributed,
                                         get_local_rank, get_rank, get_world_size, init_distributed,
                                         is_distributed, wrap_model)
from instaseg.config.budget import coco_max_dets
from instaseg.engine.evaluate import METRIC_TYPES, evaluate_model, main_metric_type, write_metrics_json
from instaseg.engine.logging import (LossMeter, MetricsWriter, format_losses, get_logger, progress_bar,
                                     setup_logger, teardown_logger)
from instaseg.engine.optim import LRSchedule, build_optimizer, check_resumed_schedule, resolve_schedule
from instaseg.engine.precision import autocast, autocast_dtype, bf16_is_native, float32_outputs, grad_scaler
from instaseg.engine.rng import capture_rng_state, restore_rng_state, seed_everything
from instaseg.engine.run_report import NUM_TRAIN_BATCHES, record_label_stats, record_train_batch, refresh_run_folder
from instaseg.errors import ConfigError, InstasegError
from instaseg.evaluation.tables import format_ap, summary_keys

__all__ = ["train", "train_on_dataset", "NonFiniteLossError", "CheckpointWriteError", "ModelFactory", "Initialiser",
           "TrainLoaderFn", "TestLoaderFn"]

# config -> a freshly initialised model that keeps the detector contract. Called once per run, after
# the random generators are seeded with train.seed, so the initial weights are a function of the config.
ModelFactory = Callable[[Config], Detector]
# the fresh model -> report lines: the caller's initialisation of it (fine-tuning from a checkpoint);
# not called when the run resumes from its own checkpoint, which holds every weight.
Initialiser = Callable[[Detector], Iterable[str]]

# (dataset, config, micro_batch_size, start_micro_batch, distributed) -> infinite stream of batches
TrainLoaderFn = Callable[[Any, Config, int, int, bool], Iterable[Any]]
TestLoaderFn = Callable[[Any], Iterable[Any]]  # dataset -> batches of original images, in order


class NonFiniteLossError(InstasegError, FloatingPointError):
    """Too many non-finite losses in a row; a checkpoint was written before raising."""


class CheckpointWriteError(InstasegError, OSError):
    """A checkpoint could not be written (disk full, no permission): training stops, the previous
    checkpoints stay intact (saves are atomic) and the message names the last good one."""


class _StopSignals:
    """SIGTERM, and a first Ctrl-C, set ``requested``; the loop stops at the next iteration boundary.

    A second Ctrl-C raises ``KeyboardInterrupt`` at once. Handlers can only be installed from the
    main thread; elsewhere only ``KeyboardInterrupt`` is handled.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.requested = True
        name = signal.Signals(signum).name
        get_logger().warning(f"{name} received: stopping after this iteration (Ctrl-C again to stop now)")

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


@dataclass
class _Run:
    """Everything the loop reads and updates (built once by :func:`_setup`)."""

    config: Config
    model: Detector  # the bare model: loss(), predict(), state_dict()
    ddp_model: nn.Module  # DDP wrapper when distributed (forward only), else the model
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    device: torch.device
    out_dir: Path
    micro_batch: int
    distributed: bool
    main: bool
    val_dataset: Any
    test_loader_fn: TestLoaderFn | None
    progress: bool
    log_period: int
    note: str | None
    amp_dtype: torch.dtype | None = None
    scaler: Any = None
    dataset: Any = None  # the training set
    loader_fn: TrainLoaderFn | None = None
    stream: Iterator[Any] | None = None
    compiled: list[str] = field(default_factory=list)  # the parts train.compile compiled; [] = eager
    compile_proven: bool = False  # a compiled step has finished
    iteration: int = 0
    best_segm_ap: float = float("nan")  # best AP of main_metric_type (segm; keypoints without masks)
    bad_steps: int = 0
    skipped_steps: int = 0
    phase: str = "setup"  # "compute" | "step" | "after": where a KeyboardInterrupt landed
    rng_snapshot: dict[str, Any] | None = None
    final_metrics: dict[str, Any] | None = None
    categories: dict[str, list] | None = None  # dataset category ids and names, label order
    meter: LossMeter = field(default_factory=LossMeter)
    writer: Any = None
    bar: Any = None
    stop: _StopSignals = field(default_factory=_StopSignals)

    @property
    def max_iter(self) -> int:
        return self.schedule.max_iter

    @property
    def ckpt_dir(self) -> Path:
        return self.out_dir / "checkpoints"


# ------------------------------------------------------------------------------------- entry points
def train(config: Config, train_json: str | Path, train_images: str | Path, out_dir: str | Path,
          val_json: str | Path | None = None, val_images: str | Path | None = None, resume: bool = False,
          overrides_note: str | None = None, progress: bool = True, *, model_factory: ModelFactory,
          log_period: int = 20, device: str | None = None, initialise: Initialiser | None = None) -> dict[str, Any]:
    """Train ``config``'s model on a COCO dataset; see :func:`train_on_dataset` for the rest.

    ``train_json`` / ``val_json`` are COCO instance annotation files, ``*_images`` their image
    folders. ``config.model.num_classes`` must equal the training set's number of categories.
    """
    from instaseg.data.coco import CocoDataset

    if (val_json is None) != (val_images is None):
        raise ConfigError("give both val_json and val_images, or neither")
    train_set = CocoDataset(train_json, train_images)
    val_set = CocoDataset(val_json, val_images) if val_json is not None else None
    return train_on_dataset(config, train_set, out_dir, model_factory=model_factory, val_dataset=val_set,
                            resume=resume, overrides_note=overrides_note, progress=progress, log_period=log_period,
                            device=device, initialise=initialise)


def train_on_dataset(config: Config, train_dataset: Any, out_dir: str | Path, *, model_factory: ModelFactory,
                     val_dataset: Any = None, resume: bool = False, overrides_note: str | None = None,
                     progress: bool = True, log_period: int = 20, device: str | None = None,
                     train_loader_fn: TrainLoaderFn | None = None, test_loader_fn: TestLoaderFn | None = None,
                     initialise: Initialiser | None = None) -> dict[str, Any]:
    """Train ``model_factory(config)`` on dataset objects (``len()``, ``num_classes``; val: ``json_path``,
    ``category_ids``).

    Under ``torchrun`` this joins the process group and trains with DDP. ``resume`` continues from
    ``out_dir/checkpoints/last.pt`` (from scratch, with a warning, when there is none).
    ``train_loader_fn`` / ``test_loader_fn`` replace the ``instaseg.data.loader`` streams (their
    contract is :data:`TrainLoaderFn` / :data:`TestLoaderFn`); ``device`` defaults to the
    process's GPU when CUDA is available, else the CPU. ``initialise``: the caller's initialisation of
    the fresh model (fine-tuning: ``instaseg.hub.load_pretrained_weights`` re-initialises the class-sized
    tensors when the checkpoint's number of classes differs); a resumed run does not call it.

    Returns a summary: ``status`` ("finished" or "interrupted"), ``iteration``, ``max_iter``,
    ``last_checkpoint``, ``best_checkpoint`` (or None), ``metrics`` (last evaluation or None),
    ``skipped_steps``, ``seconds``, ``out_dir``.
    """
    reuse_freed_memory()  # before the model and the first batch: see instaseg.engine.allocator
    owns_group = init_distributed()
    try:
        run = _setup(config, model_factory, train_dataset, Path(out_dir), val_dataset, resume, overrides_note,
                     progress, log_period, device, train_loader_fn, test_loader_fn, initialise)
        return _train(run)
    finally:
        teardown_logger()
        if owns_group:
            destroy_distributed()


# ------------------------------------------------------------------------------------- setup
def _micro_batch_size(cfg: Any, world_size: int) -> int:
    if cfg.accumulate < 1:
        raise ConfigError(f"train.accumulate must be >= 1, got {cfg.accumulate}")
    parts = world_size * cfg.accumulate
    if cfg.ims_per_batch % parts:
        raise ConfigError(f"train.ims_per_batch={cfg.ims_per_batch} must be divisible by processes x accumulate "
                          f"= {world_size} x {cfg.accumulate}")
    return cfg.ims_per_batch // parts


def _pick_device(device: str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda", get_local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def _setup(config: Config, model_factory: ModelFactory, dataset: Any, out_dir: Path, val_dataset: Any, resume: bool,
           note: str | None, progress: bool, log_period: int, device_name: str | None,
           train_loader_fn: TrainLoaderFn | None, test_loader_fn: TestLoaderFn | None,
           initialise: Initialiser | None = None) -> _Run:
    cfg = config.train
    num_classes = getattr(dataset, "num_classes", config.model.num_classes)
    if num_classes != config.model.num_classes:
        raise ConfigError(f"the model has num_classes={config.model.num_classes} but the training set has "
                          f"{num_classes} categories: set model.num_classes={num_classes}")
    distributed, main = is_distributed(), get_rank() == 0
    last = out_dir / "checkpoints" / "last.pt"
    if last.is_file() and not resume:
        raise InstasegError(f"{out_dir} already holds a training run ({last}); resume it with --resume "
                            "or choose another output folder")
    logger = setup_logger(out_dir if main else None, enabled=main)
    device = _pick_device(device_name)
    seed_everything(cfg.seed + get_rank())  # ranks draw different RoI samples; DDP syncs the weights
    max_iter, steps = resolve_schedule(cfg, len(dataset))
    micro_batch = _micro_batch_size(cfg, get_world_size())
    model = model_factory(config).to(device)
    if initialise is not None and not (resume and last.is_file()):
        for line in initialise(model):
            logger.info(line)
    run = _Run(config=config, model=model, ddp_model=model, optimizer=build_optimizer(model, cfg),
               schedule=LRSchedule(cfg, max_iter, steps), device=device, out_dir=out_dir,
               micro_batch=micro_batch, distributed=distributed, main=main,
               val_dataset=val_dataset, test_loader_fn=test_loader_fn, progress=progress,
               log_period=max(1, log_period), note=note, categories=_categories(dataset))
    run.amp_dtype = autocast_dtype(cfg.precision, device)
    run.scaler = grad_scaler(run.amp_dtype, device)
    if run.amp_dtype == torch.bfloat16 and device.type == "cpu" and not bf16_is_native():
        logger.warning("train.precision=bf16: this CPU has no bfloat16 arithmetic (AVX512-BF16 / AMX), so it is "
                       "emulated and convolutions run many times slower than in float32 (16x measured on an AVX2 "
                       "CPU): use train.precision=float32 here")
    rng_states = _resume(run, last, logger, len(dataset)) if resume and last.is_file() else None
    if resume and not last.is_file():
        logger.warning(f"--resume: no checkpoint in {last.parent}; starting from scratch")
    if cfg.compile:
        run.compiled = _compile_model(model, logger)
    run.ddp_model = wrap_model(model, device)
    run.loader_fn = train_loader_fn or _default_train_loader
    run.dataset = dataset
    run.stream = _open_stream(run)
    if rng_states is not None and len(rng_states) == get_world_size():
        restore_rng_state(rng_states[get_rank()])
    elif rng_states is not None:  # another number of processes: a fresh, distinct stream per rank
        seed_everything(cfg.seed + get_rank() + 7919 * run.iteration)
    if main:
        _write_config(config, out_dir / "config.yaml", note)
    if main and cfg.plots:  # labels.png, once per run folder: run_report
        record_label_stats(out_dir, dataset)
    run.writer = MetricsWriter(out_dir / "metrics.jsonl", enabled=main, tensorboard_dir=out_dir / "tensorboard")
    run.writer.truncate_after(run.iteration)
    logger.info(f"training {config.name}: {max_iter} iterations of {cfg.ims_per_batch} images "
                f"({get_world_size()} process(es) x {cfg.accumulate} micro-batch(es) of {run.micro_batch}) "
                f"on {device}, starting at iteration {run.iteration} (malloc: {malloc_setting()})")
    return run


def _compile_model(model: Detector, logger: Any) -> list[str]:
    """``train.compile``: ``torch.compile`` the dense parts in place (inductor; sizes go symbolic once
    the multi-scale input changes them); the parts compiled, or [] (eager) after a message when
    wrapping fails. Most failures come at the first compiled step instead: :func:`_gradients`."""
    try:
        parts = compile_parts(model, TRAIN_PARTS, dynamic=None, training=True)
    except Exception as error:  # noqa: BLE001 - any failure to compile means: train eagerly
        drop_compiled(model, TRAIN_PARTS)
        logger.warning(f"train.compile: torch.compile failed ({describe_error(error)}); training with the eager "
                       "modules")
        return []
    logger.info(f"train.compile: {', '.join(parts)} compiled with torch.compile (the first iteration, and the first "
                "one at a new image shape, include compilation)")
    return parts


def _open_stream(run: _Run) -> Iterator[Any]:
    """The training batches from micro-batch ``run.iteration * accumulate`` on (a pure function of it)."""
    start = run.iteration * run.config.train.accumulate
    return iter(run.loader_fn(run.dataset, run.config, run.micro_batch, start, run.distributed))


def _write_config(config: Config, path: Path, note: str | None) -> None:
    """The resolved config as YAML; the command-line overrides that made it as a comment on top."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_yaml(config, path)
    if note:
        path.write_text(f"# overrides: {note}\n" + path.read_text())


def _resume(run: _Run, path: Path, logger: Any, dataset_len: int) -> list[dict[str, Any]] | None:
    """Load ``path`` into the run; return the saved RNG states (one per rank) to restore later.

    A changed learning-rate schedule is accepted only when it keeps the learning rate of every
    iteration done (:func:`~instaseg.engine.optim.check_resumed_schedule`).
    """
    payload = load_checkpoint(path)
    if "iteration" in payload and isinstance(payload.get("config"), dict):
        try:
            saved = config_from_dict(payload["config"]).train
        except ConfigError as error:  # written by another version of the schema: nothing to compare
            logger.warning(f"{path}: its config does not parse ({error}); its learning-rate schedule is not checked")
        else:
            note = check_resumed_schedule(saved, int(payload.get("max_iter", saved.max_iter)), run.config.train,
                                          dataset_len, int(payload["iteration"]), str(path))
            if note:
                logger.info(note)
    load_state_dict_checked(run.model, payload["model"], source=str(path))
    if "optimizer" not in payload or "iteration" not in payload:
        raise InstasegError(f"{path} holds weights only (no optimizer state / iteration): it cannot be resumed")
    run.optimizer.load_state_dict(payload["optimizer"])
    if run.scaler is not None and payload.get("scaler"):
        run.scaler.load_state_dict(payload["scaler"])
    run.iteration = int(payload["iteration"])
    run.best_segm_ap = float(payload.get("best_segm_ap", float("nan")))
    rng = payload.get("rng")
    if rng is not None and len(rng) != get_world_size():
        logger.warning(f"{path} was written by {len(rng)} process(es), this run has {get_world_size()}: "
                       "the random sampling will not repeat the original run exactly")
    logger.info(f"resumed from {path} at iteration {run.iteration}")
    return rng


def _default_train_loader(dataset: Any, config: Config, batch_size: int, start: int,
                          distributed: bool) -> Iterable[Any]:
    from instaseg.data.loader import build_train_loader
    from instaseg.data.transforms import build_transforms

    # a keypoint dataset's left/right swap (CocoDataset.keypoint_flip_map); read only when flips happen,
    # so a dataset whose keypoint names do not pair up still trains without flips
    flip_map = getattr(dataset, "keypoint_flip_map", None) if config.train.flip_prob > 0 else None
    transforms = build_transforms(config, train=True, keypoint_flip_map=flip_map)
    return build_train_loader(dataset, transforms, batch_size, config.train.num_workers,
                              config.train.seed, distributed=distributed, start_iter=start)


# ------------------------------------------------------------------------------------- the loop
def _train(run: _Run) -> dict[str, Any]:
    start_time, start_iter = time.time(), run.iteration
    run.bar = progress_bar(run.max_iter, run.iteration, enabled=run.progress and run.main)
    status, path = "finished", None
    try:
        with run.stop:
            status = _loop(run)
            if status == "interrupted":
                with _worker_deaths_ignored():
                    path = _save(run, run.iteration, all_gather_objects(capture_rng_state()))
    except KeyboardInterrupt:
        status, path = "interrupted", _save_after_keyboard_interrupt(run)
    except RuntimeError as error:
        if not run.stop.requested:
            raise
        # The stop signal also reached the data loader's workers (a custom loader's, or workers
        # killed outright) and PyTorch raised where the main process was: save all the same.
        get_logger().warning(f"after the stop request: {(str(error).strip().splitlines() or [repr(error)])[0]}")
        status, path = "interrupted", _save_after_keyboard_interrupt(run)
    finally:
        run.bar.close()
        run.writer.close()
    logger = get_logger()
    if status == "interrupted":
        where = f"checkpoint {path}" if path else "no checkpoint (interrupted inside an optimizer step)"
        logger.warning(f"interrupted at iteration {run.iteration}/{run.max_iter}: {where}. To continue, run "
                       f"the same command with --resume (train(..., resume=True)) and output folder {run.out_dir}")
    seconds = time.time() - start_time
    logger.info(f"{status}: {run.iteration - start_iter} iterations in {seconds:.0f} s")
    best = run.ckpt_dir / "best.pt"
    return {"status": status, "iteration": run.iteration, "max_iter": run.max_iter, "out_dir": str(run.out_dir),
            "last_checkpoint": str(run.ckpt_dir / "last.pt") if (run.ckpt_dir / "last.pt").is_file() else None,
            "best_checkpoint": str(best) if best.is_file() else None, "metrics": run.final_metrics,
            "skipped_steps": run.skipped_steps, "seconds": seconds}


def _loop(run: _Run) -> str:
    while run.iteration < run.max_iter:
        if any_across_ranks(run.stop.requested, run.device):
            return "interrupted"
        run.rng_snapshot = capture_rng_state()  # the boundary state, for a Ctrl-C in mid-iteration
        run.phase = "compute"
        started = time.perf_counter()
        lr = run.schedule.apply(run.optimizer, run.iteration)
        losses, data_time = _gradients(run)
        run.phase = "step"
        stepped = losses is not None and _optimizer_step(run)
        run.optimizer.zero_grad(set_to_none=True)
        run.iteration += 1
        run.phase = "after"
        run.meter.add_time(time.perf_counter() - started, data_time)
        if stepped:
            run.bad_steps = 0
            run.meter.add_losses(losses)
            run.bar.set_postfix_str(f"lr {lr:.2e} {format_losses(losses)}", refresh=False)
        else:
            _non_finite_step(run)
        run.bar.update(1)
        _periodic(run, lr)
    return "finished"


def _next_batch(run: _Run) -> Any:
    """The next micro-batch, read with the global RNGs set aside so that data loading (which has its
    own seeded randomness) never shifts the model's random sampling."""
    state = capture_rng_state(cuda=False)
    try:
        return next(run.stream)
    except RuntimeError:
        if run.stop.requested:  # Ctrl-C also killed the loader's worker processes
            raise KeyboardInterrupt from None
        raise
    finally:
        restore_rng_state(state)


def _gradients(run: _Run) -> tuple[dict[str, float] | None, float]:
    """:func:`_compute_gradients`; with compiled parts, a failed compiled step falls back to eager.

    Any error of the first compiled step, and a compiler error later (a recompilation for a new
    image shape), undoes the step (gradients, batch-norm statistics, random state, data position;
    the optimizer has not stepped), says why in one message, and redoes it with the eager modules,
    which then train the rest of the run. A genuine error of the model repeats in the eager step
    and is raised from there.
    """
    if not run.compiled:
        return _compute_gradients(run)
    buffers = buffer_snapshot(run.model)
    try:
        result = _compute_gradients(run)
    except Exception as error:  # noqa: BLE001 - sorted below: compile failures fall back, the rest re-raise
        if run.compile_proven and not is_compile_error(error):
            raise
        _fall_back_to_eager(run, error, buffers)
        return _compute_gradients(run)
    run.compile_proven = True
    return result


def _fall_back_to_eager(run: _Run, error: Exception, buffers: dict[str, torch.Tensor]) -> None:
    """Undo the failed compiled step of iteration ``run.iteration`` and drop the compiled parts."""
    where = "a recompilation" if run.compile_proven else "the first compiled step"
    get_logger().warning(f"train.compile: torch.compile failed in {where} at iteration {run.iteration} "
                         f"({describe_error(error)}); redoing iteration {run.iteration} with the eager modules "
                         "and training on without compilation")
    drop_compiled(run.model, run.compiled)
    run.compiled = []
    run.optimizer.zero_grad(set_to_none=True)
    restore_buffers(run.model, buffers)
    if run.rng_snapshot is not None:
        restore_rng_state(run.rng_snapshot)
    close = getattr(run.stream, "close", None)
    if close is not None:
        close()
    run.stream = _open_stream(run)


def _compute_gradients(run: _Run) -> tuple[dict[str, float] | None, float]:
    """Forward/backward over ``accumulate`` micro-batches; the mean loss terms, or None when one was
    non-finite on any rank (then the remaining micro-batches are read and dropped, so the data
    position stays a function of the iteration). Also returns the seconds spent waiting for data."""
    accumulate = run.config.train.accumulate
    sums: dict[str, float] = {}
    data_time, finite = 0.0, True
    for micro in range(accumulate):
        started = time.perf_counter()
        batch = _next_batch(run)
        data_time += time.perf_counter() - started
        if micro == 0 and run.main and run.config.train.plots and run.iteration < NUM_TRAIN_BATCHES:
            record_train_batch(run.out_dir, run.iteration, batch, (run.categories or {}).get("names"),
                               _skeleton(run.categories))
        if not finite:
            continue
        targets = [t.to(run.device) for t in batch.targets]
        last = micro == accumulate - 1
        sync = run.ddp_model.no_sync() if run.distributed and not last else contextlib.nullcontext()
        with sync:
            with autocast(run.amp_dtype, run.device):
                raw = run.ddp_model(batch.images, targets)  # DDP's forward arms the gradient hooks
            total, losses = run.model.loss(float32_outputs(raw), targets)  # losses and reductions in float32
            if any_across_ranks(not bool(torch.isfinite(total.detach())), run.device):
                finite = False
                continue
            scaled = total / accumulate
            (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach()) / accumulate
        sums["total_loss"] = sums.get("total_loss", 0.0) + float(total.detach()) / accumulate
    return (sums if finite else None), data_time


def _optimizer_step(run: _Run) -> bool:
    """Clip (optional) and step; False when clipping found a non-finite gradient norm (no update)."""
    clip = run.config.train.clip_grad_norm
    if clip > 0:
        if run.scaler is not None:
            run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
        params = [p for group in run.optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if run.scaler is None and not bool(torch.isfinite(norm)):  # identical on all ranks after DDP sync
            return False
    if run.scaler is not None:
        run.scaler.step(run.optimizer)  # skips the update itself when fp16 gradients overflowed
        run.scaler.update()
    else:
        run.optimizer.step()
    return True


def _non_finite_step(run: _Run) -> None:
    run.bad_steps += 1
    run.skipped_steps += 1
    limit = run.config.train.max_bad_steps
    if run.main:
        warnings.warn(f"non-finite loss or gradient at iteration {run.iteration - 1}: step skipped, weights "
                      f"unchanged ({run.bad_steps} in a row; stopping at {limit})", RuntimeWarning, stacklevel=2)
    if limit > 0 and run.bad_steps >= limit:
        path = _save(run, run.iteration, all_gather_objects(capture_rng_state()))
        raise NonFiniteLossError(
            f"{run.bad_steps} non-finite losses in a row (iterations {run.iteration - run.bad_steps} to "
            f"{run.iteration - 1}); the weights of the last good step are saved in {path}. Lower train.lr, "
            "set train.clip_grad_norm, lengthen train.warmup_iters or check the data, then resume with --resume."
        )


def _periodic(run: _Run, lr: float) -> None:
    """Log, evaluate and checkpoint after iteration ``run.iteration`` as the periods say."""
    cfg, it = run.config.train, run.iteration
    final = it == run.max_iter
    if it % run.log_period == 0 or final:
        _log_metrics(run, lr)
    evaluate = run.val_dataset is not None and (final or (cfg.eval_period > 0 and it % cfg.eval_period == 0))
    if evaluate:
        _evaluate(run)
    if run.main and cfg.plots and (evaluate or final):
        refresh_run_folder(run.out_dir)
    if final or (cfg.checkpoint_period > 0 and it % cfg.checkpoint_period == 0):
        _save(run, it, all_gather_objects(capture_rng_state()))


def _log_metrics(run: _Run, lr: float) -> None:
    seconds, data_seconds = run.meter.seconds_per_iteration()
    means = run.meter.means()
    total = means.pop("total_loss", float("nan"))
    record = {"iteration": run.iteration, "lr": lr, "losses": means, "total_loss": total, "time": seconds,
              "data_time": data_seconds, "skipped_steps": run.skipped_steps}
    run.writer.write(record)
    if run.main and not run.progress:
        get_logger().info(f"iter {run.iteration}/{run.max_iter} lr {lr:.3g} loss {total:.4f} "
                          f"{format_losses(means)} ({seconds:.3f} s/it)")
    run.meter.reset()


def _evaluate(run: _Run) -> None:
    loader = run.test_loader_fn(run.val_dataset) if run.test_loader_fn is not None else None
    state = capture_rng_state()
    try:  # evaluation must not shift the training's random stream
        crowd = getattr(run.val_dataset, "max_instances_per_image", None)
        # eager: evaluation's image sizes and no-grad graphs would be new compilations, for one pass
        with eager_parts(run.model, run.compiled):
            metrics = evaluate_model(run.model, run.val_dataset, run.config.train.num_workers,
                                     progress=run.progress, distributed=run.distributed, loader=loader,
                                     max_dets=coco_max_dets(crowd() if crowd is not None else 0),
                                     plots_dir=run.out_dir if run.config.train.plots else None)
    finally:
        restore_rng_state(state)
    run.final_metrics = metrics
    main_ap = float(metrics[main_metric_type(metrics)]["AP"])
    improved = math.isfinite(main_ap) and not main_ap <= run.best_segm_ap  # NaN best: first value wins
    if improved:
        run.best_segm_ap = main_ap
    if not run.main:
        return
    write_metrics_json(metrics, run.out_dir / "metrics.json")
    summary = {t: {k: metrics[t][k] for k in summary_keys(metrics[t], True)} for t in METRIC_TYPES if t in metrics}
    run.writer.write({"iteration": run.iteration, "eval": summary})
    aps = " ".join(f"{t} AP {format_ap(metrics[t]['AP'])}" for t in METRIC_TYPES if t in metrics)
    get_logger().info(f"eval at {run.iteration}: {aps}")
    if improved:
        save_checkpoint(run.ckpt_dir / "best.pt", run.model, run.config, iteration=run.iteration, metrics=summary,
                        categories=run.categories)


# ------------------------------------------------------------------------------------- checkpoints
def _categories(dataset: Any) -> dict[str, Any] | None:
    """What a checkpoint needs to map labels back to the dataset (results json, overlays): category
    ``ids`` and ``names`` and, for a keypoint dataset, ``keypoints`` ``{"names", "skeleton"}`` (0-based
    pairs; read back by :func:`~instaseg.engine.checkpoint.checkpoint_keypoints`)."""
    ids = getattr(dataset, "category_ids", None)
    names = getattr(dataset, "category_names", None)
    if ids is None or names is None:
        return None
    categories: dict[str, Any] = {"ids": list(ids), "names": list(names)}
    keypoint_names = getattr(dataset, "keypoint_names", None)
    if keypoint_names:
        skeleton = getattr(dataset, "skeleton", None) or []
        categories["keypoints"] = {"names": list(keypoint_names), "skeleton": [[int(a), int(b)] for a, b in skeleton]}
    return categories


def _skeleton(categories: dict[str, Any] | None) -> list[tuple[int, int]]:
    """The keypoint skeleton ``_categories`` stored (0-based pairs; empty without keypoints)."""
    return [(a, b) for a, b in ((categories or {}).get("keypoints") or {}).get("skeleton", [])]


def _save(run: _Run, iteration: int, rng_states: list[dict[str, Any]], sync: bool = True) -> Path:
    """``model_{iteration:07d}.pt`` and ``last.pt`` (main rank), then drop all but ``keep_last``.

    Holds everything an exact resume needs: model, optimizer, grad scaler, iteration, the RNG
    states of every rank (``rng_states[rank]``), the best segm AP (keypoint AP without masks) so far,
    and the config.
    """
    path = run.ckpt_dir / f"model_{iteration:07d}.pt"
    if run.main:
        try:
            save_checkpoint(path, run.model, run.config, iteration=iteration, optimizer=run.optimizer.state_dict(),
                            scaler=run.scaler.state_dict() if run.scaler is not None else None, rng=rng_states,
                            best_segm_ap=run.best_segm_ap, max_iter=run.max_iter, note=run.note or "",
                            categories=run.categories)
            point_last_at(path)
        except OSError as error:
            raise _write_failed(run.ckpt_dir, path, error) from error
        rotate_checkpoints(run.ckpt_dir, run.config.train.keep_last)
    if sync:
        barrier()
    return path


def _write_failed(ckpt_dir: Path, path: Path, error: OSError) -> CheckpointWriteError:
    """Stop rather than train on without checkpoints: a run that cannot save loses everything on the
    next crash. Saves are atomic, so the newest ``model_*.pt`` on disk is whole."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno == errno.ENOSPC:
        reason += " (disk full: free space on that disk or choose another --out)"
    good = sorted(p for p in ckpt_dir.glob("model_*.pt") if p != path)
    last = f"the last good checkpoint is {good[-1]} (intact); resume from it with --resume" if good else \
        "no earlier checkpoint exists"
    return CheckpointWriteError(f"cannot write checkpoint {path}: {reason}; training stopped, {last}")


def _save_after_keyboard_interrupt(run: _Run) -> Path | None:
    """Save the state of the last iteration boundary, when it is known exactly.

    In the forward/backward ("compute") the weights and optimizer are still those of the boundary;
    only the RNGs moved, and the snapshot restores them. After the step ("after") the boundary is
    the current state. Inside the optimizer step the weights may be half updated: nothing is saved.
    No collective is called: the other ranks may be anywhere.
    """
    if run.phase == "compute" and run.rng_snapshot is not None:
        rng = run.rng_snapshot
    elif run.phase == "after":
        rng = capture_rng_state()
    else:
        return None
    with _worker_deaths_ignored():
        return _save(run, run.iteration, [rng], sync=False)


@contextlib.contextmanager
def _worker_deaths_ignored() -> Iterator[None]:
    """Default SIGCHLD handling while a stopped run saves: PyTorch's handler raises RuntimeError
    wherever the main process is when a data loader worker dies, which would cut the save short."""
    sigchld = getattr(signal, "SIGCHLD", None)
    if sigchld is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(sigchld, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(sigchld, previous)
