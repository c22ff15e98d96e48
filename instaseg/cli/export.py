"""``instaseg export``: a checkpoint as an ONNX file or a ``torch.export`` program.

The exported graph maps one RGB image ``(3, H, W)`` float in [0, 255] to ``boxes (N, 4)`` xyxy in
image pixels, ``scores (N,)``, ``labels (N,)`` int64 in ``[0, num_classes)``, ``masks (N, H, W)``
bool and ``mask_scores (N,)``, and for Keypoint R-CNN ``keypoints (N, K, 3)`` (without ``masks`` and
``mask_scores`` when it has no mask branch): resizing, NMS, mask paste and keypoint decoding included.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from instaseg.cli._common import add_model_options
from instaseg.errors import InstasegError

FORMATS = ("onnx", "torch_export")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="NAME_OR_PATH",
                        help="a catalogue name (`instaseg weights list`; fetched once) or an instaseg checkpoint")
    source.add_argument("--checkpoint", help="an instaseg checkpoint (the same as --weights PATH)")
    parser.add_argument("--out", required=True, help="output file (.onnx, or .pt2 for torch_export)")
    parser.add_argument("--format", choices=FORMATS, default="onnx",
                        help="onnx (runs in ONNX Runtime, no instaseg needed) or torch_export (.pt2; "
                             "load with torch.export.load after `import instaseg.export`)")
    parser.add_argument("--dynamic", action="store_true",
                        help="accept any image height and width (otherwise only --size)")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("HEIGHT", "WIDTH"),
                        help="example image size to trace with; the only size accepted without --dynamic")
    parser.add_argument("--allow-partial", action="store_true",
                        help="load only the checkpoint tensors that fit the model (the rest stay untrained)")
    parser.add_argument("--verify", action="store_true",
                        help="run the exported file on the example image and compare it with PyTorch")
    add_model_options(parser)  # the graph bakes the caps in: set them here


def run(args: argparse.Namespace) -> int:
    import torch

    from instaseg.engine.checkpoint import checkpoint_categories, load_checkpoint
    from instaseg.export.exporters import export_onnx, export_program, save_program
    from instaseg.hub.build import load_model
    from instaseg.hub.pretrained import resolve_checkpoint

    out = Path(args.out)
    if out.is_dir():
        raise InstasegError(f"--out {out} is a folder: give a file name (e.g. model.onnx)")
    out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_checkpoint(args.weights or args.checkpoint)
    model, config = load_model(checkpoint, allow_partial=args.allow_partial, overrides=args.overrides,
                               max_detections=args.max_detections)
    ids, names = checkpoint_categories(load_checkpoint(checkpoint), model.num_classes)
    height, width = args.size
    start = time.perf_counter()
    if args.format == "onnx":
        metadata = {"instaseg.preset": config.name, "instaseg.num_classes": str(model.num_classes),
                    "instaseg.category_ids": json.dumps(ids), "instaseg.category_names": json.dumps(names)}
        export_onnx(model, out, (height, width), dynamic=args.dynamic, metadata=metadata)
    else:
        save_program(export_program(model, (height, width), dynamic=args.dynamic), out)
    shape = "any height and width" if args.dynamic else f"{height}x{width} images only"
    print(f"{config.name} -> {out} ({args.format}, {shape}) in {time.perf_counter() - start:.1f} s")
    if args.verify:
        generator = torch.Generator().manual_seed(0)
        _verify(model, out, args.format, torch.rand((3, height, width), generator=generator) * 255)
    return 0


def _verify(model, path: Path, fmt: str, image) -> None:
    """Print how the exported file's detections on ``image`` compare with ``model.predict``."""
    import torch

    from instaseg.export.exporters import OnnxPredictor, load_program

    expected = model.predict([image])[0]
    if fmt == "onnx":
        outputs = OnnxPredictor(path).run(image)
    else:
        with torch.no_grad():
            outputs = load_program(path).module()(image)
    boxes = torch.as_tensor(outputs[0])
    same_count = boxes.shape[0] == len(expected)
    if same_count and len(expected):
        box_diff = float((boxes - expected.boxes).abs().max())
        print(f"verify: {len(expected)} detections in both, max box difference {box_diff:.2e} px")
    else:
        print(f"verify: {boxes.shape[0]} detections exported vs {len(expected)} in PyTorch")
    if not same_count:
        raise InstasegError("the exported model disagrees with PyTorch on the example image")
