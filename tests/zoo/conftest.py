"""Fixtures for the weights catalogue tests: a private cache folder, a file server on 127.0.0.1 that
the catalogue is pointed at (``$INSTASEG_WEIGHTS_MIRROR``), and catalogue entries re-pointed at
synthetic files (their checksums replaced by the synthetic files' own; URLs stay the publishers')."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from instaseg.zoo import CATALOGUE, WeightsEntry

from tests.zoo._server import FileServer


@pytest.fixture
def home(tmp_path, monkeypatch):
    """``$INSTASEG_HOME`` in a temporary folder; no mirror, not offline."""
    folder = tmp_path / "instaseg_home"
    monkeypatch.setenv("INSTASEG_HOME", str(folder))
    monkeypatch.delenv("INSTASEG_WEIGHTS_MIRROR", raising=False)
    monkeypatch.delenv("INSTASEG_OFFLINE", raising=False)
    return folder


@pytest.fixture
def server(home, monkeypatch):
    """A running file server; the catalogue fetches from it through ``$INSTASEG_WEIGHTS_MIRROR``."""
    with FileServer() as running:
        monkeypatch.setenv("INSTASEG_WEIGHTS_MIRROR", running.url)
        yield running


def checksum_prefix(data: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, data).hexdigest()[: 6 if algorithm == "md5" else 8]


@pytest.fixture
def publish(server, monkeypatch):
    """``publish(name, data, **changes)``: serve ``data`` as catalogue entry ``name``'s file and make the
    entry expect it (the publisher's check algorithm with the synthetic file's own prefix; none where the
    publisher gives none). ``base=`` an entry to copy for a name the catalogue does not have."""

    def _publish(name: str, data: bytes, **changes) -> WeightsEntry:
        base = CATALOGUE.get(name) or changes.pop("base")
        algorithm = changes.pop("hash_algorithm", base.hash_algorithm)  # "" (no check) stays so
        prefix = checksum_prefix(data, algorithm) if algorithm else ""
        entry = replace(base, name=name, hash_algorithm=algorithm, hash_prefix=prefix, **changes)
        monkeypatch.setitem(CATALOGUE, name, entry)
        server.files[entry.file_name] = data
        return entry

    return _publish
