"""Batches for training (an infinite, resumable stream) and for evaluation (each image once, in order).

How the training stream stays a pure function of ``(seed, iteration)``, so that resuming at
iteration ``k`` gives exactly the batches ``k, k+1, ...`` of an uninterrupted run:

1. Order. Epoch ``e`` visits the dataset in ``randperm(N)`` drawn from a generator seeded with
   ``seed + e``. With ``W`` ranks the permutation is padded (by repeating its start) to a multiple of
   ``W`` and rank ``r`` takes every ``W``-th item from ``r`` (as ``DistributedSampler`` does), so each
   rank's epoch has ``S = ceil(N / W)`` items. A rank's stream is its epochs one after another;
   batch ``k`` holds stream positions ``k * B .. k * B + B - 1`` (batches may straddle two epochs),
   position ``q`` being item ``q mod S`` of epoch ``q // S``. Starting at ``start_iter`` starts the
   sampler at position ``start_iter * B``: nothing before it is drawn.
2. Augmentation. The sample at (epoch ``e``, dataset index ``i``) is transformed with a fresh
   ``torch.Generator`` seeded from ``(seed, e, i)`` (:func:`sample_seed`), so its randomness does not
   depend on which worker makes it or on what that worker made before. Transforms must draw from
   the generator they are given (all of ``instaseg.data.transforms`` do).
3. Workers. ``torch.utils.data.DataLoader`` returns batches in sampler order whatever the number of
   workers; each worker's global RNGs (torch, numpy, random) are also seeded from
   ``(seed, start epoch, rank, worker id)`` for code outside the transforms that uses them.

Signals: worker processes ignore SIGINT and SIGTERM. Ctrl-C, ``timeout`` and SLURM signal every
process of the job, and the main process owns shutdown (it stops at an iteration boundary and
writes a checkpoint, reading from live workers until then); it ends the workers itself, by
PyTorch's shutdown and, for one that does not exit, SIGKILL.

Failures name the culprit: an error while loading an item becomes a one-line :class:`DatasetError`
naming the dataset index and image (not PyTorch's worker traceback), and a worker process that dies
(killed for memory, a crash in native code) raises :class:`DataWorkerError` naming the items the
workers were loading at the time (each worker records its current index in shared memory).

Skipped entries are counted in the main process: a dataset that skips bad entries (``skip_bad``)
reports them in ``Sample.skipped``; :func:`collate` sums them into ``Batch.skipped`` and, when the
items were loaded in worker processes (whose copy of the dataset the main process never sees), the
loader adds them to the main process's ``dataset.skipped`` as each batch arrives. Only batches
handed out are counted: those the workers prefetched but nobody read are not.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import random
import signal
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from instaseg.data.coco import Sample
from instaseg.data.transforms import Transform
from instaseg.errors import DatasetError, InstasegError
from instaseg.structures.instances import Targets

__all__ = [
    "Batch",
    "collate",
    "sample_seed",
    "epoch_order",
    "build_train_loader",
    "build_test_loader",
    "DataWorkerError",
]


class DataWorkerError(DatasetError, RuntimeError):
    """A DataLoader worker process died; the message names the items it was loading."""


@dataclass
class Batch:
    """Images of different sizes with their ground truth; item ``i`` of each list belongs together."""

    images: list[Tensor]  # each (3, H_i, W_i) float32 RGB in [0, 255]
    targets: list[Targets]  # in the frame of images[i]
    image_ids: list[int]  # COCO image ids
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> entries skipped loading these items

    def __len__(self) -> int:
        return len(self.images)


def collate(samples: Sequence[Sample]) -> Batch:
    """Samples -> :class:`Batch` (images converted to float32; no padding: the model pads).

    ``Batch.skipped`` sums the samples' ``skipped`` markers (datasets without them count nothing).
    """
    skipped: Counter[str] = Counter()
    for sample in samples:
        skipped.update(getattr(sample, "skipped", None) or {})
    return Batch(images=[s.image.to(torch.float32) for s in samples], targets=[s.targets for s in samples],
                 image_ids=[int(s.image_id) for s in samples], skipped=dict(skipped))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset item ``index`` in ``epoch``: well mixed, 63 bits."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def epoch_order(num_items: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Dataset indices rank ``rank`` visits in ``epoch``: ``ceil(num_items / world_size)`` of them.

    ``randperm(num_items)`` seeded with ``seed + epoch``, padded by its own start to a multiple of
    ``world_size``, then every ``world_size``-th item from ``rank``: the ranks' shards are disjoint
    except for the at most ``world_size - 1`` padding items.
    """
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    total = math.ceil(num_items / world_size) * world_size
    order = (order * math.ceil(total / max(num_items, 1)))[:total]
    return order[rank::world_size]


class _StreamSampler(Sampler):
    """Yields ``(epoch, dataset index)`` forever, from stream position ``start`` (module docstring)."""

    def __init__(self, num_items: int, seed: int, rank: int, world_size: int, start: int) -> None:
        self.num_items, self.seed, self.rank, self.world_size = num_items, seed, rank, world_size
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        shard = math.ceil(self.num_items / self.world_size)
        epoch, offset = divmod(self.start, shard)
        while True:
            order = epoch_order(self.num_items, self.seed, epoch, self.rank, self.world_size)
            for index in order[offset:]:
                yield epoch, index
            epoch, offset = epoch + 1, 0


def describe_item(dataset: Dataset, index: int) -> str:
    """``"dataset item 3 (image id 7, img/x.png)"``: what a message should name for ``dataset[index]``."""
    describe = getattr(dataset, "describe", None)
    return f"dataset item {index}" + (f" ({describe(index)})" if callable(describe) else "")


class _Augmented(Dataset):
    """``dataset[index]`` transformed with a generator seeded by ``(seed, epoch, index)``.

    ``loading[worker_id]`` (shared memory, when there are workers) holds the index each worker is
    loading, -1 when idle, so that the main process can name it if the worker dies.
    """

    def __init__(self, dataset: Dataset, transforms: Transform, seed: int, num_workers: int = 0) -> None:
        self.dataset, self.transforms, self.seed = dataset, transforms, seed
        self.loading = multiprocessing.RawArray("q", [-1] * num_workers) if num_workers else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, index = key
        worker = get_worker_info()
        if self.loading is not None and worker is not None:
            self.loading[worker.id] = index
        try:
            sample = self._load(epoch, index)
        except InstasegError:
            raise  # already names the file / image id
        except Exception as error:  # a custom dataset's or transform's bug: name the item
            raise DatasetError(f"loading {describe_item(self.dataset, index)} failed: "
                               f"{type(error).__name__}: {error}") from error
        if self.loading is not None and worker is not None:
            self.loading[worker.id] = -1
        return sample

    def in_progress(self) -> list[int]:
        """Indices the workers were loading (and had not finished) when last written."""
        return [i for i in self.loading if i >= 0] if self.loading is not None else []

    def _load(self, epoch: int, index: int) -> Sample:
        sample = self.dataset[index]
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        image, targets = self.transforms(sample.image.to(torch.float32), sample.targets, generator)
        # Crowd boxes travel in targets.crowd_boxes (moved by the geometric transforms).
        return Sample(image, targets, sample.image_id, targets.crowd_boxes, dict(getattr(sample, "skipped", {})))


def _ignore_stop_signals(worker_id: int = 0) -> None:
    """In a worker process: leave SIGINT / SIGTERM to the main process (see the module docstring).

    PyTorch's own SIGTERM handler in workers would end the worker, and the main process would then
    fail wherever it is ("DataLoader worker ... is killed by signal: Terminated").
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _seed_worker(worker_id: int, seed: int, epoch: int, rank: int) -> None:
    _ignore_stop_signals()
    state = np.random.SeedSequence([seed, epoch, rank, worker_id]).generate_state(2, dtype=np.uint32)
    torch.manual_seed((int(state[0]) << 32) | int(state[1]))
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))


def _rank_and_world_size(distributed: bool, rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit ``rank``/``world_size`` win; else torch.distributed's when initialised; else (0, 1)."""
    if rank is not None or world_size is not None:
        if rank is None or world_size is None or not 0 <= rank < world_size:
            raise ValueError(f"give both rank and world_size with 0 <= rank < world_size, got {rank}, {world_size}")
        return rank, world_size
    if not distributed:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    warnings.warn("distributed=True but torch.distributed is not initialised: loading all data on this process",
                  stacklevel=3)
    return 0, 1


def build_train_loader(dataset: Dataset, transforms: Transform, batch_size: int, num_workers: int, seed: int,
                       distributed: bool = False, start_iter: int = 0, *, rank: int | None = None,
                       world_size: int | None = None) -> Iterable[Batch]:
    """An infinite, deterministic stream of training batches starting at iteration ``start_iter``.

    Args:
        dataset: items are :class:`Sample` (e.g. :class:`~instaseg.data.coco.CocoDataset`).
        transforms: applied to ``(float image, targets, generator)`` per sample.
        batch_size: images per batch on this process.
        num_workers: DataLoader worker processes (0: load in this process).
        seed: the data seed: order and augmentation are pure functions of ``(seed, iteration)``.
        distributed: shard by the rank and world size of torch.distributed when it is initialised.
        start_iter: the first batch to produce (resuming at ``k`` reproduces batches ``k, k+1, ...``).
        rank, world_size: explicit sharding (tests, custom launchers); overrides ``distributed``.

    Iterating it again restarts at ``start_iter``. Its length is undefined (the stream is endless).
    """
    if len(dataset) == 0:
        raise DatasetError("the training dataset has no images; check keep_negatives and the json")
    if batch_size < 1 or num_workers < 0 or start_iter < 0:
        raise ValueError(f"need batch_size >= 1, num_workers >= 0, start_iter >= 0, "
                         f"got {batch_size}, {num_workers}, {start_iter}")
    rank, world_size = _rank_and_world_size(distributed, rank, world_size)
    start = start_iter * batch_size
    sampler = _StreamSampler(len(dataset), seed, rank, world_size, start)
    start_epoch = start // math.ceil(len(dataset) / world_size)
    init = functools.partial(_seed_worker, seed=seed, epoch=start_epoch, rank=rank) if num_workers else None
    return _NamingDataLoader(_Augmented(dataset, transforms, seed, num_workers), batch_size=batch_size,
                             sampler=sampler, num_workers=num_workers, collate_fn=collate, worker_init_fn=init)


class _NamingDataLoader(DataLoader):
    """A DataLoader whose failures are one line naming the culprit and which counts, in the main
    process, what worker processes skipped (see the module docstring)."""

    def _source(self) -> Dataset:
        """The user's dataset (under the augmentation wrapper of the training stream)."""
        return self.dataset.dataset if isinstance(self.dataset, _Augmented) else self.dataset

    def _count_skipped(self, batch: Batch) -> None:
        # Without workers the dataset counted in this process already (its own counter).
        counter = getattr(self._source(), "skipped", None)
        if self.num_workers > 0 and batch.skipped and isinstance(counter, Counter):
            counter.update(batch.skipped)

    def __iter__(self) -> Iterator[Batch]:
        iterator = super().__iter__()
        try:
            yield from self._batches(iterator)
        finally:
            _end_workers(iterator)

    def _batches(self, iterator: Iterator[Batch]) -> Iterator[Batch]:
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except InstasegError as error:
                # a worker's error comes back as "Caught X in DataLoader worker ... Original Traceback
                # ...": keep the original message, which names the file or item
                raise type(error)(_original_message(error)) from None
            except RuntimeError as error:
                if "exited unexpectedly" not in str(error) or isinstance(error, InstasegError):
                    raise
                loading = self.dataset.in_progress() if isinstance(self.dataset, _Augmented) else []
                items = [describe_item(self._source(), i) for i in loading]
                raise DataWorkerError(
                    f"a data loader worker process died ({str(error).splitlines()[0]}) while loading "
                    f"{', '.join(items) or 'an unknown item'}; check that item (a huge or corrupt image can "
                    "exhaust memory) or set train.num_workers=0 to see the error in this process") from None
            self._count_skipped(batch)
            yield batch


def _end_workers(iterator: Iterator[Batch]) -> None:
    """PyTorch's worker shutdown (a stop event, then SIGTERM), and SIGKILL for a worker still alive:
    workers ignore SIGTERM, and one stuck in native code would otherwise outlive its loader."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is None:  # no worker processes
        return
    shutdown()
    for worker in getattr(iterator, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=1)


def _original_message(error: BaseException) -> str:
    """The message of the exception raised in a worker, without PyTorch's traceback wrapper."""
    text = str(error)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    name = type(error).__name__
    for prefix in (f"{type(error).__module__}.{name}: ", f"{name}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last


def build_test_loader(dataset: Dataset, num_workers: int, batch_size: int = 1, distributed: bool = False, *,
                      rank: int | None = None, world_size: int | None = None) -> Iterable[Batch]:
    """Each image once, untransformed (original size), in dataset order.

    Distributed: rank ``r`` of ``W`` gets items ``r, r + W, r + 2W, ...`` (no padding, so no image is
    evaluated twice; gather the ranks' results before scoring). Errors name the item, and entries
    skipped in worker processes are counted in ``dataset.skipped``, as for the training stream.
    """
    rank, world_size = _rank_and_world_size(distributed, rank, world_size)
    indices = list(range(rank, len(dataset), world_size))
    return _NamingDataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=num_workers,
                             collate_fn=collate, shuffle=False,
                             worker_init_fn=_ignore_stop_signals if num_workers else None)
