"""Soak test: train the tiny preset for many iterations and watch the process's memory (RSS).

    python benchmarks/soak.py --iters 400 --every 20

Trains ``mask_rcnn_r18_fpn_tiny`` on a small synthetic dataset (64-96 px images) through the real
data pipeline and training loop, samples the resident set size every ``--every`` iterations, and
prints a table and a verdict: memory "grows" when the least-squares slope over the second half of
the samples (after warm-up allocations settle) exceeds ``--max-slope-mib`` MiB per 100 iterations.
A script, not a test: run it for a few hundred iterations on a quiet machine.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def rss_mib() -> float:
    """Current resident set size in MiB (psutil when installed, else /proc/self/status VmRSS)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        pass
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak, Linux kB: a last resort


def slope_per_100(iterations: list[int], values: list[float]) -> float:
    """Least-squares slope of ``values`` against ``iterations``, in units per 100 iterations."""
    if len(iterations) < 2:
        return 0.0
    x, y = np.asarray(iterations, np.float64), np.asarray(values, np.float64)
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / max((x * x).sum(), 1e-12) * 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=300, help="training iterations (default 300)")
    parser.add_argument("--every", type=int, default=10, help="sample RSS every N iterations")
    parser.add_argument("--images", type=int, default=24, help="synthetic images")
    parser.add_argument("--workers", type=int, default=0, help="train.num_workers")
    parser.add_argument("--max-slope-mib", type=float, default=2.0, help="growth verdict threshold, MiB/100 it")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from instaseg.data.coco import CocoDataset
    from instaseg.data.loader import build_train_loader
    from instaseg.data.synthetic import generate_synthetic_dataset
    from instaseg.data.transforms import build_transforms
    from instaseg.detectors.build import resolve_config
    from instaseg.hub import train_on_dataset

    samples: list[tuple[int, float, float]] = []  # (iteration, rss MiB, seconds since start)
    start = time.perf_counter()

    def loader_fn(dataset, config, batch_size, start_batch, distributed):
        stream = build_train_loader(dataset, build_transforms(config, train=True), batch_size,
                                    config.train.num_workers, config.train.seed, start_iter=start_batch)
        for k, batch in enumerate(stream, start=start_batch):
            if k % args.every == 0:  # one micro-batch per iteration (accumulate=1)
                samples.append((k, rss_mib(), time.perf_counter() - start))
            yield batch

    with tempfile.TemporaryDirectory() as tmp:
        data = generate_synthetic_dataset(Path(tmp) / "data", num_images=args.images, image_size=(64, 96),
                                          val_fraction=0.0 if args.images < 10 else 0.1, seed=0)
        dataset = CocoDataset(data.train_annotations, data.train_images)
        config = resolve_config("mask_rcnn_r18_fpn_tiny", num_classes=dataset.num_classes, overrides=[
            f"train.max_iter={args.iters}", "train.ims_per_batch=2", "train.warmup_iters=20", "train.lr=0.01", "train.clip_grad_norm=5.0",
            f"train.num_workers={args.workers}", "train.checkpoint_period=0", "train.eval_period=0",
            "input.min_size_train=[64,80,96]", "input.max_size_train=128"])
        summary = train_on_dataset(config, dataset, Path(tmp) / "run", progress=False, log_period=10**9,
                                   train_loader_fn=loader_fn)
    after = rss_mib()  # after the run's objects are freed: shown, not part of the slope

    print(f"{'iteration':>9}  {'RSS MiB':>8}  {'seconds':>8}")
    for iteration, rss, seconds in samples:
        print(f"{iteration:>9}  {rss:>8.1f}  {seconds:>8.1f}")
    print(f"{'after':>9}  {after:>8.1f}")
    half = samples[len(samples) // 2:]
    slope = slope_per_100([s[0] for s in half], [s[1] for s in half])
    grows = slope > args.max_slope_mib
    print(f"\n{summary['status']} {summary['iteration']} iterations in {summary['seconds']:.0f} s; "
          f"RSS {samples[0][1]:.0f} -> {samples[-1][1]:.0f} MiB in training; second-half slope {slope:+.2f} MiB/100 it")
    print("verdict: MEMORY GROWS (possible leak)" if grows else
          f"verdict: stable (slope <= {args.max_slope_mib} MiB/100 it)")
    if len(half) < 4:
        print("(few samples: run more iterations for a meaningful verdict)")


if __name__ == "__main__":
    main()
