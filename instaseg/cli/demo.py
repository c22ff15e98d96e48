"""``instaseg demo``: the main job end to end on the built-in synthetic dataset."""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="folder for everything the demo writes")


def run(args: argparse.Namespace) -> int:
    # Until the training engine exists the demo exercises the structures on a toy case.
    import torch

    from instaseg.structures import BoxCoder, box_iou

    start = time.perf_counter()
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    reference = torch.tensor([[10.0, 10.0, 50.0, 60.0]])
    target = torch.tensor([[12.0, 8.0, 55.0, 58.0]])
    decoded = coder.decode(coder.encode(reference, target), reference)
    print(f"box coder round trip error {float((decoded - target).abs().max()):.2e}, "
          f"IoU {float(box_iou(reference, target)):.3f}, {time.perf_counter() - start:.2f} s")
    return 0
