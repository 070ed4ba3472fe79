"""Reading one image or one mask from disk, the same way in every layer.

A file that cannot be read raises SampleError naming the path; callers skip the sample and count it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


class SampleError(Exception):
    """One image or mask cannot be read. Callers skip the sample and count it (never a whole-run failure)."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def load_image(path: str | Path) -> np.ndarray:
    """Decode to uint8 HxWx3 RGB. EXIF orientation is NOT applied: masks are stored in raw pixel order (COCO, VOC)."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so truncation surfaces here and not later inside a worker
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise SampleError(path, "file does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SampleError(path, f"cannot decode image ({e})") from None


def load_mask(path: str | Path) -> np.ndarray:
    """Decode an index ('L') or palette ('P') PNG to its uint8 HxW label indices (never the palette colours)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "L"):
                return np.asarray(im, dtype=np.uint8).copy()
            if im.mode in ("I", "I;16", "I;16B", "I;16L"):
                arr = np.asarray(im)
                if arr.size and (arr.min() < 0 or arr.max() > 255):
                    raise SampleError(path, f"{im.mode} mask has values outside 0..255")
                return arr.astype(np.uint8)
            raise SampleError(path, f"mask mode is {im.mode!r}; expected an index ('L') or palette ('P') PNG "
                                    "(colour-coded RGB masks must be converted to class indices first)")
    except FileNotFoundError:
        raise SampleError(path, "file does not exist") from None
    except SampleError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SampleError(path, f"cannot decode mask ({e})") from None
