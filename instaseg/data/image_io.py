"""Reading images as RGB: every mode becomes 3-channel uint8, EXIF orientation applied."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from instaseg.errors import DatasetError, ImageTooLargeError, NotAnImageError

__all__ = ["decode_image", "read_image", "to_rgb_array", "IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Refuse images that declare more pixels than this (a "decompression bomb" declares a huge size in
# a tiny file to exhaust memory). 16k x 16k is far beyond any detection image.
MAX_IMAGE_PIXELS = 16384 * 16384


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> ``(H, W, 3)`` uint8 RGB, EXIF orientation applied.

    Grayscale, palette, RGBA (composited on black), CMYK and 16-bit images are converted; 16-bit
    values are scaled to 8 bits rather than clipped.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode == "F":
        array = np.clip(np.asarray(image, dtype=np.float64), 0, 255).astype(np.uint8)
        return np.repeat(array[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def read_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read ``path`` as ``(H, W, 3)`` uint8 RGB; a clear :class:`DatasetError` names a bad file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: image file is empty (0 bytes)")
    return decode_image(path, str(path), max_pixels)


def decode_image(source: str | Path | bytes | BinaryIO, name: str = "image",
                 max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a file, its bytes or a binary stream as ``(H, W, 3)`` uint8 RGB; ``name`` names it in errors.

    Raises:
        NotAnImageError: no decoder recognises the bytes.
        ImageTooLargeError: the header declares more than ``max_pixels`` pixels (refused before decoding).
        DatasetError: any other failure (a truncated or corrupt file).
    """
    if isinstance(source, bytes):
        if not source:
            raise NotAnImageError(f"{name}: empty (0 bytes), not an image")
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageTooLargeError(f"{name}: declares {width}x{height} pixels, more than the {max_pixels} "
                                             "allowed (a decompression bomb?)")
                image.load()
                return to_rgb_array(image)
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(f"{name}: refused as a decompression bomb: {error}") from None
    except UnidentifiedImageError:
        raise NotAnImageError(f"{name}: cannot read image: not a format Pillow recognises") from None
    except Exception as error:
        raise DatasetError(f"{name}: cannot read image ({type(error).__name__}: {error}); "
                           "the file may be truncated or not an image") from None
