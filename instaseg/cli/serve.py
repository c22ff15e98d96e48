"""``instaseg serve``: a local web page and HTTP API for predictions, and a dataset review."""

from __future__ import annotations

import argparse
import sys

from instaseg.cli._common import add_model_options, warn
from instaseg.errors import InstasegError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="NAME_OR_PATH",
                        help="a catalogue name (`instaseg weights list`; fetched once) or an instaseg checkpoint")
    source.add_argument("--checkpoint", help="an instaseg checkpoint (the same as --weights PATH)")
    parser.add_argument("--dataset-json", metavar="JSON", help="COCO json of a dataset to review against its ground truth")
    parser.add_argument("--dataset-images", metavar="DIR", help="the folder its file_name entries are relative to")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="default threshold of the API's answers and of the review's errors (default 0.5)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="inferences run at once (default 1)")
    parser.add_argument("--queue", type=int, default=64,
                        help="requests that may wait for the model; more are answered 503 (default 64)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted (default 20)")
    parser.add_argument("--max-pixels", type=float, default=40.0,
                        help="largest image accepted, in megapixels, read from its header (default 40)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="load only the checkpoint tensors that fit the model (the rest stay untrained)")
    add_model_options(parser)
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def build_app(args: argparse.Namespace):  # -> fastapi.FastAPI (the serve extra may be missing)
    """The application ``args`` describe: the model loaded once, the dataset review if asked."""
    from instaseg.serve import DatasetReview, InferenceGate, Limits, ModelService, create_app, is_loopback
    from instaseg.serve.server import LOCAL_HOST_NAMES

    if bool(args.dataset_json) != bool(args.dataset_images):
        raise InstasegError("--dataset-json and --dataset-images go together")
    if args.workers < 1 or args.queue < 1 or args.max_upload_mb <= 0 or args.max_pixels <= 0:
        raise InstasegError("--workers, --queue, --max-upload-mb and --max-pixels must be positive")
    gate = InferenceGate(args.workers, args.queue)
    service = ModelService.from_weights(args.weights or args.checkpoint, args.device, overrides=args.overrides,
                                        max_detections=args.max_detections, allow_partial=args.allow_partial,
                                        gate=gate)
    review = None
    if args.dataset_json:
        from instaseg.data.coco import CocoDataset

        dataset = CocoDataset(args.dataset_json, args.dataset_images, skip_bad=True)
        if dataset.num_classes != len(service.names):
            raise InstasegError(f"the model predicts {len(service.names)} classes but {args.dataset_json} has "
                                f"{dataset.num_classes}")
        review = DatasetReview(dataset, service, args.score_threshold)
    limits = Limits(int(args.max_upload_mb * 1024 * 1024), int(args.max_pixels * 1_000_000), args.score_threshold)
    local = is_loopback(args.host) and ":" not in args.host
    return create_app(service, review, limits, allowed_hosts=LOCAL_HOST_NAMES if local else None)


def run(args: argparse.Namespace) -> int:
    try:
        from instaseg.serve import run_server
        from instaseg.serve.server import exposure_warning
    except ImportError as error:
        raise InstasegError(f"instaseg serve needs the serve extra ({error.name} is missing): "
                            "pip install 'instaseg[serve]'") from None
    app = build_app(args)
    message = exposure_warning(args.host, args.port)
    if message:
        warn(message)
    print(f"instaseg serve: http://{args.host}:{args.port}/ (API: /v1/predict, /v1/model, /health; "
          f"OpenAPI: /openapi.json); Ctrl-C stops", file=sys.stderr, flush=True)
    run_server(app, args.host, args.port, args.log_level)
    return 0
