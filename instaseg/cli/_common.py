"""Checks shared by the sub-commands, run before any long work so that a bad path fails at once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from instaseg.errors import InstasegError

__all__ = ["ensure_writable_dir", "add_model_options", "warn"]


def ensure_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` (and parents) and prove it writable by creating and deleting a file in it.

    Raises:
        InstasegError: naming the folder and the system's reason (a file in the way, no permission,
            read-only file system), said before minutes of training or prediction are spent.
    """
    path = Path(path)
    probe = path / ".instaseg_write_test"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as error:
        reason = error.strerror or str(error)
        raise InstasegError(f"cannot write to {what} {path}: {reason}; choose a folder you can write to") from None
    return path


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (config overrides of the model), into ``args.overrides``."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value of the model, e.g. --set model.inference.score_thresh=0.3 "
                             "(repeatable)")


def add_model_options(parser: argparse.ArgumentParser, with_set: bool = True) -> None:
    """``--set KEY=VALUE`` (config overrides of the loaded model) and ``--max-detections N``."""
    if with_set:
        add_set_option(parser)
    parser.add_argument("--max-detections", type=int, metavar="N",
                        help="let N objects per image through: raises every cap on the way (RPN proposals, "
                             "Fast NMS candidates, detections per image, COCO maxDets)")


def warn(message: str) -> None:
    """A warning for the person running the command, on stderr."""
    print(f"warning: {message}", file=sys.stderr)
