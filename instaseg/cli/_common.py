"""Checks shared by the sub-commands, run before any long work so that a bad path fails at once."""

from __future__ import annotations

from pathlib import Path

from instaseg.errors import InstasegError

__all__ = ["ensure_writable_dir"]


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
