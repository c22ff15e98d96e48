"""``instaseg bench``: inference (or training-step) speed, peak memory, stage times and GFLOPs."""

from __future__ import annotations

import argparse
import json

from instaseg.cli._common import add_set_option
from instaseg.errors import InstasegError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="mask_rcnn_r50_fpn", help="model preset (default mask_rcnn_r50_fpn)")
    parser.add_argument("--checkpoint", help="measure this checkpoint's model and weights instead of random ones")
    parser.add_argument("--size", type=int, default=None,
                        help="shorter image side; YOLACT: the square side (default: the preset's test size)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    parser.add_argument("--train", action="store_true",
                        help="time one training iteration (forward, loss, backward, SGD step) instead")
    parser.add_argument("--batch", type=int, default=None, help="images per iteration (default 1, training 2)")
    parser.add_argument("--precision", default="float32", choices=("float32", "bf16", "int8"),
                        help="bf16: bfloat16 autocast (train.precision's mode), outputs differ slightly; int8: "
                             "backbone, FPN and head convolutions quantized, calibrated on --calibration's images "
                             "(CPU inference only)")
    parser.add_argument("--calibration", metavar="FOLDER",
                        help="int8: calibrate on the first 8 images of this folder "
                             "(default: 2 synthetic images, right for timing only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the dense layers (slow first call)")
    parser.add_argument("--score-thresh", type=float, default=None,
                        help="detection score threshold (default: 0 with random weights, the checkpoint's own)")
    parser.add_argument("--no-stages", action="store_true", help="skip the profiled per-stage run")
    parser.add_argument("--no-flops", action="store_true", help="skip counting FLOPs")
    parser.add_argument("--modes", metavar="M1,M2", default=None,
                        help="measure several modes side by side, a comma list of float32, bf16, compile, "
                             "bf16+compile, onnxruntime (the exported graph), int8 (the last two inference only); "
                             "ignores --precision and --compile")
    parser.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    add_set_option(parser)


def _default_size(preset: str, checkpoint: str | None) -> int:
    from instaseg.config.io import config_from_dict
    from instaseg.config.presets import get_preset
    from instaseg.engine.checkpoint import load_checkpoint

    config = config_from_dict(load_checkpoint(checkpoint)["config"]) if checkpoint else get_preset(preset)
    return config.input.square if config.input.square > 0 else config.input.min_size_test


def run(args: argparse.Namespace) -> int:
    import torch

    from instaseg.engine.bench import format_modes, format_result, result_summary
    from instaseg.hub.bench import run_benchmark, run_modes

    if args.device == "cuda" and not torch.cuda.is_available():
        raise InstasegError("--device cuda: no CUDA device is available to this torch build")
    if args.modes and args.device != "cpu":
        raise InstasegError("--modes measures on the CPU (bf16, compile and ONNX Runtime side by side)")
    if args.iters < 1 or (args.batch is not None and args.batch < 1):
        raise InstasegError("--iters and --batch must be at least 1")
    size = args.size or _default_size(args.preset, args.checkpoint)  # unknown presets raise ConfigError
    if args.modes:
        results = run_modes(args.preset, [m.strip() for m in args.modes.split(",") if m.strip()],
                            checkpoint=args.checkpoint, size=size, threads=args.threads, iters=args.iters,
                            warmup=args.warmup, train=args.train, batch_size=args.batch, score_thresh=args.score_thresh,
                            calibration=args.calibration, overrides=args.overrides)
        print(format_modes(results))
    else:
        results = [run_benchmark(
            args.preset, checkpoint=args.checkpoint, size=size, device=args.device, threads=args.threads,
            iters=args.iters, warmup=args.warmup, train=args.train, batch_size=args.batch,
            precision=args.precision, compile=args.compile, score_thresh=args.score_thresh,
            stages=not args.no_stages, flops=not args.no_flops, calibration=args.calibration,
            overrides=args.overrides,
        )]
        print(format_result(results[0]))
    if args.json:
        summaries = [result_summary(result) for result in results]
        with open(args.json, "w") as handle:
            json.dump(summaries if args.modes else summaries[0], handle, indent=1)
    return 0
