"""The AP cost of reduced-precision inference: one trained checkpoint evaluated in float32, under
``torch.autocast(bfloat16)`` (``instaseg bench --precision bf16``) and with its backbone and FPN in
int8 (``instaseg bench --precision int8``, calibrated on the first 8 images of ``--calibration``),
with the median time per image of each.

    python benchmarks/precision.py --checkpoint RUN/checkpoints/last.pt --json VAL.json --images VAL_DIR
                                   [--calibration TRAIN_DIR] [--modes float32,bf16,int8] [--threads 2]

``make demo`` leaves such a checkpoint and data (``demo_out/run``, ``demo_out/data``: calibrate on
its training images, evaluate on the validation split). Prints a markdown table of COCO segm / bbox
AP, AP50, AP75 and ms per image.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402

from instaseg.data.coco import CocoDataset  # noqa: E402
from instaseg.hub import load_model  # noqa: E402
from instaseg.engine.evaluate import evaluate_model  # noqa: E402
from instaseg.engine.int8 import quantize_int8  # noqa: E402
from instaseg.hub.bench import calibration_images  # noqa: E402
from instaseg.engine.precision import autocast, autocast_dtype  # noqa: E402


class _Timed(nn.Module):
    """``predict`` of ``model`` under an optional autocast, timed per call."""

    def __init__(self, model: nn.Module, precision: str) -> None:
        super().__init__()
        self.model, self.precision, self.ms = model, precision, []

    def predict(self, images: list[torch.Tensor]) -> list:
        start = time.perf_counter()
        with autocast(autocast_dtype(self.precision, torch.device("cpu")), torch.device("cpu")):
            results = self.model.predict(images)
        self.ms.append((time.perf_counter() - start) * 1000 / max(1, len(images)))
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--json", required=True, help="COCO json of the evaluation split")
    parser.add_argument("--images", required=True, help="its image folder")
    parser.add_argument("--calibration", help="int8: folder of images to calibrate on (the training images)")
    parser.add_argument("--modes", default="float32,bf16,int8",
                        help="comma list of float32, bf16, int8, int8-trunk (backbone and FPN only)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.checkpoint)
    model.eval()
    dataset = CocoDataset(args.json, args.images)
    rows = []
    for precision in args.modes.split(","):
        timed = _Timed(model, precision)
        if precision.startswith("int8"):
            if not args.calibration:
                parser.error("int8 needs --calibration FOLDER")
            quantized = quantize_int8(copy.deepcopy(model), calibration_images(args.calibration, (0, 0)),
                                      heads=precision == "int8")
            timed = _Timed(quantized, "float32")
        metrics = evaluate_model(timed, dataset, progress=False)
        row = [precision]
        for task in ("segm", "bbox"):
            row += [f"{100 * metrics[task][key]:.1f}" for key in ("AP", "AP50", "AP75")]
        rows.append(row + [f"{statistics.median(timed.ms[1:] or timed.ms):.1f}"])
        print(" | ".join(rows[-1]), flush=True)
    print(f"{args.checkpoint}: {len(dataset)} images, {args.threads} threads, torch {torch.__version__}")
    print(markdown_table(["precision", "segm AP", "AP50", "AP75", "bbox AP", "AP50", "AP75", "ms per image"], rows))


if __name__ == "__main__":
    main()
