"""Reading one image or one mask from disk, the same way in every layer.

A file that cannot be read raises SampleError naming the path; callers skip the sample and count it. That
covers empty and truncated files, undecodable modes, symlink loops, and decompression bombs: a header that
claims more pixels than PIL's limit (Image.MAX_IMAGE_PIXELS) is refused before anything is decoded (PIL
itself only warns up to twice the limit).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image


def _open_checked(path: str | Path) -> Image.Image:
    with warnings.catch_warnings():   # PIL's bomb warning: refused just below, with the path
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and im.size[0] * im.size[1] > limit:
        im.close()
        raise SampleError(path, f"{im.size[0]}x{im.size[1]} pixels is over PIL's limit of {limit} "
                                f"(a decompression bomb, or an image far too large to train on)")
    return im


def check_classes(mask: np.ndarray, num_classes: int, path: str | Path) -> np.ndarray:
    """`mask` when every value is a class id below `num_classes` or IGNORE, else a SampleError (a loss would
    index out of range on it)."""
    from orchestrator.core.masks import IGNORE

    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE)]
    if bad.size:
        raise SampleError(path, f"mask has class values {bad[:5].tolist()} outside 0..{num_classes - 1} "
                                f"(and not {IGNORE}, ignore)")
    return mask


class SampleError(Exception):
    """One image or mask cannot be read. Callers skip the sample and count it (never a whole-run failure)."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def load_image(path: str | Path) -> np.ndarray:
    """Decode to uint8 HxWx3 RGB. EXIF orientation is NOT applied: masks are stored in raw pixel order (COCO, VOC)."""
    try:
        with _open_checked(path) as im:
            im.load()  # decode now, so truncation surfaces here and not later inside a worker
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise SampleError(path, "file does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SampleError(path, f"cannot decode image ({e})") from None


def load_mask(path: str | Path) -> np.ndarray:
    """Decode an index ('L') or palette ('P') PNG to its uint8 HxW label indices (never the palette colours)."""
    try:
        with _open_checked(path) as im:
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
