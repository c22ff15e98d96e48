"""torch.compile (CPU inductor) against eager, interleaved: a training step or inference of one preset.

    python benchmarks/compile.py --preset mask_rcnn_r18_fpn_tiny --train [--size 144] [--batch 2]
    python benchmarks/compile.py --preset mask_rcnn_r50_fpn --size 800 [--onnxruntime]

Training compiles as ``train.compile`` does (``instaseg.engine.compile.TRAIN_PARTS``, sizes going
symbolic on a change); inference as ``instaseg bench --modes compile`` (the dense parts, one static
size, the weights frozen into the graph). Each variant is its own model with the same random
weights (seed 0) on the same synthetic batch. Variants run alternately, ``--repeats`` rounds after
one untimed round (which holds the compilation, reported apart), and medians are compared: on a
shared machine single timings are noisy. CPU milliseconds (all threads) are printed too; they
suffer less from other processes than wall time does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402

from instaseg.engine.bench import bench_images, predict_step, synthetic_targets, train_step  # noqa: E402
from instaseg.engine.compile import DENSE_PARTS, TRAIN_PARTS, compile_parts  # noqa: E402
from instaseg.hub.bench import build_bench_model  # noqa: E402


def onnxruntime_step(model: torch.nn.Module, image: torch.Tensor, folder: str) -> Callable[[], None]:
    from instaseg.export.exporters import OnnxPredictor, export_onnx

    path = export_onnx(model.eval(), Path(folder) / "model.onnx", example=tuple(image.shape[-2:]), dynamic=False)
    predictor = OnnxPredictor(path, num_threads=torch.get_num_threads())
    return lambda: predictor.run(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mask_rcnn_r18_fpn_tiny")
    parser.add_argument("--size", type=int, default=None, help="shorter side (default: the preset's test size)")
    parser.add_argument("--train", action="store_true", help="a training step instead of inference")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default: training 2, inference 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--onnxruntime", action="store_true", help="inference: ONNX Runtime on the exported graph too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from instaseg.config.presets import get_preset

    preset = get_preset(args.preset)
    size = args.size or (preset.input.square or preset.input.min_size_test)
    batch = args.batch or (2 if args.train else 1)
    models = {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        models[name], image_size, _ = build_bench_model(args.preset, size=size)
    generator = torch.Generator().manual_seed(0)
    images = bench_images(image_size, batch, generator)
    if args.train:
        targets = [synthetic_targets(image_size, models["eager"].num_classes, generator=generator) for _ in images]
        compile_parts(models["compiled"], TRAIN_PARTS, dynamic=None, training=True)
        steps = {name: train_step(model, images, targets) for name, model in models.items()}
    else:
        compile_parts(models["compiled"], DENSE_PARTS, dynamic=False, freeze=True)
        steps = {name: predict_step(model, images) for name, model in models.items()}
    folder = tempfile.TemporaryDirectory()
    if args.onnxruntime and not args.train:
        steps["onnxruntime"] = onnxruntime_step(models["eager"], images[0], folder.name)
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    first: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    for repeat in range(args.repeats + 1):  # the first round compiles and warms up: not counted
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            if repeat:
                wall[name].append((time.perf_counter() - start) * 1000)
                cpu[name].append((time.process_time() - start_cpu) * 1000)
            else:
                first[name] = time.perf_counter() - start
    h, w = image_size
    print(f"{args.preset}: {'training step' if args.train else 'inference'}, {batch} image(s) {h}x{w}, "
          f"{args.threads} threads, torch {torch.__version__}, load average {load_before:.1f} -> "
          f"{os.getloadavg()[0]:.1f}; first call (compiles): " + ", ".join(f"{n} {s:.0f} s" for n, s in first.items()))
    base = statistics.median(wall["eager"])
    rows = [[name, f"{statistics.median(wall[name]) / batch:.0f}", f"{min(wall[name]) / batch:.0f}",
             f"{statistics.median(cpu[name]) / batch:.0f}", f"{statistics.median(wall[name]) / base:.2f}"]
            for name in steps]
    print(markdown_table(["variant", "median ms / image", "min ms / image", "CPU ms / image (all threads)",
                          "time vs eager"], rows))
    folder.cleanup()


if __name__ == "__main__":
    main()
