"""Training under failure: a crash or a full disk while checkpointing, data loader workers that fail.

Non-finite losses, Ctrl-C and SIGTERM (checkpoint written, exact resume) are covered in
tests/engine/test_train.py.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
import torch

import instaseg.engine.checkpoint as checkpoint_module
from instaseg.data.coco import Sample
from instaseg.data.loader import DataWorkerError, build_train_loader
from instaseg.engine.checkpoint import atomic_torch_save, load_checkpoint
from instaseg.engine.train import CheckpointWriteError
from instaseg.errors import DatasetError
from instaseg.structures.instances import Targets

from tests.engine.test_train import ToyDataset, run_training, tiny_config


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return ToyDataset(tmp_path_factory.mktemp("data"), num_images=2)


def _failing_save(fail_on_call: int, error: BaseException):
    """A ``torch.save`` that works until call ``fail_on_call`` (1-based), which writes a few bytes
    of the file and then raises ``error``, as a crash or a full disk half-way through would."""
    real_save, calls = torch.save, [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == fail_on_call:
            f.write(b"PK\x03\x04 half a zip")
            raise error
        return real_save(obj, f, *args, **kwargs)

    return save


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (tests/conftest.py)


def test_failed_checkpoint_write_stops_training_naming_the_last_good_one(toy_data, tmp_path, monkeypatch):
    error = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint_module.torch, "save", _failing_save(2, error))
    config = tiny_config("train.max_iter=2", "train.checkpoint_period=1", "train.warmup_iters=1")
    with pytest.raises(CheckpointWriteError) as info:
        run_training(config, tmp_path, toy_data)
    ckpt = tmp_path / "checkpoints"
    message = str(info.value)
    assert f"cannot write checkpoint {ckpt / 'model_0000002.pt'}: No space left on device (disk full" in message
    assert f"the last good checkpoint is {ckpt / 'model_0000001.pt'} (intact)" in message
    assert load_checkpoint(ckpt / "last.pt")["iteration"] == 1  # the previous one is whole
    assert load_checkpoint(ckpt / "model_0000001.pt")["iteration"] == 1
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt", "model_0000001.pt"]  # no half file


def test_crash_half_way_through_a_save_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"format": "instaseg", "v": torch.arange(5)}, path)
    monkeypatch.setattr(checkpoint_module.torch, "save", _failing_save(1, RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        atomic_torch_save({"format": "instaseg", "v": torch.zeros(5)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_disk_full_inside_torch_zip_writer_surfaces_as_enospc(tmp_path, monkeypatch):
    """torch's zip writer turns a failed write into a RuntimeError; the OSError must come out."""
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 64:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(checkpoint_module.os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OSError) as info:
        atomic_torch_save({"v": torch.zeros(1000)}, tmp_path / "x.pt")
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


# --- data loader workers ----------------------------------------------------------------------------


class _Fragile:
    """Four tiny samples; item ``bad`` fails by ``mode``: "raise" an error, or "exit" the process."""

    def __init__(self, bad: int, mode: str) -> None:
        self.bad, self.mode = bad, mode

    def __len__(self) -> int:
        return 4

    def describe(self, index: int) -> str:
        return f"image id {100 + index}, img/{index}.png"

    def __getitem__(self, index: int) -> Sample:
        if index == self.bad:
            if self.mode == "exit":
                os._exit(3)  # a worker killed outright (out of memory, a crash in native code)
            raise KeyError("width")
        targets = Targets(torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64),
                          torch.zeros((0, 4, 4), dtype=torch.bool))
        return Sample(torch.zeros((3, 4, 4), dtype=torch.uint8), targets, 100 + index, torch.zeros((0, 4)))


def _identity(image, targets, generator):
    return image, targets


def _drain(loader, batches: int = 8) -> None:
    for _, _ in zip(range(batches), loader):
        pass


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_error_in_a_worker_names_the_item(num_workers):
    loader = build_train_loader(_Fragile(2, "raise"), _identity, batch_size=1, num_workers=num_workers, seed=0)
    with pytest.raises(DatasetError) as info:
        _drain(loader)
    message = str(info.value)
    assert message == "loading dataset item 2 (image id 102, img/2.png) failed: KeyError: 'width'"


def test_a_dead_worker_is_named_and_does_not_hang():
    loader = build_train_loader(_Fragile(1, "exit"), _identity, batch_size=1, num_workers=1, seed=0)
    started = time.monotonic()
    with pytest.raises(DataWorkerError) as info:
        _drain(loader)
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert "worker process died" in message and "dataset item 1 (image id 101, img/1.png)" in message
    assert "train.num_workers=0" in message


# ------------------------------------------------------------------ a signal to the whole process group
_GROUP_TRAIN = [
    "--set", "input.min_size_train=[32]", "--set", "input.max_size_train=32", "--set", "train.ims_per_batch=1",
    "--set", "train.max_iter=100000", "--set", "train.checkpoint_period=0", "--set", "train.num_workers=1",
    "--set", "train.schedule=step", "--set", "train.steps=[]",  # a shorter max_iter keeps the LRs: resumable
    "--set", "model.backbone.freeze_at=5", "--set", "model.fpn.out_channels=16",
    "--set", "model.box_head.fc_dim=32", "--set", "model.mask_head.conv_dim=16",
]


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _train_then_signal_group(args: list[str], cwd: Path) -> tuple[int, str]:
    """Start ``instaseg train`` in a new session; once its data loader worker runs and a few
    iterations are done, SIGTERM the whole process group (as ``timeout`` and SLURM do)."""
    import signal
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-m", "instaseg", "train", *args], cwd=cwd, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not _children(child.pid) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        assert _children(child.pid), "the data loader worker never started"
        time.sleep(0.5)  # some iterations, the worker busy loading
        os.killpg(child.pid, signal.SIGTERM)
        output, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    return child.returncode, output


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc to see the worker start")
def test_sigterm_to_the_process_group_checkpoints_and_resumes(tmp_path):
    from instaseg.cli.main import main
    from instaseg.data.synthetic import generate_synthetic_dataset

    data = generate_synthetic_dataset(tmp_path / "data", num_images=3, image_size=32, val_fraction=0.34)
    run = tmp_path / "run"
    args = ["--preset", "mask_rcnn_r18_fpn_tiny", "--train-json", str(data.train_annotations),
            "--train-images", str(data.train_images), "--out", str(run), "--no-progress", *_GROUP_TRAIN]
    code, output = _train_then_signal_group(args, tmp_path)
    assert "is killed by signal" not in output, output
    assert code == 130, output  # interrupted, cleanly
    first = load_checkpoint(run / "checkpoints" / "last.pt")["iteration"]
    more = [a if not a.startswith("train.max_iter=") else f"train.max_iter={first + 2}" for a in args]
    assert main(["train", *more, "--resume"]) == 0  # continues from the checkpoint to the end
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == first + 2
