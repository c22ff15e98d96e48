"""The benchmark helpers: FLOP counts, stage times, memory, image sizes and a whole tiny run."""

import mmap

import torch
from torch import nn
from torch.profiler import record_function

from instaseg.config.presets import get_preset
from instaseg.engine.bench import (
    STAGE_GROUPS,
    BenchResult,
    bench_image_size,
    count_gflops,
    format_result,
    peak_memory,
    stage_times,
    synthetic_targets,
    time_iterations,
)
from instaseg.hub import run_benchmark


def test_gflops_of_convs_and_linear_layers_match_the_formula():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1, stride=2), nn.Flatten(),
                          nn.Linear(4 * 5 * 6, 7))
    x = torch.randn(2, 3, 10, 12)
    # a multiply-add is 2 FLOPs: 2 * C_out * C_in * k * k per output pixel, 2 * in * out per row
    expected = 2 * (2 * 8 * 3 * 9 * 10 * 12) + 2 * (2 * 4 * 8 * 1 * 5 * 6) + 2 * (2 * 120 * 7)
    assert count_gflops(lambda: model(x)) * 1e9 == expected


def test_stage_times_sum_the_labels():
    def fn():
        with record_function("instaseg.backbone"):
            torch.randn(64, 64) @ torch.randn(64, 64)
        with record_function("instaseg.paste"):
            torch.zeros(10).sum()
        with record_function("unrelated"):
            pass

    stages = stage_times(fn, runs=2)
    assert set(stages) == {"backbone", "paste"} and all(ms >= 0 for ms in stages.values())


def test_time_iterations_counts_calls():
    calls = []
    times = time_iterations(lambda: calls.append(1), iters=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)


def test_peak_memory_sees_a_large_allocation():
    with peak_memory("cpu") as small:
        pass
    with peak_memory("cpu") as big:
        # 64 MiB of fresh pages, touched: an anonymous map, because malloc may serve even a large
        # tensor from freed memory that is already resident in a long-lived test worker.
        block = mmap.mmap(-1, 64 * 2**20)
        for start in range(0, len(block), 4096):
            block[start] = 1
        block.close()
    assert big["mb"] >= small["mb"] and "RSS" in big["kind"]
    if big["kind"] == "peak RSS":  # resettable high-water mark: the 64 MiB shows
        assert big["mb"] - small["mb"] > 48


def test_peak_memory_falls_back_when_the_reset_is_ignored(monkeypatch):
    # Some sandboxes accept the write to /proc/self/clear_refs and leave VmHWM where it was: a
    # high-water mark far above the current RSS after the reset must not be reported as this
    # block's peak.
    import instaseg.engine.bench as bench

    monkeypatch.setattr(bench, "_read_status_kb", lambda key: {"VmHWM": 900_000, "VmRSS": 300_000}[key])
    with peak_memory("cpu") as result:
        pass
    assert result["kind"] == "peak RSS (process lifetime)"


def test_bench_image_sizes():
    assert bench_image_size(get_preset("mask_rcnn_r50_fpn").input, 800) == (800, 1216)
    assert bench_image_size(get_preset("yolact_pp_r50_550").input, 550) == (550, 550)


def test_synthetic_targets_are_consistent():
    g = torch.Generator().manual_seed(0)
    t = synthetic_targets((40, 60), num_classes=3, num_objects=5, generator=g)
    assert t.masks.shape == (5, 40, 60) and (t.labels < 3).all()
    for box, mask in zip(t.boxes, t.masks):  # each mask fills exactly its box
        x1, y1, x2, y2 = box.long().tolist()
        assert mask.sum() == (x2 - x1) * (y2 - y1) > 0 and mask[y1:y2, x1:x2].all()


def test_synthetic_targets_of_a_keypoint_model_carry_labelled_keypoints_inside_their_boxes():
    g = torch.Generator().manual_seed(0)
    t = synthetic_targets((40, 60), num_classes=1, num_objects=3, generator=g, num_keypoints=4)
    assert t.keypoints.shape == (3, 4, 3) and (t.keypoints[..., 2] == 2).all()
    x, y = t.keypoints[..., 0], t.keypoints[..., 1]
    assert ((x >= t.boxes[:, None, 0]) & (x <= t.boxes[:, None, 2]) & (y >= t.boxes[:, None, 1])
            & (y <= t.boxes[:, None, 3])).all()
    assert synthetic_targets((40, 60), num_classes=1, generator=g).keypoints is None


def test_result_properties_are_per_image():
    r = BenchResult("p", "train", "cpu", (8, 8), 2, 1, "float32", False, [10.0, 30.0, 20.0], 1.0, "peak RSS",
                    stages_ms={"backbone": 8.0, "rpn": 2.0, "proposals": 2.0, "whatever": 4.0})
    assert (r.median_ms, r.min_ms, r.max_ms, r.images_per_s) == (10.0, 5.0, 15.0, 100.0)
    assert r.stage_groups() == {"backbone": 4.0, "proposals": 2.0, "other": 2.0}
    assert "median 10.0 ms" in format_result(r)
    assert set(STAGE_GROUPS.values()) >= {"backbone", "neck", "proposals", "roi_heads", "masks", "postprocess"}


def test_tiny_inference_and_training_runs():
    result = run_benchmark("mask_rcnn_r18_fpn_tiny", size=64, iters=1)
    assert result.mode == "inference" and result.image_size == (64, 96) and len(result.times_ms) == 1
    # score threshold 0: the preset's detections_per_image
    assert result.num_detections == get_preset("mask_rcnn_r18_fpn_tiny").model.inference.detections_per_image
    assert {"backbone", "neck", "rpn", "mask_head", "paste"} <= set(result.stages_ms)
    assert result.gflops > 0 and result.peak_memory_mb > 0
    train = run_benchmark("yolact_r18_tiny", size=64, iters=1, train=True, flops=False)
    assert train.mode == "train" and train.batch_size == 2
    assert {"backbone", "loss", "backward", "optimizer"} <= set(train.stages_ms)
