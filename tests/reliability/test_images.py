"""Bad and unusual image files: each bad one gives a DatasetError naming the file; every mode becomes RGB.

Grayscale, RGBA, 16-bit, EXIF rotation and a size disagreeing with the json are covered in
tests/data/test_coco.py; this file adds the rest of issue 8's image list.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from instaseg.data.image_io import MAX_IMAGE_PIXELS, read_image
from instaseg.errors import DatasetError


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nothere\.png: image file not found"):
        read_image(tmp_path / "nothere.png")


def test_zero_byte_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty\.jpg: image file is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_named(tmp_path: Path, fmt: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DatasetError, match=rf"cut\.{fmt.lower()}: cannot read image .*truncated or not an image"):
        read_image(path)


def test_text_file_with_an_image_name_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("these are not pixels\n" * 10)
    with pytest.raises(DatasetError, match=r"notes\.png: cannot read image"):
        read_image(tmp_path / "notes.png")


def _with_declared_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR claiming ``width x height`` (CRC fixed, pixel data unchanged)."""
    start = 8 + 8  # signature, then the IHDR chunk's length and type
    ihdr = struct.pack(">II", width, height) + png[start + 8:start + 13]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return png[:start] + ihdr + crc + png[start + 17:]


@pytest.mark.parametrize("side, pil_guard", [
    (10000, True),  # 1e8 pixels: past PIL's warning limit (89e6), which read_image makes an error
    (60000, False),  # 3.6e9 pixels with PIL's own guard switched off (Image.MAX_IMAGE_PIXELS = None,
                     # as some programs do to open huge scans): read_image's limit still refuses it
], ids=["pil_warning_limit", "pil_guard_off"])
def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, monkeypatch, side: int,
                                                       pil_guard: bool) -> None:
    path = tmp_path / "bomb.png"  # a few hundred bytes declaring side x side pixels
    path.write_bytes(_with_declared_size(_png_bytes(np.zeros((4, 4, 3), np.uint8)), side, side))
    assert path.stat().st_size < 1000
    if not pil_guard:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
        assert side * side > MAX_IMAGE_PIXELS
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size))  # never decode
    with pytest.raises(DatasetError, match=r"bomb\.png: .*decompression bomb"):
        read_image(path)
    assert decoded == []  # refused from the header, before any pixel memory was allocated


def test_palette_image_becomes_its_colours(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.flatten().tolist())
    image.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    expected = np.zeros((5, 7, 3), np.uint8)
    for y in range(5):  # reference: look every pixel up in the palette by hand
        for x in range(7):
            expected[y, x] = palette[indices[y, x]]
    assert out.dtype == np.uint8 and np.array_equal(out, expected)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    cmyk = np.random.default_rng(2).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.jpg", quality=100)
    stored = np.asarray(Image.open(tmp_path / "c.jpg"), dtype=np.float64)  # as decoded (JPEG is lossy)
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    # reference: the uncalibrated CMYK -> RGB, r = (255 - c)(255 - k) / 255, computed here by hand
    expected = (255.0 - stored[..., :3]) * (255.0 - stored[..., 3:]) / 255.0
    assert np.abs(out.astype(np.float64) - expected).max() <= 1.0


def test_grayscale_alpha_image_is_composited(tmp_path: Path) -> None:
    la = np.random.default_rng(3).integers(0, 256, (4, 5, 2), dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png").astype(np.float64)
    expected = la[..., 0].astype(np.float64) * la[..., 1] / 255.0
    for channel in range(3):
        assert np.abs(out[..., channel] - expected).max() <= 1.0
