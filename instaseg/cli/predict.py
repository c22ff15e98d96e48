"""``instaseg predict``: segment images, folders and videos; write overlays and COCO results.

Keypoint models: the overlays draw each detection's joints and the skeleton's limbs (the keypoint
names and skeleton the checkpoint stored from its training set; COCO's person skeleton for 17
keypoints without them), hiding joints scoring at most ``--keypoint-threshold``; ``results.json``
holds every keypoint as COCO results do (``keypoints`` flat ``[x, y, score] * K`` in COCO's
pixel-index frame) and, for a model without masks, no ``segmentation``. ``--tile`` needs masks.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instaseg.cli._common import add_model_options, ensure_writable_dir, warn
from instaseg.data.image_io import IMAGE_EXTENSIONS
from instaseg.engine.tiling import overlap_argument, tile_argument
from instaseg.errors import InstasegError

if TYPE_CHECKING:
    from instaseg.data.coco_keypoints import KeypointSchema

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images or videos")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="NAME_OR_PATH",
                        help="a catalogue name (`instaseg weights list`; fetched once) or an instaseg checkpoint")
    source.add_argument("--checkpoint", help="an instaseg checkpoint (the same as --weights PATH)")
    parser.add_argument("--out", required=True, help="folder for overlays and results.json")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="keep detections scoring at least this (default 0.5)")
    parser.add_argument("--keypoint-threshold", type=float, default=None, metavar="SCORE",
                        help="keypoint models: overlays show the joints scoring above this (and the limbs between "
                             "two shown joints); default by model.keypoint_head.score: 0 for 'logit' scores, 0.05 "
                             "for 'detectron2' ones. results.json keeps every keypoint with its score")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-overlays", action="store_true", help="only write results.json")
    parser.add_argument("--allow-partial", action="store_true",
                        help="load only the checkpoint tensors that fit the model (the rest stay untrained)")
    parser.add_argument("--json", metavar="DATASET_JSON",
                        help="COCO json listing the images: results.json then uses its image and category "
                             "ids, so that `instaseg eval --results` can score it (default: images 1..N)")
    parser.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=True,
                        help="skip unreadable images and list them at the end (the default); --no-skip-bad "
                             "stops at the first one, keeping the results written so far")
    add_model_options(parser)
    parser.add_argument("--tile", type=tile_argument, metavar="SIZE",
                        help="large images: predict on overlapping SIZE x SIZE tiles and merge (images only)")
    parser.add_argument("--int8", action="store_true",
                        help="backbone, FPN and head convolutions in int8 (CPU), calibrated on the first 8 input "
                             "images: faster, outputs differ slightly")
    parser.add_argument("--overlap", type=overlap_argument, default=0.2, metavar="FRAC",
                        help="with --tile: fraction of a tile shared with its neighbours (default 0.2)")


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """Image and video files named directly or found (non-recursively) in folders, sorted."""
    images, videos = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            images.extend(found)
        elif path.is_file():
            (videos if path.suffix.lower() in VIDEO_EXTENSIONS else images).append(path)
        else:
            raise InstasegError(f"{path}: no such file or folder")
    if not images and not videos:
        raise InstasegError(f"no images found in {', '.join(inputs)} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return images, videos


@dataclass(frozen=True)
class _Style:
    """How the overlays name and draw a model's detections."""

    names: list[str]  # class name of each label
    skeleton: tuple[tuple[int, int], ...] = ()  # 0-based keypoint pairs drawn as limbs
    keypoint_threshold: float = 0.0  # joints scoring above it are drawn

    def draw(self, image: Any, instances: Any) -> Any:
        from instaseg.viz.overlay import draw_detections

        return draw_detections(image, instances, self.names, self.skeleton, self.keypoint_threshold)


def run(args: argparse.Namespace) -> int:
    from instaseg.engine.checkpoint import checkpoint_categories, load_checkpoint
    from instaseg.evaluation.results_writer import JsonListWriter
    from instaseg.hub.outputs import keypoint_schema, keypoint_threshold
    from instaseg.hub.predictor import Predictor
    from instaseg.hub.pretrained import resolve_checkpoint

    images, videos = collect_inputs(args.inputs)
    if args.int8 and args.device != "cpu":
        raise InstasegError("--int8 runs on the CPU (PyTorch's quantized kernels): drop --device or --int8")
    out = ensure_writable_dir(args.out)
    checkpoint = resolve_checkpoint(args.weights or args.checkpoint)
    predictor = Predictor.from_checkpoint(checkpoint, args.device, args.score_threshold,
                                          allow_partial=args.allow_partial, overrides=args.overrides,
                                          max_detections=args.max_detections)
    if args.int8:
        _quantize(predictor.model, images)
    if args.tile:
        predictor.check_tiling()  # before any work: a keypoint model without masks cannot merge tiles
    payload = load_checkpoint(checkpoint)
    category_ids, names = checkpoint_categories(payload, predictor.model.num_classes)
    keypoints = keypoint_schema(payload, predictor.config)
    image_ids = list(range(1, len(images) + 1))
    if args.json:
        image_ids, category_ids, names, keypoints = _dataset_ids(args.json, images, names, keypoints)
    threshold = keypoint_threshold(predictor.config) if args.keypoint_threshold is None else args.keypoint_threshold
    style = _Style(names, keypoints.skeleton if keypoints is not None else (), threshold)
    # written image by image: a stop (a bad file, Ctrl-C) keeps what was done, as valid JSON
    with JsonListWriter(out / "results.json") as results, JsonListWriter(out / "images.json") as files:
        bad = _predict_images(predictor, list(zip(image_ids, images)), category_ids, style, out, args,
                              results, files)
    best_score = predictor.best_score  # of the images (the videos' detections are not in results.json)
    for video in videos:
        _predict_video(predictor, video, out / f"{video.stem}_overlay.mp4", style)
    print(f"{files.count} images, {results.count} detections -> {out / 'results.json'}"
          + ("" if args.no_overlays else f", overlays in {out}") + (f", {len(videos)} videos" if videos else ""))
    if files.count and results.count == 0:
        print(_nothing_kept_hint(best_score, args.score_threshold))
    if bad:
        listed = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
        print(f"skipped {len(bad)} unreadable image(s): {listed}")
    return 0


def _quantize(model, images: list[Path]) -> None:
    """``--int8``: the model's dense layers in int8, calibrated on the first input images."""
    from instaseg.engine.int8 import MAX_CALIBRATION_IMAGES, load_calibration_images, quantize_int8

    if not images:
        raise InstasegError("--int8 calibrates on the input images: give at least one image, not only videos")
    calibration = load_calibration_images(images)
    quantize_int8(model, calibration)
    print(f"int8: backbone, FPN and head convolutions quantized, calibrated on {len(calibration)} input image(s) "
          f"(at most {MAX_CALIBRATION_IMAGES})")


def _predict_images(predictor, items: list[tuple[int, Path]], category_ids: list[int], style: _Style,
                    out: Path, args: argparse.Namespace, results, files) -> list[str]:
    """Predict ``(image_id, path)`` items, appending to the ``results`` and ``files`` writers;
    returns the messages of the unreadable images skipped."""
    from tqdm import tqdm

    from instaseg.hub.predictor import as_image_tensor
    from instaseg.errors import DatasetError
    from instaseg.evaluation import instances_to_coco_results

    bad: list[str] = []
    for image_id, path in tqdm(items, desc="predict", unit="img", disable=not items):
        try:
            image = as_image_tensor(path)
        except DatasetError as error:
            if not args.skip_bad:
                done = f"{files.count} image{'' if files.count == 1 else 's'} done"
                raise InstasegError(f"{error}. Stopped with {done} (in {out / 'results.json'} and images.json); "
                                    "--skip-bad (the default) skips unreadable images") from None
            bad.append(str(error))
            tqdm.write(f"warning: skipping {error}", file=sys.stderr)
            continue
        instances = predictor.predict_tiled(image, args.tile, args.overlap) if args.tile else predictor(image)
        found = instances_to_coco_results(instances, image_id, category_ids)
        results.extend({**item, "file_name": path.name} for item in found)
        files.append({"id": image_id, "file_name": str(path), "height": image.shape[1], "width": image.shape[2]})
        if not args.no_overlays:
            style.draw(image, instances).save(out / f"{path.stem}.png")
    return bad


def _dataset_ids(json_path: str, images: list[Path], names: list[str], keypoints: KeypointSchema | None
                 ) -> tuple[list[int], list[int], list[str], KeypointSchema | None]:
    """Image ids of ``images``, the category ids / names of labels 0..C-1 from a COCO json (the
    label order of training on it), and its keypoint names and skeleton when it declares as many
    keypoints as the model predicts (else ``keypoints``, the checkpoint's). Images the json does
    not list are refused before any work."""
    from instaseg.data.coco import CocoDataset

    dataset = CocoDataset(json_path, Path(json_path).parent, skip_bad=True)  # annotations do not matter here
    if dataset.num_classes != len(names):
        raise InstasegError(f"the checkpoint predicts {len(names)} classes but {json_path} has {dataset.num_classes}")
    if list(dataset.category_names) != list(names) and not all(n.startswith("class_") for n in names):
        warn(f"the checkpoint's classes ({', '.join(names)}) are not named as {json_path}'s "
             f"({', '.join(dataset.category_names)}); label k is given the json's k-th category id")
    ids = dataset.image_ids_of_files(images)
    missing = [str(path) for path, image_id in zip(images, ids) if image_id is None]
    if missing:
        raise InstasegError(f"{len(missing)} image(s) are not in {json_path} (matched by file_name): "
                            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    declared = dataset.keypoint_schema
    if keypoints is not None and declared is not None and declared.num_keypoints == keypoints.num_keypoints:
        keypoints = declared
    return ids, list(dataset.category_ids), list(dataset.category_names), keypoints


def _nothing_kept_hint(best_score: float | None, threshold: float) -> str:
    """What to do when no detection passed ``--score-threshold``."""
    if best_score is None:
        return ("the model detected nothing at all, whatever the score (its own floor is "
                "model.inference.score_thresh: --set model.inference.score_thresh=0.01 lowers it)")
    suggestion = math.floor(best_score * 100) / 100
    return (f"no detection scored >= --score-threshold {threshold:g}; the best score was {best_score:.3f}: "
            f"lower the threshold, e.g. --score-threshold {suggestion:g}")


def _predict_video(predictor, source: Path, target: Path, style: _Style) -> None:
    """Overlay every frame of ``source`` and write ``target`` (needs the ``video`` extra)."""
    try:
        import imageio.v2 as imageio
    except ImportError:
        raise InstasegError("video input needs imageio and imageio-ffmpeg: pip install 'instaseg[video]'") from None
    import numpy as np
    from tqdm import tqdm

    reader = imageio.get_reader(source)
    fps = reader.get_meta_data().get("fps", 25)
    with imageio.get_writer(target, fps=fps, macro_block_size=1) as writer:
        for frame in tqdm(reader, desc=source.name, unit="frame", total=_frame_count(reader)):
            instances = predictor(np.asarray(frame)[..., :3])
            writer.append_data(np.asarray(style.draw(frame[..., :3], instances)))
    reader.close()


def _frame_count(reader: Any) -> int | None:
    """The video's number of frames for the progress bar, or None when it cannot be known (a stream).

    The ffmpeg reader's ``len()`` is ``sys.maxsize`` for most files (their header has no frame
    count); ``count_frames()`` asks ffmpeg to count the packets, without decoding.
    """
    try:
        count = reader.count_frames()
    except Exception:  # noqa: BLE001 - any reader or ffmpeg failure only costs the bar its total
        return None
    return count if isinstance(count, int) and count > 0 else None
