"""``instaseg serve`` from the command line: a checkpoint loaded through the hub, loopback by default,
a warning when bound elsewhere, and clear errors for options that do not fit."""

from __future__ import annotations

import asyncio

import pytest
import torch

from instaseg.cli.main import main
from instaseg.engine.checkpoint import save_checkpoint
from instaseg.hub import model_from_config, resolve_config
from tests.serve.conftest import SMALL, Served


@pytest.fixture(scope="module")
def checkpoint(served: Served):
    config = resolve_config("mask_rcnn_r18_fpn_tiny", served.dataset.num_classes, **SMALL)
    torch.manual_seed(0)
    path = served.root / "tiny.pt"
    save_checkpoint(path, model_from_config(config), config,
                    categories={"ids": list(served.dataset.category_ids), "names": list(served.dataset.category_names)})
    return path


def _endpoint(app, path: str):
    return next(route.endpoint for route in app.routes if getattr(route, "path", None) == path)


def test_serve_loads_the_checkpoint_and_binds_loopback(served: Served, checkpoint, monkeypatch, capsys) -> None:
    calls = []
    monkeypatch.setattr("instaseg.serve.run_server", lambda app, host, port, log_level: calls.append((app, host, port)))
    assert main(["serve", "--weights", str(checkpoint), "--dataset-json", str(served.dataset.json_path),
                 "--dataset-images", str(served.image_dir), "--port", "8999"]) == 0
    app, host, port = calls[0]
    assert (host, port) == ("127.0.0.1", 8999)
    info = asyncio.run(_endpoint(app, "/v1/model")())
    assert info["weights"]["kind"] == "checkpoint" and info["weights"]["checkpoint"] == str(checkpoint)
    assert [c["name"] for c in info["classes"]] == served.dataset.category_names
    err = capsys.readouterr().err
    assert "http://127.0.0.1:8999/" in err and "warning" not in err


def test_serve_warns_when_not_on_loopback(checkpoint, monkeypatch, capsys) -> None:
    monkeypatch.setattr("instaseg.serve.run_server", lambda *args: None)
    assert main(["serve", "--checkpoint", str(checkpoint), "--host", "0.0.0.0"]) == 0
    assert "warning: serving on 0.0.0.0:8765, which other machines can reach" in capsys.readouterr().err


def test_serve_refuses_options_that_do_not_fit(served: Served, checkpoint, capsys) -> None:
    assert main(["serve", "--weights", str(checkpoint), "--dataset-json", str(served.dataset.json_path)]) == 2
    assert "--dataset-json and --dataset-images go together" in capsys.readouterr().err
    assert main(["serve", "--weights", str(served.root / "missing.pt")]) == 2
