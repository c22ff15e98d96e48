"""``instaseg bench`` end to end on a tiny preset."""

import json
import platform

import numpy as np
from PIL import Image

from instaseg.cli.main import main


def test_bench_prints_timings_stages_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "mask_rcnn_r18_fpn_tiny", "--size", "64", "--iters", "2", "--threads", "2",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for needle in ("per image: median", "images/s", "peak memory", "GFLOPs per image", "| backbone |", "| masks |"):
        assert needle in text
    result = json.loads(out.read_text())
    assert len(result["times_ms"]) == 2 and result["min_ms"] <= result["median_ms"] <= result["max_ms"]
    assert result["image_size"] == [64, 96] and result["threads"] == 2 and result["gflops"] > 0
    # the instaseg command keeps freed memory for reuse (instaseg.engine.allocator), and says so
    assert result["malloc"] == ("reuse" if platform.libc_ver()[0] == "glibc" else "system")
    assert f"malloc {result['malloc']}" in text


def test_bench_set_changes_the_measured_model(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "mask_rcnn_r18_fpn_tiny", "--size", "64", "--iters", "1", "--no-stages",
                 "--no-flops", "--set", "model.inference.detections_per_image=7", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["num_detections"] == 7  # random weights, threshold 0: the cap is reached
    assert main(["bench", "--preset", "mask_rcnn_r18_fpn_tiny", "--iters", "1", "--set", "model.no_such_key=1"]) == 2


def test_an_unknown_malloc_setting_stops_the_command_with_a_message(monkeypatch, capsys):
    monkeypatch.setenv("INSTASEG_MALLOC", "tcmalloc")
    assert main(["presets"]) == 2
    assert "INSTASEG_MALLOC='tcmalloc': expected one of reuse, system" in capsys.readouterr().err


def test_bench_training_step(capsys):
    assert main(["bench", "--preset", "mask_rcnn_r18_fpn_tiny", "--size", "64", "--iters", "1", "--train",
                 "--no-flops"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "| backward |" in text and "GFLOPs" not in text


def test_bench_refuses_bad_arguments(capsys):
    assert main(["bench", "--preset", "no_such_preset", "--iters", "1"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["bench", "--preset", "mask_rcnn_r18_fpn_tiny", "--iters", "0"]) == 2


def test_bench_modes_side_by_side_with_onnxruntime(tmp_path, capsys):
    out = tmp_path / "modes.json"
    assert main(["bench", "--preset", "mask_rcnn_r18_fpn_tiny", "--size", "64", "--iters", "1", "--threads", "2",
                 "--modes", "float32,onnxruntime", "--score-thresh", "0.05", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| mode | ms / image | images / s | peak memory (MiB) | time vs float32 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "mode" not in line]
    # bf16 through the same path: tests/engine/test_precision.py (10x slower on CPUs without AVX512-BF16)
    assert [row.split("|")[1].strip() for row in rows] == ["float32", "onnxruntime"]
    results = json.loads(out.read_text())
    assert [r["label"] for r in results] == ["float32", "onnxruntime"]
    assert [r["runtime"] for r in results] == ["pytorch", "onnxruntime"]
    assert all(r["median_ms"] > 0 and r["peak_memory_mb"] > 0 and r["image_size"] == [64, 96] for r in results)
    # the exported graph finds what the model finds (the same weights and image; parity: tests/export)
    assert results[1]["num_detections"] == results[0]["num_detections"]


def test_bench_modes_refuses_unknown_modes_and_onnxruntime_training(capsys):
    base = ["bench", "--preset", "mask_rcnn_r18_fpn_tiny", "--size", "64", "--iters", "1"]
    assert main(base + ["--modes", "float32,int4"]) == 2
    assert "unknown bench mode 'int4'" in capsys.readouterr().err
    assert main(base + ["--modes", "float32,onnxruntime", "--train"]) == 2
    assert "only predict" in capsys.readouterr().err
    assert main(base + ["--modes", "int8", "--train"]) == 2
    assert "only predict" in capsys.readouterr().err
    assert main(base + ["--precision", "int8", "--train"]) == 2
    assert "int8 is for inference" in capsys.readouterr().err
    assert main(base + ["--precision", "int8", "--device", "cuda"]) == 2


def test_bench_int8_calibrated_on_a_folder_of_images(tmp_path, capsys):
    folder = tmp_path / "calibration"
    folder.mkdir()
    generator = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(generator.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "int8.json"
    base = ["bench", "--preset", "mask_rcnn_r18_fpn_tiny", "--size", "64", "--iters", "1", "--threads", "2"]
    assert main(base + ["--modes", "float32,int8", "--calibration", str(folder), "--json", str(out)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "mode" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["float32", "int8"]
    results = json.loads(out.read_text())
    assert [r["precision"] for r in results] == ["float32", "int8"] and results[1]["num_detections"] > 0
    assert main(base + ["--precision", "int8", "--no-flops"]) == 0  # synthetic calibration images
    text = capsys.readouterr().out
    assert "int8 (backbone, FPN and head convolutions in int8" in text and "bf16" not in text and "| backbone |" in text
    assert main(base + ["--precision", "int8", "--calibration", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(base + ["--precision", "int8", "--calibration", str(tmp_path / "empty")]) == 2
    assert "no images" in capsys.readouterr().err
