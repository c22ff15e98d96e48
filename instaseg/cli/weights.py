"""``instaseg weights list | fetch | info``: the published weights instaseg knows, and the cache.

Files are fetched from the publishers' URLs into ``$INSTASEG_HOME/weights`` (default
``~/.cache/instaseg/weights``), checked against the publisher's checksum, and converted once into
instaseg checkpoints kept beside them.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="every catalogue entry: preset, publisher AP, licence, cached or not")
    listing.add_argument("--kind", choices=("detector", "backbone"), help="only whole models, or only backbones")
    fetch = sub.add_parser("fetch", help="download, check and convert weights now (later uses need no network)")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    info = sub.add_parser("info", help="everything about one entry: URL, check, licence, convention, cache paths")
    info.add_argument("name", metavar="NAME")


def run(args: argparse.Namespace) -> int:
    return {"list": _list, "fetch": _fetch, "info": _info}[args.action](args)


def _ap(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _list(args: argparse.Namespace) -> int:
    from instaseg.zoo import cache_state, list_entries, weights_dir

    entries = [e for e in list_entries() if args.kind in (None, e.kind)]
    rows = [("NAME", "PRESET / BACKBONE", "PUBLISHER", "BOX AP", "MASK AP", "KP AP", "LICENCE", "CACHED")]
    rows += [(e.name, e.preset, e.publisher.split(" (")[0], _ap(e.box_ap), _ap(e.mask_ap), _ap(e.keypoint_ap),
              e.license.split(" (")[0], cache_state(e) or "-") for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\nAP: the publisher's own COCO figures (val2017; YOLACT: test-dev mask mAP). Cache: {weights_dir()}")
    print("Start from one: instaseg train --weights NAME ...; ImageNet backbones: --set model.backbone.weights=NAME")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from instaseg.hub.pretrained import checkpoint_for
    from instaseg.zoo import backbone_weights_file, get_entry

    entries = [get_entry(name) for name in args.names]  # every name checked before any download
    for entry in entries:
        path = checkpoint_for(entry) if entry.kind == "detector" else backbone_weights_file(entry.name)
        print(f"{entry.name}: {path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from instaseg.zoo import cache_state, converted_path, get_entry, source_url, weights_dir

    entry = get_entry(args.name)
    folder = weights_dir()
    fields = [
        ("name", entry.name), ("publisher", entry.publisher), ("kind", entry.kind),
        ("preset" if entry.kind == "detector" else "backbone", entry.preset), ("url", entry.url),
        ("fetched from", source_url(entry)) if source_url(entry) != entry.url else None,
        ("listed in", entry.page), ("file name", entry.file_name), ("integrity", entry.integrity),
        ("licence", entry.license),
        ("publisher AP", f"box {_ap(entry.box_ap)}, " + (f"keypoint {_ap(entry.keypoint_ap)}" if entry.keypoint_ap
                          is not None else f"mask {_ap(entry.mask_ap)}") + f" ({entry.ap_split})")
        if entry.kind == "detector" else None,
        ("input", entry.input_convention), ("converter", entry.converter),
        ("notes", entry.notes) if entry.notes else None,
        ("cached", cache_state(entry) or "no"), ("file", str(folder / entry.file_name)),
        ("converted", str(converted_path(entry))) if entry.kind == "detector" else None,
        ("use", f"--weights {entry.name}" if entry.kind == "detector" else
         f"--set model.backbone.weights={entry.name}"),
    ]
    for key, value in filter(None, fields):
        print(f"{key + ':':14s}{value}")
    print(f"\nWithout network: download {entry.url} by hand and put it, named {entry.file_name}, in {folder}.")
    return 0
