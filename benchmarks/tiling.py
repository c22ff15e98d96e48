"""Sliced inference on a large, mostly empty image: tiles, time and peak memory per tile size,
against the memory a full-image mask per detection would take.

    python benchmarks/tiling.py [--size 10000] [--tiles 512,1024,2048] [--overlap 0.2] [--batch 4]
                                [--detectors squares,tiny] [--threads 2] [--tiny-detections 50]

The image is ``size x size`` uint8, black but for a few coloured squares and discs (40 to 600 px,
so some are larger than the overlap and are stitched from several tiles). Detectors:

* ``squares``: a fake detector that reports every colour of a tile as one object with its exact
  mask, so the merged count can be checked against the shapes planted (``found`` column);
* ``tiny``: ``mask_rcnn_r18_fpn_tiny`` with random weights and no score threshold: it resizes each
  tile to its 144 px test size and "detects" noise, ``--tiny-detections`` (50) per tile: a busy
  image, whose time goes mostly to the model pasting each tile's masks at the tile's resolution.

Each row runs in its own child process, so its peak is its own: ``peak RSS`` is the child's peak
resident set (``ru_maxrss``), ``before`` its resident set once the image is made and the model
built (torch, the image, the weights), so ``peak - before`` is what sliced inference added.
``crops`` is what the result's masks hold; ``full masks`` is ``N * H * W`` bytes, what one
``(H, W)`` bool mask per detection would take. Timings are one run each (minutes on a 2-core CPU)
and the load average is printed: other work on the machine slows every row alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402

from instaseg.engine.tiling import sliced_predict, tile_grid  # noqa: E402
from instaseg.structures.instances import Instances  # noqa: E402


class ColourDetector:
    """Every non-black colour of a tile is one object (label 0, score 1): exact masks and boxes."""

    def predict(self, images: list[torch.Tensor]) -> list[Instances]:
        return [self._detect(image) for image in images]

    @staticmethod
    def _detect(image: torch.Tensor) -> Instances:
        _, h, w = image.shape
        pixels = image.cpu().numpy().astype(np.int32)
        codes = (pixels[0] << 16) | (pixels[1] << 8) | pixels[2]
        colours = np.unique(codes[codes != 0]).tolist()
        masks = np.stack([codes == c for c in colours]) if colours else np.zeros((0, h, w), dtype=bool)
        boxes = []
        for mask in masks:
            ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            boxes.append([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1])
        n = len(colours)
        return Instances(torch.tensor(boxes, dtype=torch.float32).reshape(n, 4), torch.ones(n),
                         torch.zeros(n, dtype=torch.int64), torch.from_numpy(masks))


def planted_image(size: int, count: int, seed: int = 0) -> np.ndarray:
    """``(3, size, size)`` uint8: black, with ``count`` non-overlapping squares and discs of distinct colours."""
    rng = np.random.default_rng(seed)
    image = np.zeros((3, size, size), dtype=np.uint8)
    placed: list[tuple[int, int, int, int]] = []
    while len(placed) < count:
        side = int(rng.integers(40, 600))
        x, y = (int(v) for v in rng.integers(0, size - side, 2))
        if any(x < b[2] + 2 and b[0] < x + side + 2 and y < b[3] + 2 and b[1] < y + side + 2 for b in placed):
            continue
        colour = (len(placed) + 1) * 37 % 256, 200, 40 + len(placed)
        region = image[:, y : y + side, x : x + side]
        if len(placed) % 2:
            yy, xx = np.mgrid[0:side, 0:side] + 0.5
            inside = (xx - side / 2) ** 2 + (yy - side / 2) ** 2 <= (side / 2) ** 2
        else:
            inside = np.ones((side, side), dtype=bool)
        for channel in range(3):
            region[channel][inside] = colour[channel]
        placed.append((x, y, x + side, y + side))
    return image


def build_detector(name: str, tiny_detections: int):
    if name == "squares":
        return ColourDetector()
    if name == "tiny":
        from instaseg.config.io import apply_overrides
        from instaseg.config.presets import get_preset
        from instaseg.detectors.build import build_from_config

        torch.manual_seed(0)
        overrides = ["model.inference.score_thresh=0.0", f"model.inference.detections_per_image={tiny_detections}"]
        return build_from_config(apply_overrides(get_preset("mask_rcnn_r18_fpn_tiny"), overrides)).eval()
    raise SystemExit(f"unknown detector {name!r}: choose among squares, tiny")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_row(args: argparse.Namespace, name: str, tile: int) -> dict:
    """Sliced inference once, in this process; what the row reports."""
    torch.set_num_threads(args.threads)
    image = torch.from_numpy(planted_image(args.size, args.objects))
    detector = build_detector(name, args.tiny_detections)
    before = _rss_mib()
    start = time.perf_counter()
    result = sliced_predict(detector, image, tile, args.overlap, batch_size=args.batch)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    return {"tiles": len(tile_grid((args.size, args.size), tile, args.overlap)), "seconds": seconds,
            "found": len(result), "crops_mib": result.masks.nbytes() / 2**20, "before_mib": before, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--tiles", default="512,1024,2048")
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--objects", type=int, default=12)
    parser.add_argument("--detectors", default="squares,tiny")
    parser.add_argument("--tiny-detections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("DETECTOR", "TILE"), help=argparse.SUPPRESS)  # a child's row
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_row(args, args.one[0], int(args.one[1]))))
        return
    rows = []
    for name in args.detectors.split(","):
        for tile in args.tiles.split(","):
            child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", name, tile],
                                   capture_output=True, text=True, check=True)
            r = json.loads(child.stdout.strip().splitlines()[-1])
            rows.append([name, tile, str(r["tiles"]), f"{r['seconds']:.1f}",
                         f"{r['found']} / {args.objects}" if name == "squares" else str(r["found"]),
                         f"{r['crops_mib']:.1f}", f"{r['before_mib']:.0f}", f"{r['peak_mib']:.0f}",
                         f"{r['peak_mib'] - r['before_mib']:.0f}", f"{r['found'] * args.size**2 / 2**30:,.1f}"])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)  # progress: a row can take minutes
    print(f"{args.size} x {args.size} uint8 image ({3 * args.size**2 / 2**20:.0f} MiB), {args.objects} shapes, "
          f"overlap {args.overlap}, {args.batch} tiles per forward, {args.threads} threads, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(markdown_table(["detector", "tile", "tiles", "time s", "found", "crops MiB", "RSS before MiB",
                          "peak RSS MiB", "peak - before MiB", "full masks GiB"], rows))


if __name__ == "__main__":
    main()
