"""``instaseg convert``: peer checkpoints (torchvision, Detectron2, YOLACT, MMDetection) -> instaseg checkpoints."""

from __future__ import annotations

import argparse

from instaseg.errors import InstasegError

SOURCES = ("torchvision", "detectron2", "yolact", "mmdet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES,
                        help="the codebase that wrote SRC")
    parser.add_argument("src", metavar="SRC", help="peer checkpoint (.pth / .pkl)")
    parser.add_argument("dst", metavar="DST", help="instaseg checkpoint to write (weights + config)")
    parser.add_argument("--bn-eps", type=float, default=None,
                        help="torchvision only: the FrozenBatchNorm eps the source model ran with "
                             "(default 0.0, as torchvision's published COCO maskrcnn_resnet50_fpn; "
                             "1e-5 for a model built without those weights)")
    parser.add_argument("--style", choices=("pytorch", "caffe"), default=None,
                        help="mmdet only: the backbone style (caffe: stride in the 1x1 conv, BGR input), "
                             "needed when the checkpoint's meta has no config text and the file name is "
                             "not an MMDetection config name")


def run(args: argparse.Namespace) -> int:
    if args.bn_eps is not None and args.source != "torchvision":
        raise InstasegError("--bn-eps applies to --from torchvision only")
    if args.style is not None and args.source != "mmdet":
        raise InstasegError("--style applies to --from mmdet only")
    if args.source == "torchvision":
        from instaseg.hub.convert import convert_torchvision_file
        from instaseg.weights.torchvision import TORCHVISION_COCO_BN_EPS

        eps = TORCHVISION_COCO_BN_EPS if args.bn_eps is None else args.bn_eps
        summary = convert_torchvision_file(args.src, args.dst, source_bn_eps=eps)
    elif args.source == "yolact":
        from instaseg.hub.convert import convert_yolact_file

        summary = convert_yolact_file(args.src, args.dst)
    elif args.source == "mmdet":
        from instaseg.hub.convert import convert_mmdet_file

        summary = convert_mmdet_file(args.src, args.dst, style=args.style)
    else:
        from instaseg.hub.convert import convert_detectron2_file

        summary = convert_detectron2_file(args.src, args.dst)
    print(f"detected:    {summary.architecture}")
    print(f"num_classes: {summary.num_classes}")
    print(f"converted:   {summary.num_tensors} tensors")
    for note in summary.notes:
        print(f"note:        {note}")
    print(f"wrote {args.dst} (config {summary.config_name})")
    return 0
