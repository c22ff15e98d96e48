"""``instaseg bench`` end to end on a tiny preset."""

import json

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


def test_bench_training_step(capsys):
    assert main(["bench", "--preset", "mask_rcnn_r18_fpn_tiny", "--size", "64", "--iters", "1", "--train",
                 "--no-flops"]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "| backward |" in text and "GFLOPs" not in text


def test_bench_refuses_bad_arguments(capsys):
    assert main(["bench", "--preset", "no_such_preset", "--iters", "1"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["bench", "--preset", "mask_rcnn_r18_fpn_tiny", "--iters", "0"]) == 2
