"""``instaseg data synth | stats | show``: make, summarise and look at COCO-format datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from instaseg.cli._common import ensure_writable_dir
from instaseg.errors import InstasegError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = sub.add_parser("synth", help="write the built-in synthetic dataset (COCO format)")
    synth.add_argument("--out", required=True, help="output folder (train/, val/, annotations/)")
    synth.add_argument("--images", type=int, default=200, help="number of images in all (default 200)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    synth.add_argument("--val-fraction", type=float, default=0.2)
    synth.add_argument("--difficulty", choices=["standard", "hard", "crowded"], default="standard",
                       help="'hard': thin structures, heavy occlusion, many small objects; "
                            "'crowded': 200-300 small objects per image")
    synth.add_argument("--keypoints", action="store_true",
                       help="stick figures with 13 named joints and a skeleton instead of shapes "
                            "(COCO person_keypoints format; --difficulty does not apply)")
    for name, text in (("stats", "counts per class and sizes"), ("show", "PNG overlays of the ground truth")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", required=True, help="COCO instances json")
        p.add_argument("--images", required=True, help="image folder")
        p.add_argument("--skip-bad", action="store_true",
                       help="skip bad annotations/images (counted and reported) instead of stopping")
        if name == "show":
            p.add_argument("--out", required=True,
                           help="folder for the PNG overlays, named as the images (sub-folders kept)")
            p.add_argument("--max-images", type=int, default=16, metavar="N",
                           help="draw the first N images of the json (default 16)")
            p.add_argument("--no-labels", action="store_true", help="masks and boxes only, no class names")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        from instaseg.data.synthetic import generate_synthetic_dataset
        from instaseg.data.synthetic_keypoints import generate_keypoint_dataset

        ensure_writable_dir(args.out)
        try:
            if args.keypoints:
                data = generate_keypoint_dataset(args.out, num_images=args.images, seed=args.seed,
                                                 image_size=args.size, val_fraction=args.val_fraction, progress=True)
            else:
                data = generate_synthetic_dataset(args.out, num_images=args.images, seed=args.seed,
                                                  image_size=args.size, val_fraction=args.val_fraction,
                                                  difficulty=args.difficulty, progress=True)
        except ValueError as error:
            raise InstasegError(str(error)) from None
        print(f"train: {data.train_annotations} ({data.train_images})")
        print(f"val:   {data.val_annotations} ({data.val_images})")
        print(f"classes: {', '.join(data.category_names)}")
        return 0
    from instaseg.data.coco import CocoDataset

    if args.data_command == "show":
        ensure_writable_dir(args.out)
    dataset = CocoDataset(args.json, args.images, skip_bad=args.skip_bad)
    code = _stats(dataset) if args.data_command == "stats" else \
        _show(dataset, Path(args.out), args.max_images, labels=not args.no_labels)
    if args.skip_bad:
        print(f"{args.json}: {dataset.skipped_summary}")  # after show, also the images found unreadable
    return code


def _stats(dataset) -> int:
    print(f"{len(dataset)} images, {dataset.num_classes} classes")
    counts = dataset.class_counts()
    width = max([len(n) for n in counts] + [5])
    print(f"{'class':<{width}}  instances")
    for name, count in counts.items():
        print(f"{name:<{width}}  {count}")
    for key, value in dataset.size_stats().items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    if dataset.keypoint_names is not None:
        print(f"keypoints: {dataset.num_keypoints} ({', '.join(dataset.keypoint_names)}); "
              f"skeleton: {len(dataset.skeleton)} limbs")
    return 0


def _show(dataset, out: Path, max_images: int, labels: bool = True) -> int:
    from instaseg.viz.overlay import draw_instances

    out.mkdir(parents=True, exist_ok=True)
    count = min(max_images, len(dataset))
    written: set[Path] = set()
    for index in range(count):
        sample = dataset[index]
        t = sample.targets
        picture = draw_instances(sample.image, t.boxes, t.labels, t.masks, class_names=dataset.category_names,
                                 show_labels=labels, keypoints=t.keypoints, skeleton=dataset.skeleton)
        target = out / Path(dataset.file_name(index)).with_suffix(".png")  # x.jpg -> x.png, sub-folders kept
        if target in written:  # x.jpg and x.png side by side
            target = target.with_name(f"{target.stem}_{sample.image_id}.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.save(target)
        written.add(target)
    print(f"wrote {count} overlays to {out}" + (f" (the first {count} of {len(dataset)}: --max-images N for more)"
                                                if count < len(dataset) else ""))
    return 0
