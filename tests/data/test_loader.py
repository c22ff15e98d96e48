"""Tests for collate and the loaders: determinism, exact resume (with and without workers), sharding."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util

import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from instaseg.config.schema import Config, InputConfig, TrainConfig
from instaseg.data.coco import CocoDataset
from instaseg.data.loader import Batch, build_test_loader, build_train_loader, collate, epoch_order
from instaseg.data.synthetic import SyntheticDataset, generate_synthetic_dataset
from instaseg.data.transforms import Compose, build_transforms
from instaseg.errors import DatasetError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), num_images=16, image_size=64,
                                      val_fraction=0.25)


@pytest.fixture(scope="module")
def dataset(synthetic: SyntheticDataset) -> CocoDataset:
    return CocoDataset(synthetic.train_annotations, synthetic.train_images)  # 12 images


def _yolact_transforms() -> Compose:
    """The most random pipeline: photometric, expand, crop, flip, square resize."""
    config = Config(input=InputConfig(square=48), train=TrainConfig(augmentation="yolact"))
    return build_transforms(config, train=True)


def _take(loader, count: int) -> list[Batch]:
    return list(itertools.islice(iter(loader), count))


def _assert_same_batches(first: list[Batch], second: list[Batch]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.image_ids == b.image_ids
        for image_a, image_b, targets_a, targets_b in zip(a.images, b.images, a.targets, b.targets):
            assert torch.equal(image_a, image_b)
            assert torch.equal(targets_a.boxes, targets_b.boxes) and torch.equal(targets_a.labels, targets_b.labels)
            assert torch.equal(targets_a.masks, targets_b.masks)


def test_collate(dataset: CocoDataset) -> None:
    samples = [dataset[0], dataset[3]]
    batch = collate(samples)
    assert len(batch) == 2 and batch.image_ids == [samples[0].image_id, samples[1].image_id]
    for image, sample, targets in zip(batch.images, samples, batch.targets):
        assert image.dtype == torch.float32 and torch.equal(image, sample.image.float())
        assert targets is sample.targets


def test_stream_is_deterministic_and_seed_dependent(dataset: CocoDataset) -> None:
    transforms = _yolact_transforms()
    first = _take(build_train_loader(dataset, transforms, 3, 0, seed=7), 5)
    second = _take(build_train_loader(dataset, transforms, 3, 0, seed=7), 5)
    _assert_same_batches(first, second)
    other = _take(build_train_loader(dataset, transforms, 3, 0, seed=8), 5)
    assert [b.image_ids for b in other] != [b.image_ids for b in first]
    assert all(image.shape == (3, 48, 48) for batch in first for image in batch.images)


def test_each_epoch_visits_every_image_once(dataset: CocoDataset) -> None:
    ids = [i for b in _take(build_train_loader(dataset, Compose([]), 4, 0, seed=1), 6) for i in b.image_ids]
    epochs = [ids[:12], ids[12:]]
    assert sorted(epochs[0]) == sorted(dataset.image_ids) == sorted(epochs[1])
    assert epochs[0] != epochs[1]  # reshuffled with seed + epoch


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_reproduces_the_uninterrupted_stream(dataset: CocoDataset, num_workers: int) -> None:
    transforms = _yolact_transforms()
    # batch_size 5 over 12 images: batches straddle epochs, and resuming lands mid-epoch
    full = _take(build_train_loader(dataset, transforms, 5, num_workers, seed=3), 8)
    for start in (3, 5):
        resumed = _take(build_train_loader(dataset, transforms, 5, num_workers, seed=3, start_iter=start), 8 - start)
        _assert_same_batches(full[start:], resumed)
    if num_workers:  # the worker count does not change the stream either
        _assert_same_batches(full, _take(build_train_loader(dataset, transforms, 5, 0, seed=3), 8))


@pytest.mark.parametrize("num_items", [12, 11])
def test_two_ranks_shard_each_epoch(dataset: CocoDataset, num_items: int) -> None:
    data = dataset if num_items == 12 else Subset(dataset, list(range(num_items)))
    per_rank = -(-num_items // 2)
    streams = [[i for b in _take(build_train_loader(data, Compose([]), 1, 0, seed=5, rank=r, world_size=2),
                                 2 * per_rank) for i in b.image_ids] for r in (0, 1)]
    all_ids = {dataset.image_ids[i] for i in range(num_items)}
    for epoch in range(2):
        shards = [set(s[epoch * per_rank:(epoch + 1) * per_rank]) for s in streams]
        assert shards[0] | shards[1] == all_ids
        assert len(shards[0] & shards[1]) == 2 * per_rank - num_items  # only the padding repeats
    assert streams[0][:per_rank] != streams[0][per_rank:]


def test_epoch_order_shards_partition_the_permutation() -> None:
    for num_items, world_size in [(10, 1), (10, 3), (2, 4)]:
        shards = [epoch_order(num_items, 0, 2, r, world_size) for r in range(world_size)]
        assert {len(s) for s in shards} == {-(-num_items // world_size)}
        assert set().union(*shards) == set(range(num_items))
    assert epoch_order(10, 0, 1) == epoch_order(10, 1, 0)  # the seed is seed + epoch
    assert sorted(epoch_order(10, 0, 0)) == list(range(10))


def test_test_loader_in_order_and_sharded(dataset: CocoDataset) -> None:
    batches = list(build_test_loader(dataset, num_workers=0, batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 2]
    assert [i for b in batches for i in b.image_ids] == dataset.image_ids
    for k, image in enumerate(batches[0].images):
        assert torch.equal(image, dataset[k].image.float())
    shards = [[i for b in build_test_loader(dataset, 0, rank=r, world_size=3) for i in b.image_ids] for r in range(3)]
    assert sorted(itertools.chain(*shards)) == sorted(dataset.image_ids)
    assert shards[1] == dataset.image_ids[1::3]
    with_workers = [i for b in build_test_loader(dataset, num_workers=2, batch_size=2) for i in b.image_ids]
    assert with_workers == dataset.image_ids


def test_empty_dataset_is_refused(dataset: CocoDataset) -> None:
    with pytest.raises(DatasetError, match="no images"):
        build_train_loader(Subset(dataset, []), Compose([]), 2, 0, seed=0)
    with pytest.raises(ValueError, match="rank"):
        build_train_loader(dataset, Compose([]), 2, 0, seed=0, rank=2, world_size=2)


# --- skip counts from worker processes ------------------------------------------------------------


def _skip_dataset(root: Path) -> CocoDataset:
    """Six 12x12 images: files 1 and 2 (adjacent) are not images, image 4 has one RLE whose runs do
    not add up to 144 (dropped with skip_bad) next to a good polygon."""
    (root / "img").mkdir(parents=True)
    images, annotations = [], []
    for k in range(6):
        name = f"{k}.png"
        if k in (1, 2):
            (root / "img" / name).write_text("not an image")
        else:
            Image.fromarray(np.full((12, 12, 3), 20 * k, np.uint8)).save(root / "img" / name)
        images.append({"id": 10 + k, "file_name": name, "height": 12, "width": 12})
        annotations.append({"id": 100 + k, "image_id": 10 + k, "category_id": 1, "bbox": [2, 2, 6, 6], "iscrowd": 0,
                            "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]]})
    runs_of_400 = mask_util.encode(np.ones((20, 20), np.uint8, order="F"))["counts"].decode("ascii")
    annotations.append({"id": 200, "image_id": 14, "category_id": 1, "bbox": [2, 2, 6, 6], "iscrowd": 0,
                        "segmentation": {"size": [12, 12], "counts": runs_of_400}})
    (root / "gt.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                              "categories": [{"id": 1, "name": "thing"}]}))
    return CocoDataset(root / "gt.json", root / "img", skip_bad=True)


def _expected_skips(num_batches: int, batch_size: int, seed: int) -> dict[str, int]:
    """What reading the first ``num_batches`` batches skips, by the stream's definition (module
    docstring of instaseg.data.loader) and the replacement rule: a bad file is replaced by the
    next index, each bad file on the way counted once; image 4's bad RLE once per visit."""
    bad_files, bad_rle = {1, 2}, {4}
    counts = {"bad image file": 0, "bad segmentation": 0}
    for position in range(num_batches * batch_size):
        index = epoch_order(6, seed, position // 6)[position % 6]
        while index in bad_files:
            counts["bad image file"] += 1
            index = (index + 1) % 6
        counts["bad segmentation"] += index in bad_rle
    return counts


def _identity(image, targets, generator):
    return image, targets


@pytest.mark.filterwarnings("ignore:skipping:UserWarning")
@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_skips_in_worker_processes_are_counted_in_the_main_process(tmp_path: Path, num_workers: int) -> None:
    dataset = _skip_dataset(tmp_path)
    assert not dataset.skipped  # nothing is bad in the json itself
    expected = _expected_skips(num_batches=5, batch_size=2, seed=4)
    assert expected["bad image file"] > 0 and expected["bad segmentation"] > 0  # the seed meets both
    batches = _take(build_train_loader(dataset, _identity, 2, num_workers, seed=4), 5)
    assert sum((Counter(batch.skipped) for batch in batches), Counter()) == expected
    assert dict(dataset.skipped) == expected  # prefetched but unread batches are not counted
    total = sum(expected.values())
    assert dataset.skipped_summary == (f"skipped {total} entries: {expected['bad image file']} bad image file, "
                                       f"{expected['bad segmentation']} bad segmentation")


@pytest.mark.filterwarnings("ignore:skipping:UserWarning")
def test_test_loader_counts_worker_skips_too(tmp_path: Path) -> None:
    dataset = _skip_dataset(tmp_path)
    batches = list(build_test_loader(dataset, num_workers=2, batch_size=2))
    # items 1 and 2 read as 3 (two and one bad files met), item 4 drops its bad RLE
    assert [i for b in batches for i in b.image_ids] == [10, 13, 13, 13, 14, 15]
    assert dict(dataset.skipped) == {"bad image file": 3, "bad segmentation": 1}


class _SignalledInWorker(torch.utils.data.Dataset):
    """Sends SIGINT and SIGTERM to the process loading item 1, as Ctrl-C, ``timeout`` and SLURM do
    to every process of the job."""

    def __init__(self, dataset: CocoDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        import os
        import signal

        if index == 1 and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
        return self.dataset[index]


@pytest.mark.parametrize("which", ["train", "test"])
def test_workers_leave_stop_signals_to_the_main_process(dataset: CocoDataset, which: str) -> None:
    signalled = _SignalledInWorker(dataset)
    if which == "train":
        loader = build_train_loader(signalled, _identity, batch_size=2, num_workers=1, seed=0)
        batches = _take(loader, 8)  # 16 items: the shuffled order reaches item 1
    else:
        batches = list(build_test_loader(signalled, num_workers=1))
    assert len(batches) == 8 if which == "train" else len(batches) == len(dataset)
