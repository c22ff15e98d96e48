"""Export traces the pure-PyTorch ops inside a scoped ``fast_kernels(False)``, leaving no state behind."""

import os

import torch
from torch import nn

from instaseg.export import exporters
from instaseg.ops import _dispatch


def test_export_traces_pure_paths_without_touching_the_environment(monkeypatch):
    seen = {}

    def fake_export(module, args, **kwargs):
        seen["fast"] = _dispatch.use_fast_kernels()
        seen["env"] = os.environ.get("INSTASEG_FAST_KERNELS")
        return "program"

    monkeypatch.delenv("INSTASEG_FAST_KERNELS", raising=False)
    monkeypatch.setattr(exporters, "export_wrapper", lambda model: nn.Identity())
    monkeypatch.setattr(torch.export, "export", fake_export)
    before = _dispatch.use_fast_kernels()
    assert exporters.export_program(nn.Identity(), (64, 64), dynamic=False) == "program"
    assert seen == {"fast": False, "env": None}
    assert _dispatch.use_fast_kernels() == before and "INSTASEG_FAST_KERNELS" not in os.environ
