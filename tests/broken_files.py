"""Every kind of broken image or mask a dataset folder can hold, written for tests (real files on disk)."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A small PNG whose header claims width x height 8-bit grey pixels (1.6 G by default: far over PIL's
    limit), with one compressed row of data: what a decompression bomb looks like before it is decoded."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


def _encoded(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode=mode).save(out, format=fmt)
    return out.getvalue()


def image_bytes(kind: str, size: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
    if kind == "empty":
        return b""
    if kind == "truncated_jpeg":
        data = _encoded(rgb, "JPEG")
        return data[: len(data) // 2]
    if kind == "truncated_png":
        data = _encoded(rgb, "PNG")
        return data[: len(data) // 2]
    if kind == "bomb":
        return bomb_png()
    if kind == "bomb_1x":   # over PIL's limit but under twice it, where PIL only warns and would decode it
        return bomb_png(10_000, 10_000)
    if kind == "not_an_image":
        return b"<html>404 not found</html>"
    raise ValueError(kind)


IMAGE_KINDS = ("empty", "truncated_jpeg", "truncated_png", "bomb", "bomb_1x", "not_an_image", "symlink_loop")
MASK_KINDS = ("empty", "truncated_png", "bomb", "bomb_1x", "rgb_mode", "out_of_range", "symlink_loop")


def write_broken_image(path: Path, kind: str) -> Path:
    """Replace `path` (keeping its name) with a broken file of `kind`."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "symlink_loop":   # path -> path.loop -> path
        other = path.with_name(path.name + ".loop")
        os.symlink(other.name, path)
        os.symlink(path.name, other)
    else:
        path.write_bytes(image_bytes(kind))
    return path


def write_broken_mask(path: Path, kind: str, size: int = 64, bad_value: int = 200) -> Path:
    path = Path(path)
    if kind == "rgb_mode":
        path.unlink(missing_ok=True)
        path.write_bytes(_encoded(np.zeros((size, size, 3), np.uint8), "PNG"))
        return path
    if kind == "out_of_range":
        path.unlink(missing_ok=True)
        path.write_bytes(_encoded(np.full((size, size), bad_value, np.uint8), "PNG", "L"))
        return path
    return write_broken_image(path, kind)
