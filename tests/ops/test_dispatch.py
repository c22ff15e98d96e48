"""The call-time choice of torchvision's kernels is scoped by ``fast_kernels``, never process-wide."""

import threading

import pytest
import torch

from instaseg.ops import _dispatch, fast_kernels, roi_align


class _FakeOps:
    calls = 0

    @classmethod
    def roi_align(cls, *args):
        cls.calls += 1
        return torch.zeros(1, 1, 1, 1)


@pytest.fixture
def fake_kernels(monkeypatch):
    _FakeOps.calls = 0
    monkeypatch.setattr(_dispatch, "_load_torchvision_ops", lambda: _FakeOps)
    monkeypatch.setattr(_dispatch, "shimmed", False)
    return _FakeOps


def _call():
    roi_align(torch.randn(1, 1, 4, 4), [torch.tensor([[0.0, 0.0, 2.0, 2.0]])], 1)


def test_fast_kernels_false_forces_the_pure_path_for_the_block(fake_kernels):
    with fast_kernels(True):
        _call()
        assert fake_kernels.calls == 1
        with pytest.raises(RuntimeError):
            with fast_kernels(False):
                assert _dispatch.torchvision_ops() is None
                _call()
                assert fake_kernels.calls == 1  # the pure-PyTorch path ran
                raise RuntimeError("leave the block")
        assert _dispatch.use_fast_kernels()  # restored, although the block raised
        _call()
        assert fake_kernels.calls == 2


def test_fast_kernels_is_per_thread(fake_kernels):
    seen = {}
    with fast_kernels(True):
        with fast_kernels(False):
            worker = threading.Thread(target=lambda: seen.update(other=_dispatch.use_fast_kernels()))
            worker.start()
            worker.join(5)
            assert not _dispatch.use_fast_kernels()
    # A new thread starts from the process default (INSTASEG_FAST_KERNELS, read once at import).
    assert seen["other"] == _dispatch._FAST_KERNELS.get()


def test_the_environment_is_not_read_per_call(fake_kernels, monkeypatch):
    with fast_kernels(True):
        monkeypatch.setenv("INSTASEG_FAST_KERNELS", "0")
        assert _dispatch.use_fast_kernels()
        _call()
        assert fake_kernels.calls == 1
