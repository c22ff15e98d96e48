"""Checkpoints that must not load: code-running pickles (refused before anything runs, on every entry
point), truncated files, and checkpoints of another preset or number of classes (named tensors, or
loaded in part with an explicit allow_partial / --allow-partial)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from instaseg import Predictor
from instaseg.cli.main import main
from instaseg.config.io import apply_overrides
from instaseg.config.presets import get_preset
from instaseg.detectors.build import build_from_config
from instaseg.engine.checkpoint import load_checkpoint, save_checkpoint
from instaseg.errors import CheckpointError
from instaseg.hub import load_model

OVERRIDES = ["model.num_classes=2", "input.min_size_test=32", "input.max_size_test=32"]


class _RunsCode:
    """Unpickling this calls ``open(marker, "w")``: the file appearing proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    config = apply_overrides(get_preset("mask_rcnn_r18_fpn_tiny"), OVERRIDES)
    model = build_from_config(config)
    path = tmp_path_factory.mktemp("good") / "model.pt"
    save_checkpoint(path, model, config, categories={"ids": [5, 9], "names": ["a", "b"]})
    return path


@pytest.fixture
def malicious(good, tmp_path):
    """A real instaseg checkpoint with one extra entry that runs code when unpickled."""
    marker = tmp_path / "pwned"
    payload = load_checkpoint(good)
    payload["note"] = _RunsCode(marker)
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    return path, marker


def _gt(tmp_path: Path) -> tuple[Path, Path]:
    from PIL import Image

    (tmp_path / "img").mkdir(exist_ok=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "img" / "a.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "height": 32, "width": 32}],
           "categories": [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 2, 10, 10], "iscrowd": 0,
                            "area": 100, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}]}
    import json

    (tmp_path / "gt.json").write_text(json.dumps(doc))
    return tmp_path / "gt.json", tmp_path / "img"


REFUSED = "refused to load: the file contains Python objects that could run code"


def test_load_checkpoint_refuses_code_without_running_it(malicious):
    path, marker = malicious
    with pytest.raises(CheckpointError, match=REFUSED):
        load_checkpoint(path)
    assert not marker.exists()


def test_predictor_refuses_code_without_running_it(malicious):
    path, marker = malicious
    with pytest.raises(CheckpointError, match=REFUSED):
        Predictor.from_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_cli_refuses_code_without_running_it(malicious, tmp_path, command, capsys):
    path, marker = malicious
    gt, images = _gt(tmp_path)
    argv = (["eval", "--checkpoint", str(path), "--json", str(gt), "--images", str(images)] if command == "eval"
            else ["predict", str(images), "--checkpoint", str(path), "--out", str(tmp_path / "out")])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert REFUSED in err and str(path) in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("source, as_torch", [("torchvision", True), ("detectron2", False), ("detectron2", True)])
def test_convert_refuses_code_without_running_it(tmp_path, source, as_torch, capsys):
    marker = tmp_path / "pwned"
    src = tmp_path / ("evil.pth" if as_torch else "evil.pkl")
    payload = {"model": {"backbone.weight": _RunsCode(marker)}}
    if as_torch:
        torch.save(payload, src)
    else:
        src.write_bytes(pickle.dumps(payload, protocol=2))
    assert main(["convert", "--from", source, str(src), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "refuse" in err.lower()
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_checkpoint_is_named(good, tmp_path, keep):
    data = good.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=rf"{path}: not a readable checkpoint \(truncated or corrupt\?\)"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Predictor.from_checkpoint(path)


def _other_classes(good: Path, tmp_path: Path) -> Path:
    """``good``'s weights under a config saying 4 classes: the class-dependent tensors misfit."""
    payload = load_checkpoint(good)
    payload["config"]["model"]["num_classes"] = 4
    payload["categories"] = {"ids": [1, 2, 3, 4], "names": ["a", "b", "c", "d"]}
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    return path


def test_other_num_classes_names_the_tensors_or_loads_in_part(good, tmp_path):
    path = _other_classes(good, tmp_path)
    with pytest.raises(CheckpointError) as info:
        Predictor.from_checkpoint(path)
    message = str(info.value)
    assert "box_predictor.cls_score.weight: checkpoint (3, " in message and "model (5, " in message
    assert "--allow-partial" in message
    predictor = Predictor.from_checkpoint(path, allow_partial=True)
    assert predictor.model.num_classes == 4
    own = load_checkpoint(good)["model"]
    loaded = predictor.model.state_dict()
    fitting = [k for k in own if k in loaded and own[k].shape == loaded[k].shape]
    assert fitting and all(torch.equal(own[k], loaded[k]) for k in fitting)  # what fits was loaded


def test_other_preset_names_the_tensors(good, tmp_path):
    payload = load_checkpoint(good)
    payload["config"]["model"]["fpn"]["out_channels"] = 32  # another width: most tensors misfit
    torch.save(payload, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match=r"problems; a different preset .*\n  shape "):
        load_model(tmp_path / "wide.pt")


def test_cli_allow_partial(good, tmp_path, capsys):
    path = _other_classes(good, tmp_path)
    images = _gt(tmp_path)[1]
    argv = ["predict", str(images), "--checkpoint", str(path), "--out", str(tmp_path / "p"), "--no-overlays"]
    assert main(argv) == 2
    assert "does not fit this model" in capsys.readouterr().err
    assert main(argv + ["--allow-partial"]) == 0
    assert (tmp_path / "p" / "results.json").is_file()
    gt4 = tmp_path / "gt4.json"
    import json

    doc = json.loads((tmp_path / "gt.json").read_text())
    doc["categories"] = [{"id": k, "name": str(k)} for k in (1, 2, 3, 4)]
    doc["annotations"][0]["category_id"] = 1
    gt4.write_text(json.dumps(doc))
    argv = ["eval", "--checkpoint", str(path), "--json", str(gt4), "--images", str(images)]
    assert main(argv) == 2
    assert "box_predictor.cls_score.weight" in capsys.readouterr().err
    assert main(argv + ["--allow-partial"]) == 0
