"""Label masks: the ignore value, the Pascal VOC colour map, and the PNG codec of index masks.

Every layer shares these: datasets write masks, the labeling stage stores teacher labels as PNG bytes,
workers decode them, and pictures colour them.
"""
from __future__ import annotations

import functools
import io

import numpy as np

IGNORE = 255  # mask value that no loss or metric counts (VOC's boundary band, crop padding, cut-off labels)


@functools.lru_cache(maxsize=1)
def voc_palette() -> tuple[int, ...]:
    """The standard Pascal VOC colour map (256 RGB triples, flattened): class k's colour from the bits of k."""
    pal = []
    for k in range(256):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return tuple(pal)


def colorize(label: np.ndarray) -> np.ndarray:
    """HxW class ids -> HxWx3 colours of the VOC palette (255 = ignore in VOC's boundary colour)."""
    colours = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return colours[label.astype(np.uint8)]


def encode_png(array: np.ndarray) -> bytes:
    """uint8 HxW (labels or confidences) -> a greyscale PNG, fast to write (compress level 1)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))
