"""``instaseg train``: train a preset on COCO-format data (single process, or DDP under torchrun)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from instaseg.cli._common import add_model_options, warn


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="model preset (see `instaseg presets`); with --weights, the weights' own")
    parser.add_argument("--weights", metavar="NAME_OR_PATH",
                        help="start from these weights: a catalogue name (`instaseg weights list`) or an instaseg "
                             "checkpoint; tensors sized by another number of classes are re-initialised")
    parser.add_argument("--train-json", required=True, help="COCO instances json of the training set")
    parser.add_argument("--train-images", required=True, help="image folder of the training set")
    parser.add_argument("--val-json", help="COCO json of a validation set (periodic and final evaluation)")
    parser.add_argument("--val-images", help="image folder of the validation set")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, metrics.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.max_iter=500 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt exactly")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the GPU if there is one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip bad annotations/images (counted and reported at the end) instead of stopping")
    add_model_options(parser, with_set=False)


def run(args: argparse.Namespace) -> int:
    from instaseg.cli._common import ensure_writable_dir
    from instaseg.config.budget import crowding_warnings, with_max_detections
    from instaseg.config.io import apply_overrides
    from instaseg.config.presets import get_preset
    from instaseg.data.coco import CocoDataset
    from instaseg.engine.distributed import get_launch_rank
    from instaseg.hub.training import train_on_dataset
    from instaseg.errors import ConfigError

    if (args.val_json is None) != (args.val_images is None):
        raise ConfigError("give both --val-json and --val-images, or neither")
    if args.preset is None and args.weights is None:
        raise ConfigError("give --preset (train from scratch or from ImageNet backbone weights) or --weights "
                          "(start from a whole model: `instaseg weights list`)")
    init, config = _starting_point(args) if args.weights else (None, get_preset(args.preset))
    ensure_writable_dir(args.out, "run folder")
    train_set = CocoDataset(args.train_json, args.train_images, skip_bad=args.skip_bad)
    # num_classes comes from the data (set here, in one place), before overrides can refine it
    config = replace(config, model=replace(config.model, num_classes=train_set.num_classes))
    config = _fit_keypoints(config, train_set.num_keypoints, args.train_json)
    config = _fit_training_caps(config, train_set.max_instances_per_image(), args.train_json)  # --set wins
    config = apply_overrides(config, args.overrides)
    if config.model.num_classes != train_set.num_classes:
        raise ConfigError(f"model.num_classes={config.model.num_classes} but {args.train_json} has "
                          f"{train_set.num_classes} categories")
    if args.max_detections is not None:
        config = with_max_detections(config, args.max_detections)
    config = _backbone_weights(config, init is not None)
    val_set = CocoDataset(args.val_json, args.val_images, skip_bad=args.skip_bad) if args.val_json else None
    for dataset, path in ((train_set, args.train_json), (val_set, args.val_json)):
        if dataset is not None and get_launch_rank() == 0:
            for message in crowding_warnings(dataset.max_instances_per_image(), config, where=path):
                warn(message)
    note = " ".join(([f"--weights {args.weights}"] if args.weights else []) + args.overrides) or None
    summary = train_on_dataset(config, train_set, args.out, val_dataset=val_set, resume=args.resume,
                               overrides_note=note, progress=not args.no_progress, device=args.device,
                               init_weights=init)
    if get_launch_rank() == 0:  # under torchrun, rank 0 alone reports
        if args.skip_bad:  # images found bad inside DataLoader workers are counted (and warned) there
            for name, dataset in (("train", train_set), ("val", val_set)):
                if dataset is not None:
                    print(f"{name} data {dataset.json_path}: {dataset.skipped_summary}")
        print(f"{summary['status']} at iteration {summary['iteration']}/{summary['max_iter']} "
              f"in {summary['seconds']:.0f} s; last checkpoint {summary['last_checkpoint']}")
    return 0 if summary["status"] == "finished" else 130


def _fit_keypoints(config, num_keypoints: int, where: str):
    """A keypoint model's ``num_keypoints`` from the data (as num_classes), or a clear error when the
    data has no keypoints."""
    from instaseg.errors import ConfigError

    head = getattr(config.model, "keypoint_head", None)
    if head is None:
        return config
    if num_keypoints == 0:
        raise ConfigError(f"{config.name} predicts keypoints but {where} declares none (a COCO keypoint json "
                          f"has 'keypoints' names in its categories and per annotation)")
    return replace(config, model=replace(config.model, keypoint_head=replace(head, num_keypoints=num_keypoints)))


def _fit_training_caps(config, max_instances: int, where: str):
    """The config with Mask R-CNN's training caps raised for crowded data
    (:func:`instaseg.config.budget.with_training_budget`), saying which changed."""
    from instaseg.config.budget import training_caps, with_training_budget
    from instaseg.engine.distributed import get_launch_rank

    fitted = with_training_budget(config, max_instances)
    before, after = training_caps(config), training_caps(fitted)
    changes = [f"{key} {before[key]} -> {after[key]}" for key in after if after[key] != before[key]]
    if changes and get_launch_rank() == 0:
        print(f"{where} has images with up to {max_instances} instances: training caps raised to learn them "
              f"({', '.join(changes)}; --set KEY=VALUE chooses otherwise)")
    return fitted


def _starting_point(args: argparse.Namespace):
    """``--weights``: (the instaseg checkpoint to start from, the config its model is built from).

    A catalogue name is fetched and converted first; the config is the weights' own (the publisher's
    conventions included), so --preset may only name the preset they were made for.
    """
    from instaseg.config.io import config_from_dict
    from instaseg.engine.checkpoint import load_checkpoint
    from instaseg.hub.build import config_for_weights, without_backbone_weights
    from instaseg.hub.pretrained import resolve_checkpoint

    path = resolve_checkpoint(args.weights)
    config = config_for_weights(config_from_dict(load_checkpoint(path)["config"]), args.preset,
                                source=f"--weights {args.weights}")
    return path, without_backbone_weights(config)


def _backbone_weights(config, whole_model: bool):
    """ImageNet weights in model.backbone.weights: the conventions they need, and the file fetched now
    (before any training starts). With --weights the whole model, backbone included, comes from there."""
    from instaseg.errors import ConfigError
    from instaseg.zoo import apply_backbone_conventions, backbone_weights_file

    if not config.model.backbone.weights:
        return config
    if whole_model:
        raise ConfigError("--weights initialises the whole model, backbone included: leave model.backbone.weights "
                          "unset")
    config, notes = apply_backbone_conventions(config)
    for note in notes:
        print(f"model.backbone.weights={config.model.backbone.weights}: set {note}")
    backbone_weights_file(config.model.backbone.weights)
    return config
