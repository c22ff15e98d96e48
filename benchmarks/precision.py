"""The AP cost of each of ``instaseg bench``'s inference modes: one trained checkpoint evaluated in
float32, under ``torch.autocast(bfloat16)`` (bf16), with its dense parts through ``torch.compile``
(compile), exported to ONNX and run by ONNX Runtime (onnxruntime), and with its backbone, FPN and
head convolutions in int8 (int8; int8-trunk: backbone and FPN only; calibrated on the first 8 images
of ``--calibration``), with the median time per image of each.

    python benchmarks/precision.py --checkpoint RUN/checkpoints/last.pt --json VAL.json --images VAL_DIR
                                   [--calibration TRAIN_DIR] [--modes float32,bf16,int8,...] [--threads 2]

``make demo`` leaves such a checkpoint and data (``demo_out/run``, ``demo_out/data``: calibrate on
its training images, evaluate on the validation split). Prints a markdown table of COCO segm / bbox
AP, AP50, AP75 and ms per image.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402

from instaseg.data.coco import CocoDataset  # noqa: E402
from instaseg.engine.compile import DENSE_PARTS, compile_parts  # noqa: E402
from instaseg.engine.evaluate import evaluate_model  # noqa: E402
from instaseg.engine.int8 import quantize_int8  # noqa: E402
from instaseg.engine.precision import autocast, autocast_dtype  # noqa: E402
from instaseg.export.exporters import OnnxPredictor, export_onnx  # noqa: E402
from instaseg.hub import load_model  # noqa: E402
from instaseg.hub.bench import calibration_images  # noqa: E402


class _Timed(nn.Module):
    """``predict`` of ``model`` under an optional autocast, timed per call."""

    def __init__(self, model: object, precision: str = "float32") -> None:
        super().__init__()
        self.model, self.precision, self.ms = model, precision, []

    def predict(self, images: list[torch.Tensor]) -> list:
        start = time.perf_counter()
        with autocast(autocast_dtype(self.precision, torch.device("cpu")), torch.device("cpu")):
            results = self.model.predict(images)
        self.ms.append((time.perf_counter() - start) * 1000 / max(1, len(images)))
        return results


class _OnnxModel:
    """The model exported to ONNX (dynamic image size) and run by ONNX Runtime, one image at a time."""

    def __init__(self, model: nn.Module, folder: str, threads: int) -> None:
        path = export_onnx(model, Path(folder) / "model.onnx", dynamic=True)
        self.predictor = OnnxPredictor(path, num_threads=threads)

    def predict(self, images: list[torch.Tensor]) -> list:
        return [self.predictor(image) for image in images]


def _mode(model: nn.Module, mode: str, args: argparse.Namespace, folder: str) -> _Timed:
    if mode in ("float32", "bf16"):
        return _Timed(model, mode)
    if mode == "compile":  # the dense parts, weights frozen in (the first image's time is left out)
        compiled = copy.deepcopy(model)
        compile_parts(compiled, DENSE_PARTS, dynamic=None, freeze=True)
        return _Timed(compiled)
    if mode == "onnxruntime":
        return _Timed(_OnnxModel(model, folder, args.threads))
    if mode in ("int8", "int8-trunk"):
        if not args.calibration:
            raise SystemExit("int8 needs --calibration FOLDER")
        images = calibration_images(args.calibration)
        return _Timed(quantize_int8(copy.deepcopy(model), images, heads=mode == "int8"))
    raise SystemExit(f"unknown mode {mode!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--json", required=True, help="COCO json of the evaluation split")
    parser.add_argument("--images", required=True, help="its image folder")
    parser.add_argument("--calibration", help="int8: folder of images to calibrate on (the training images)")
    parser.add_argument("--modes", default="float32,bf16,int8",
                        help="comma list of float32, bf16, compile, onnxruntime, int8, int8-trunk (backbone and "
                             "FPN only)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.checkpoint)
    model.eval()
    dataset = CocoDataset(args.json, args.images)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for mode in args.modes.split(","):
            timed = _mode(model, mode, args, folder)
            metrics = evaluate_model(timed, dataset, progress=False)
            row = [mode]
            for task in ("segm", "bbox"):
                row += [f"{100 * metrics[task][key]:.1f}" for key in ("AP", "AP50", "AP75")]
            rows.append(row + [f"{statistics.median(timed.ms[1:] or timed.ms):.1f}"])
            print(" | ".join(rows[-1]), flush=True)
    print(f"{args.checkpoint}: {len(dataset)} images, {args.threads} threads, torch {torch.__version__}")
    print(markdown_table(["mode", "segm AP", "AP50", "AP75", "bbox AP", "AP50", "AP75", "ms per image"], rows))


if __name__ == "__main__":
    main()
