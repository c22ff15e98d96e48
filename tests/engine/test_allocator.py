"""instaseg.engine.allocator: freed memory kept for reuse (checked in fresh processes: it is process-wide)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from instaseg.engine import allocator
from instaseg.errors import ConfigError

# Writes a 320 MiB tensor, then tensors of 240, 224 and 208 MiB one after the other (each freed
# before the next), and reports the minor page faults of the last three: one per 4 KiB page when
# every allocation is a fresh mmap, next to none when each reuses the memory the one before left.
# (The sizes shrink because PyTorch asks for 64-byte aligned memory, which glibc takes from a freed
# block only when the block is larger than the request by the alignment's slack.)
_PROBE = """
import json, resource, sys, torch
from instaseg.engine.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "call" else None
torch.ones(80 * 2**20)
faults = []
for mib in (240, 224, 208):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(mib * 2**18)  # float32: written once, freed at once
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""
_PAGES = 208 * 2**20 // 4096  # of the smallest

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _probe(call: bool, malloc: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV_VAR}
    if malloc is not None:
        env[allocator.ENV_VAR] = malloc
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-c", _PROBE, "call" if call else "skip"], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def _transparent_huge_pages_always() -> bool:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.is_file() and "[always]" in path.read_text()


@glibc_only
def test_a_large_tensor_reuses_freed_memory_without_page_faults() -> None:
    result = _probe(call=True)
    assert result["applied"] is True
    assert max(result["faults"]) < _PAGES // 20, result  # each reuses the pages the one before it left


@glibc_only
@pytest.mark.skipif(_transparent_huge_pages_always(), reason="with huge pages everywhere there are few faults anyway")
def test_without_it_every_large_tensor_faults_its_pages_in_again() -> None:
    # What the setting removes: the same probe with glibc's defaults, and with INSTASEG_MALLOC=system.
    assert min(_probe(call=False)["faults"]) > _PAGES // 2
    result = _probe(call=True, malloc="system")
    assert result["applied"] is False and min(result["faults"]) > _PAGES // 2


def test_an_unknown_choice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(allocator.ENV_VAR, "jemalloc")
    with pytest.raises(ConfigError, match="INSTASEG_MALLOC='jemalloc': expected one of reuse, system"):
        allocator.reuse_freed_memory()


@glibc_only
def test_it_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # ctypes.util.find_library runs `ldconfig -p`: a child process of `instaseg train` before its signal
    # handlers, which tests/reliability took for the data loader worker and signalled too early.
    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    monkeypatch.setattr(allocator, "_state", None)
    assert allocator.reuse_freed_memory() is True
