"""The restricted unpickler: plain containers and numeric arrays load, anything else is refused
before it runs (marker files prove nothing executed)."""

from __future__ import annotations

import collections
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from instaseg.errors import CheckpointError
from instaseg.weights.safe_pickle import (
    RestrictedUnpickler,
    load_weights_file,
    numpy_state_to_tensors,
    safe_load_pickle,
)


def _plain_payload() -> dict:
    rng = np.random.default_rng(0)
    return {
        "model": collections.OrderedDict(
            conv_w=rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            bias64=rng.standard_normal(5),
            counts=np.arange(7, dtype=np.int64),
            flags=np.array([True, False, True]),
            half=rng.standard_normal(3).astype(np.float16),
            transposed=rng.standard_normal((3, 4)).astype(np.float32).T,  # non-contiguous
            scalar=np.float32(2.5),
        ),
        "__author__": "Detectron2 Model Zoo",
        "matching_heuristics": False,
        "ids": {1, 2, 3},
        "frozen": frozenset({4}),
        "raw": b"\x00\x01bytes",
        "nested": [(1, 2.0, "three"), None],
    }


def _assert_same(a: object, b: object) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_plain_containers_and_arrays_round_trip(tmp_path: Path, protocol: int) -> None:
    payload = _plain_payload()
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    _assert_same(payload, safe_load_pickle(path))


class _ShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _WritesFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("attack", [_ShellCommand, _WritesFile])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, protocol: int, attack: type) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    # Hidden inside an otherwise ordinary model-zoo payload.
    payload = {"model": {"w": np.zeros(3, np.float32), "evil": attack(marker)}, "__author__": "x"}
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(CheckpointError, match="refused to unpickle the global") as info:
        safe_load_pickle(path)
    assert ("system" in str(info.value)) or ("exec" in str(info.value))
    assert not marker.exists()
    # The same file through the generic reader (.pkl suffix) is refused too.
    with pytest.raises(CheckpointError):
        load_weights_file(path)
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps({"w": np.array([1, "a"], dtype=object)}, protocol=4))
    with pytest.raises(CheckpointError, match="object array"):
        safe_load_pickle(path)


def test_other_globals_are_refused_by_name() -> None:
    import io

    for module, name in [("builtins", "eval"), ("os", "system"), ("subprocess", "Popen"),
                         ("numpy", "load"), ("torch", "load"), ("collections", "defaultdict")]:
        unpickler = RestrictedUnpickler(io.BytesIO(b"."))
        with pytest.raises(CheckpointError, match=f"{module}.{name}"):
            unpickler.find_class(module, name)


def _python2_array_pickle(values: np.ndarray) -> bytes:
    """A float32 vector pickled the way Python 2 numpy wrote Detectron's ImageNet ``.pkl`` files:
    protocol 2, ``numpy.core.multiarray`` names, and the raw data as a Python 2 ``str``
    (SHORT_BINSTRING / BINSTRING opcodes), which only ``encoding="latin1"`` reads back."""

    def py2_str(data: bytes) -> bytes:
        if len(data) < 256:
            return b"U" + bytes([len(data)]) + data
        return b"T" + struct.pack("<i", len(data)) + data

    assert values.dtype == np.float32 and values.ndim == 1
    out = b"\x80\x02"
    out += b"}q\x00" + py2_str(b"res2_0_branch2a_w") + b"q\x01"  # {name: array}
    out += b"cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00\x85q\x04"
    out += py2_str(b"b") + b"\x87q\x05Rq\x06("  # _reconstruct(ndarray, (0,), 'b'); then state
    out += b"K\x01K" + bytes([values.size]) + b"\x85q\x07"  # version 1, shape (n,)
    out += b"cnumpy\ndtype\nq\x08" + py2_str(b"f4") + b"K\x00K\x01\x87q\tRq\n("
    out += b"K\x03" + py2_str(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0bb"  # dtype state
    out += b"\x89" + py2_str(values.astype("<f4").tobytes()) + b"tq\x0cb"  # not Fortran, raw data
    out += b"s."  # SETITEM, STOP
    return out


def test_python2_numpy_pickle_loads(tmp_path: Path) -> None:
    values = np.linspace(-3, 3, 40, dtype=np.float32)  # bytes above 0x7f exercise latin-1
    path = tmp_path / "R-50.pkl"
    path.write_bytes(_python2_array_pickle(values))
    loaded = safe_load_pickle(path)
    assert list(loaded) == ["res2_0_branch2a_w"]
    np.testing.assert_array_equal(loaded["res2_0_branch2a_w"], values)


def test_truncated_or_missing_files_give_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(_plain_payload(), protocol=4)[:50])
    with pytest.raises(CheckpointError, match="not a readable pickle"):
        safe_load_pickle(path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_weights_file(tmp_path / "absent.pth")


def test_torch_files_are_read_weights_only(tmp_path: Path) -> None:
    state = {"a": torch.randn(3), "b": torch.arange(4)}
    good = tmp_path / "good.pth"
    torch.save({"model": state, "iteration": 7}, good)
    loaded = load_weights_file(good)
    assert loaded["iteration"] == 7 and torch.equal(loaded["model"]["a"], state["a"])

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    torch.save({"model": state, "evil": _ShellCommand(marker)}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_weights_file(evil)
    assert not marker.exists()


def test_containers_are_recognised_by_content_not_suffix(tmp_path: Path) -> None:
    plain = tmp_path / "model_final.pth"  # a plain numpy pickle with a PyTorch-looking name
    plain.write_bytes(pickle.dumps({"model": {"w": np.ones(3, np.float32)}}, protocol=4))
    assert np.array_equal(load_weights_file(plain)["model"]["w"], np.ones(3, np.float32))

    legacy = tmp_path / "legacy.pkl"  # PyTorch's pre-1.6 (non-zip) format
    torch.save({"w": torch.arange(3.0)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_weights_file(legacy)["w"], torch.arange(3.0))

    marker = tmp_path / "marker"
    torch.save({"w": _ShellCommand(marker)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="refused"):
        load_weights_file(legacy)
    assert not marker.exists()


def test_numpy_state_to_tensors_copies_values() -> None:
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int64(3), "t": torch.ones(2)}
    tensors = numpy_state_to_tensors(arrays)
    assert tensors["w"].dtype == torch.float32 and tensors["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert tensors["n"].item() == 3 and tensors["t"] is arrays["t"]
    arrays["w"][0, 0] = 100.0  # the tensor does not alias the array
    assert tensors["w"][0, 0].item() == 0.0
    with pytest.raises(CheckpointError):
        numpy_state_to_tensors({"bad": "text"})
