"""``instaseg report RUN_DIR``: redraw every picture of a run folder from its files (no model)."""

from __future__ import annotations

import argparse
from pathlib import Path

from instaseg.errors import InstasegError
from instaseg.evaluation.per_class import SORT_KEYS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (instaseg train --out, instaseg eval --out)")
    parser.add_argument("--out", help="write the pictures there instead of into RUN_DIR")
    parser.add_argument("--sort", choices=SORT_KEYS, default="ap", help="row order of per_class.csv (default ap)")


def run(args: argparse.Namespace) -> int:
    from instaseg.cli._common import ensure_writable_dir
    from instaseg.engine.run_report import render_run_folder

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise InstasegError(f"{run_dir}: no such folder")
    out = ensure_writable_dir(args.out) if args.out else run_dir
    written = render_run_folder(run_dir, out, sort=args.sort)
    if not written:
        raise InstasegError(f"{run_dir} holds nothing to draw (no metrics.jsonl, no plot_data/): is it a run folder?")
    for path in written:
        print(path)
    print(f"{len(written)} files in {out}")
    return 0
