"""Getting a published file into the cache: download (atomic, with a progress bar) and integrity check.

The cache folder is ``$INSTASEG_HOME`` (default ``$XDG_CACHE_HOME/instaseg``, i.e. ``~/.cache/instaseg``);
published files live in its ``weights/`` folder under the publisher's own file name, which is also
where a file downloaded by hand is picked up. A download is written to a hidden ``*.part`` file in
that folder and renamed only once complete and verified, so an interrupted download never leaves a
file that looks complete. A file whose checksum disagrees with the publisher's is refused and moved
aside (``<file>.bad``), never loaded.

``$INSTASEG_WEIGHTS_MIRROR`` (or ``mirror=``) fetches ``<mirror>/<file name>`` instead of the
publisher's URL: a local mirror, or the test server. ``$INSTASEG_OFFLINE=1`` never touches the network.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from instaseg.errors import WeightsFetchError
from instaseg.zoo.catalogue import WeightsEntry

__all__ = ["weights_home", "weights_dir", "source_url", "file_digest", "verify_file", "download_file", "fetch_file",
           "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 30.0  # seconds without a byte before a download gives up
_CHUNK = 1 << 20


def weights_home() -> Path:
    """``$INSTASEG_HOME``, else ``$XDG_CACHE_HOME/instaseg``, else ``~/.cache/instaseg``."""
    if os.environ.get("INSTASEG_HOME"):
        return Path(os.environ["INSTASEG_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "instaseg"


def weights_dir(home: str | Path | None = None) -> Path:
    """The folder that holds published files (and where a file downloaded by hand goes)."""
    return (Path(home) if home is not None else weights_home()) / "weights"


def source_url(entry: WeightsEntry, mirror: str | None = None) -> str:
    """The URL to fetch: the publisher's, or ``<mirror>/<file name>`` (``mirror`` or
    ``$INSTASEG_WEIGHTS_MIRROR``)."""
    mirror = mirror if mirror is not None else os.environ.get("INSTASEG_WEIGHTS_MIRROR", "")
    return f"{mirror.rstrip('/')}/{entry.file_name}" if mirror else entry.url


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of ``path`` (``"sha256"`` or ``"md5"``), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _where(entry: WeightsEntry, folder: Path) -> str:
    return (f"download it by hand from {entry.url} (listed in {entry.page}) and put it, named "
            f"{entry.file_name}, in {folder}, where it is picked up")


def _refuse(entry: WeightsEntry, path: Path, found: str, folder: Path) -> WeightsFetchError:
    """Move ``path`` aside as ``<file name>.bad`` and return the error to raise."""
    bad = folder / f"{entry.file_name}.bad"
    os.replace(path, bad)
    return WeightsFetchError(
        f"{entry.name}: {entry.file_name} failed its integrity check ({found}; the publisher's "
        f"{entry.integrity}): the file is corrupt, truncated or not the published one, and was moved aside to "
        f"{bad} without being loaded. Fetch it again, or {_where(entry, folder)}."
    )


def verify_file(entry: WeightsEntry, path: Path, folder: Path, digest: str | None = None) -> None:
    """Check ``path`` against the publisher's checksum (or size); refuse and move it aside if it fails.

    ``digest``: the file's hex digest when already computed (while downloading).
    """
    if entry.hash_prefix:
        digest = digest or file_digest(path, entry.hash_algorithm)
        if not digest.startswith(entry.hash_prefix):
            raise _refuse(entry, path, f"its {entry.hash_algorithm} is {digest[:16]}...", folder)
    elif entry.size_bytes is not None and path.stat().st_size != entry.size_bytes:
        raise _refuse(entry, path, f"it has {path.stat().st_size} bytes", folder)


class _CutOff(Exception):
    """The server closed the connection before the announced length."""


def _reason(error: BaseException) -> str:
    if isinstance(error, _CutOff):
        return str(error)
    if isinstance(error, http.client.IncompleteRead):
        return f"the connection closed mid-file ({len(error.partial)} bytes into a read)"
    if isinstance(error, http.client.HTTPException):
        return f"the connection broke ({type(error).__name__}: {error})"
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {error.reason}"
    reason = getattr(error, "reason", error)
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "the connection timed out"
    if isinstance(reason, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(reason, socket.gaierror):
        return f"the host name could not be resolved ({reason.strerror}; offline?)"
    return f"{type(reason).__name__}: {reason}"


def _copy_with_progress(response: BinaryIO, out: BinaryIO, total: int | None, algorithm: str, label: str,
                        progress: bool) -> tuple[int, str]:
    """Stream ``response`` into ``out``; returns (bytes written, hex digest). A tqdm bar shows size and ETA."""
    from tqdm import tqdm

    digest = hashlib.new(algorithm)
    written = 0
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress,
              leave=False) as bar:
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    return written, digest.hexdigest()


def download_file(entry: WeightsEntry, url: str, folder: Path, *, timeout: float = DEFAULT_TIMEOUT,
                  progress: bool = True) -> Path:
    """Download ``url`` into ``folder/<entry.file_name>`` atomically and verify it.

    Raises:
        WeightsFetchError: offline, refused, timed out, cut off mid-file (nothing is left behind but
            the error), or a checksum that disagrees (the file is moved aside as ``*.bad``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / entry.file_name
    fd, tmp_name = tempfile.mkstemp(prefix=f".{entry.file_name}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    request = urllib.request.Request(url, headers={"User-Agent": "instaseg"})
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            written, digest = _copy_with_progress(response, out, total, entry.hash_algorithm or "sha256",
                                                  entry.file_name, progress)
            if total is not None and written != total:
                raise _CutOff(f"the connection closed after {written} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
    except (OSError, http.client.HTTPException, _CutOff, ValueError) as error:  # URLError is an OSError
        tmp.unlink(missing_ok=True)
        raise WeightsFetchError(
            f"could not download {entry.name} from {url}: {_reason(error)}. Nothing was kept: run the command "
            f"again to retry, or {_where(entry, folder)}."
        ) from None
    except BaseException:  # Ctrl-C: no partial file may look complete
        tmp.unlink(missing_ok=True)
        raise
    verify_file(entry, tmp, folder, digest if entry.hash_prefix else None)
    os.replace(tmp, target)
    return target


def fetch_file(entry: WeightsEntry, *, home: str | Path | None = None, mirror: str | None = None,
               timeout: float = DEFAULT_TIMEOUT, progress: bool = True) -> Path:
    """The verified local copy of ``entry``'s file: from the cache folder (downloaded before, or put
    there by hand), else downloaded. ``$INSTASEG_OFFLINE=1`` turns a missing file into an error."""
    folder = weights_dir(home)
    target = folder / entry.file_name
    if target.is_file():
        verify_file(entry, target, folder)
        return target
    if os.environ.get("INSTASEG_OFFLINE", "") not in ("", "0"):
        raise WeightsFetchError(f"{entry.name} is not in the cache and INSTASEG_OFFLINE is set: "
                                f"{_where(entry, folder)}.")
    return download_file(entry, source_url(entry, mirror), folder, timeout=timeout, progress=progress)
