"""An uploaded image, from a request body to RGB pixels, or an :class:`UploadError` with its 4xx status.

The body is read in chunks and refused once it passes ``max_bytes`` (a declared ``Content-Length``
over the limit is refused before reading), so an upload never holds more than the limit in memory.
A multipart body (a form with one file field) is parsed by Starlette's parser from the same
limited stream; any other body is the image's bytes. Decoding refuses non-images (415), images
declaring more than ``max_pixels`` (413: a decompression bomb is refused from its header) and
truncated or corrupt files (400).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import numpy as np
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from instaseg.data.image_io import decode_image
from instaseg.errors import DatasetError, ImageTooLargeError, NotAnImageError

__all__ = ["UploadError", "read_upload", "decode_upload"]

# After refusing an oversized body, read (and drop) up to this much more of it for at most this
# long, so that a client still sending gets the 413 answer instead of a reset connection (and one
# that sends nothing cannot hold the request open).
_DRAIN_BYTES = 32 * 1024 * 1024
_DRAIN_SECONDS = 1.0


class UploadError(Exception):
    """A request whose image cannot be used: ``status`` (4xx) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def _limited(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks; :class:`UploadError` 413 once more than ``max_bytes`` have come."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_bytes:
            await _drain(request, total)
            raise UploadError(413, f"the upload is over the {max_bytes} byte limit (--max-upload-mb)")
        yield chunk


async def _drain(request: Request, seen: int) -> None:
    with anyio.move_on_after(_DRAIN_SECONDS):
        try:
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > _DRAIN_BYTES:
                    return
        except Exception:  # noqa: BLE001 - the client went away: nothing left to drain
            return


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """``(bytes, name)`` of the image in the request body (multipart file field or raw bytes)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        await _drain(request, 0)
        raise UploadError(413, f"the upload declares {declared} bytes, over the {max_bytes} byte limit "
                               "(--max-upload-mb)")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return await _multipart_file(request, max_bytes)
    data = b"".join([chunk async for chunk in _limited(request, max_bytes)])
    if not data:
        raise UploadError(400, "the request has no body: send the image as a multipart file field or as raw bytes")
    return data, "upload"


async def _multipart_file(request: Request, max_bytes: int) -> tuple[bytes, str]:
    """The one file of a multipart form (spooled by Starlette, read back here)."""
    parser = MultiPartParser(request.headers, _limited(request, max_bytes), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise UploadError(400, f"malformed multipart form: {error.message}") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise UploadError(400, "the multipart form has no file field (send the image as 'file')")
        data = await files[0].read()
        return data, files[0].filename or "upload"
    finally:
        await form.close()


def decode_upload(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB, or :class:`UploadError` 415 (not an image), 413 (too many pixels)
    or 400 (truncated or corrupt)."""
    try:
        return decode_image(data, name, max_pixels)
    except NotAnImageError as error:
        raise UploadError(415, str(error)) from None
    except ImageTooLargeError as error:
        raise UploadError(413, f"{error} (--max-pixels)") from None
    except DatasetError as error:
        raise UploadError(400, str(error)) from None
