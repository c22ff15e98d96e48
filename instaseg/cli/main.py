"""The ``instaseg`` command: one sub-command per module in ``instaseg.cli``."""

from __future__ import annotations

import argparse
import importlib
import sys

from instaseg.errors import InstasegError

# sub-command name -> (module that defines add_arguments(parser) and run(args), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("instaseg.cli.demo", "the main job end to end on the built-in synthetic dataset"),
    "train": ("instaseg.cli.train", "train a preset on COCO-format data"),
    "eval": ("instaseg.cli.eval", "COCO box and mask AP of a checkpoint or a results file"),
    "predict": ("instaseg.cli.predict", "segment images, folders or videos; overlays and results json"),
    "data": ("instaseg.cli.data", "synthetic dataset, dataset statistics and ground-truth overlays"),
    "presets": ("instaseg.cli.presets", "list the model presets"),
    "weights": ("instaseg.cli.weights", "published pretrained weights: list, fetch, info"),
    "convert": ("instaseg.cli.convert", "torchvision, Detectron2, YOLACT, MMDetection weights -> instaseg"),
    "export": ("instaseg.cli.export", "a checkpoint as ONNX (or a torch.export program), post-processing included"),
    "serve": ("instaseg.cli.serve", "a local web page and HTTP API for predictions, and a dataset review"),
    "bench": ("instaseg.cli.bench", "inference or training-step speed, peak memory, stage times and GFLOPs"),
    "report": ("instaseg.cli.report", "redraw a run folder's pictures (results, PR curves, confusion ...)"),
}


def build_parser() -> argparse.ArgumentParser:
    from instaseg import __version__

    parser = argparse.ArgumentParser(
        prog="instaseg",
        description="Instance segmentation: Mask R-CNN, Mask Scoring R-CNN, YOLACT and YOLACT++.",
    )
    parser.add_argument("--version", action="version", version=f"instaseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    code = _run(args)
    from instaseg.engine import distributed

    if distributed.get_launch_world_size() > 1:  # a torchrun worker: see exit_worker
        distributed.exit_worker(code)
    return code


def _run(args: argparse.Namespace) -> int:
    from instaseg.engine.allocator import reuse_freed_memory

    try:
        reuse_freed_memory()  # every command's large tensors: see instaseg.engine.allocator
        return int(args._run(args) or 0)
    except InstasegError as error:
        print(f"instaseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
