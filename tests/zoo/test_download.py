"""Fetching a published file: progress, cache, integrity check, and every way a download fails.

All traffic goes to a server the test starts on 127.0.0.1; the catalogue's URLs stay the publishers'.
The payloads are a few hundred kilobytes of bytes: fetching does not parse files (conversion does).
"""

from __future__ import annotations

import os

import pytest

from instaseg.errors import WeightsFetchError
from instaseg.zoo import fetch_file, weights_dir

from tests.zoo._server import closed_port_url

NAME = "resnet18_imagenet_tv"  # any entry: fetch_file treats every file alike
PAYLOAD = os.urandom(300_000)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_download_shows_progress_verifies_and_is_cached(publish, server, monkeypatch, capsys):
    entry = publish(NAME, PAYLOAD)
    path = fetch_file(entry, progress=True)
    assert path == weights_dir() / "resnet18-f37072fd.pth" and path.read_bytes() == PAYLOAD
    assert "resnet18-f37072fd.pth" in capsys.readouterr().err  # the progress bar names the file
    assert server.requests[entry.file_name] == 1
    monkeypatch.setenv("INSTASEG_WEIGHTS_MIRROR", closed_port_url())  # no network from here on
    assert fetch_file(entry) == path and server.requests[entry.file_name] == 1
    assert _leftovers(weights_dir()) == [entry.file_name]


def test_wrong_checksum_is_refused_and_moved_aside(publish, server):
    entry = publish(NAME, PAYLOAD)
    server.files[entry.file_name] = PAYLOAD[:-1] + b"x"  # what arrives is not the published file
    with pytest.raises(WeightsFetchError, match="failed its integrity check") as error:
        fetch_file(entry, progress=False)
    message = str(error.value)
    assert f"sha256 starts with {entry.hash_prefix}" in message and str(weights_dir()) in message
    assert _leftovers(weights_dir()) == [entry.file_name + ".bad"]  # never under the name that gets loaded


def test_connection_closed_mid_file_leaves_nothing_and_a_retry_succeeds(publish, server):
    entry = publish(NAME, PAYLOAD)
    server.cut_after[entry.file_name] = len(PAYLOAD) // 3
    with pytest.raises(WeightsFetchError, match=f"closed after {len(PAYLOAD) // 3} of {len(PAYLOAD)} bytes"):
        fetch_file(entry, progress=False)
    assert _leftovers(weights_dir()) == []  # no partial file, complete-looking or not
    del server.cut_after[entry.file_name]
    assert fetch_file(entry, progress=False).read_bytes() == PAYLOAD


def test_connection_refused_names_the_url_the_file_and_the_drop_in_folder(publish, monkeypatch):
    entry = publish(NAME, PAYLOAD)
    mirror = closed_port_url()
    monkeypatch.setenv("INSTASEG_WEIGHTS_MIRROR", mirror)
    with pytest.raises(WeightsFetchError) as error:
        fetch_file(entry, progress=False)
    message = str(error.value)
    for part in (f"{mirror}/{entry.file_name}", "refused", entry.url, f"named {entry.file_name}",
                 str(weights_dir())):
        assert part in message
    assert "\n" not in message  # one paragraph
    assert _leftovers(weights_dir()) == []


def test_a_server_that_stalls_times_out(publish, server):
    entry = publish(NAME, PAYLOAD)
    server.stall_seconds = 2.0
    with pytest.raises(WeightsFetchError, match="timed out"):
        fetch_file(entry, progress=False, timeout=0.3)
    assert _leftovers(weights_dir()) == []


def test_http_errors_are_reported(publish, server):
    entry = publish(NAME, PAYLOAD)
    del server.files[entry.file_name]
    with pytest.raises(WeightsFetchError, match="HTTP 404"):
        fetch_file(entry, progress=False)


def test_a_file_put_in_the_folder_by_hand_is_used_without_network(publish, server, monkeypatch):
    entry = publish(NAME, PAYLOAD)
    monkeypatch.setenv("INSTASEG_OFFLINE", "1")
    with pytest.raises(WeightsFetchError, match="INSTASEG_OFFLINE") as error:
        fetch_file(entry)
    assert str(weights_dir()) in str(error.value)
    weights_dir().mkdir(parents=True)
    (weights_dir() / entry.file_name).write_bytes(PAYLOAD)
    assert fetch_file(entry).read_bytes() == PAYLOAD
    assert server.requests[entry.file_name] == 0


def test_a_wrong_file_put_in_by_hand_is_refused_before_use(publish, server):
    entry = publish(NAME, PAYLOAD)
    weights_dir().mkdir(parents=True)
    (weights_dir() / entry.file_name).write_bytes(b"not the published file")
    with pytest.raises(WeightsFetchError, match="moved aside"):
        fetch_file(entry)
    assert _leftovers(weights_dir()) == [entry.file_name + ".bad"]


def test_without_a_checksum_a_known_size_is_checked(publish, server):
    entry = publish("yolact_r50_coco", PAYLOAD, hash_algorithm="", size_bytes=len(PAYLOAD) + 1)
    assert entry.hash_prefix == "" and "size" in entry.integrity
    with pytest.raises(WeightsFetchError, match=f"it has {len(PAYLOAD)} bytes"):
        fetch_file(entry, progress=False)


def test_cache_folder_follows_instaseg_home_then_xdg(monkeypatch, tmp_path):
    from instaseg.zoo import weights_home

    monkeypatch.setenv("INSTASEG_HOME", str(tmp_path / "h"))
    assert weights_home() == tmp_path / "h"
    monkeypatch.delenv("INSTASEG_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_home() == tmp_path / "xdg" / "instaseg"
