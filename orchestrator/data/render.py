"""Drawing for the `shapes` benchmark: one scene -> (RGB image, label map). Pure: numpy + PIL, no file I/O.

Why it looks the way it does (docs/method.md §8):
- *Shape must matter, colour must not suffice*: each class has a preferred hue that 80% of its objects use,
  and every distractor borrows the hue of the target class it resembles (ellipse ~ disk, rectangle ~ square,
  trapezoid ~ triangle, star ~ cross, crescent ~ ring). A student taught by few labels leans on colour and
  so calls a distractor a target; a teacher that knows the wider vocabulary has learned to look at shape.
- *Style is a continuous knob*: a scene is drawn with a style shift s in [0, 1]. s = 0 is the in-distribution
  look (smooth low-frequency muted backgrounds, saturated objects, light grain); s = 1 is an alien look (busy
  high-frequency saturated backgrounds, washed-out colour-cast objects, heavy grain). Every style parameter is a
  linear blend of its ID and alien value, so a small s gives a mild shift.
- Objects are rasterised at 4x and box-filtered, which gives anti-aliased edges. Pixels whose coverage is
  ambiguous (between 25% and 75%) are labelled 255 = ignore, like the boundary band of Pascal VOC masks.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from orchestrator.core.masks import IGNORE

SUPERSAMPLE = 4

# Shape kind per label id (source vocabulary order; id 0 = background). Targets first, then distractors.
KINDS: tuple[str, ...] = (
    "background", "disk", "square", "triangle", "cross", "ring",
    "ellipse", "rectangle", "trapezoid", "star", "crescent",
)
# Preferred hue per kind; a distractor uses the hue of the target it resembles.
_HUE = {"disk": 0.0, "square": 0.6, "triangle": 0.33, "cross": 0.14, "ring": 0.8}
_HUE.update(ellipse=_HUE["disk"], rectangle=_HUE["square"], trapezoid=_HUE["triangle"],
            star=_HUE["cross"], crescent=_HUE["ring"])
# Share of objects painted in their class hue; the rest get a random hue. High enough that a student
# trained on few labels leans on colour (and so calls a same-hued distractor a target), low enough that
# colour alone never suffices.
CLASS_HUE_PROB = 0.8


@dataclass(frozen=True)
class Content:
    """What a domain's scenes contain. `class_probs[k]` = probability that an object has label id k+1."""

    num_objects: tuple[int, int]  # inclusive range
    num_clutter: tuple[int, int]  # inclusive range of background junk (lines, dots), labelled background
    radius: tuple[float, float]   # object radius as a fraction of the image size, sampled log-uniformly
    class_probs: tuple[float, ...]


def _blend(rng: np.random.Generator, s: float, id_range: tuple[float, float], alien: tuple[float, float]) -> float:
    """One style parameter: the same quantile u of the ID range and of the alien range, blended by s."""
    u = rng.random()
    lo = (1 - s) * id_range[0] + s * alien[0]
    hi = (1 - s) * id_range[1] + s * alien[1]
    return lo + u * (hi - lo)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32)


def _background(rng: np.random.Generator, size: int, s: float) -> np.ndarray:
    """Two colours of one hue mixed by a smooth random field; higher s = finer, more saturated, more contrast."""
    cells = int(round(_blend(rng, s, (3, 5), (12, 18))))
    sat = _blend(rng, s, (0.05, 0.25), (0.45, 0.85))
    contrast = _blend(rng, s, (0.10, 0.22), (0.35, 0.55))
    hue, val = rng.random(), rng.uniform(0.35, 0.65)
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), np.float32) / 255.0
    c1 = _hsv(hue, sat, val - contrast / 2)
    c2 = _hsv(hue + rng.normal(0, 0.05), sat, val + contrast / 2)
    return c1 * (1 - field[..., None]) + c2 * field[..., None]


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, theta: float) -> list[tuple[float, float]]:
    c, s = math.cos(theta), math.sin(theta)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _regular(n: int, r: float, inner: float | None = None) -> list[tuple[float, float]]:
    """Regular n-gon with circumradius r, or an n-pointed star when `inner` (inner radius) is given."""
    if inner is None:
        return [(r * math.cos(2 * math.pi * k / n), r * math.sin(2 * math.pi * k / n)) for k in range(n)]
    pts = []
    for k in range(2 * n):
        rad = r if k % 2 == 0 else inner
        pts.append((rad * math.cos(math.pi * k / n), rad * math.sin(math.pi * k / n)))
    return pts


def _draw_kind(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, theta: float) -> None:
    """Draw one shape (coordinates already supersampled) as 255 on a black 'L' canvas."""
    def disk(x: float, y: float, rad: float, fill: int) -> None:
        draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=fill)

    if kind == "disk":
        disk(cx, cy, r, 255)
    elif kind == "ring":
        disk(cx, cy, r, 255)
        disk(cx, cy, 0.55 * r, 0)
    elif kind == "crescent":
        disk(cx, cy, r, 255)
        disk(cx + 0.5 * r * math.cos(theta), cy + 0.5 * r * math.sin(theta), 0.85 * r, 0)
    else:
        a = 0.32 * r
        local = {
            "square": lambda: _regular(4, r),
            "ellipse": lambda: [(r * math.cos(t), 0.55 * r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 32, False)],
            "triangle": lambda: _regular(3, 1.1 * r),
            "star": lambda: _regular(5, 1.1 * r, inner=0.45 * r),
            "rectangle": lambda: [(-r, -0.45 * r), (r, -0.45 * r), (r, 0.45 * r), (-r, 0.45 * r)],
            "trapezoid": lambda: [(-r, 0.6 * r), (r, 0.6 * r), (0.45 * r, -0.6 * r), (-0.45 * r, -0.6 * r)],
            "cross": lambda: [(a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r),
                              (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a), (-a, -r)],
        }
        if kind not in local:
            raise ValueError(f"unknown shape kind {kind!r}; known: {', '.join(KINDS[1:])}")
        draw.polygon(_rotate(local[kind](), cx, cy, theta), fill=255)


Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (pixels, end-exclusive)


def _box(size: int, x0: float, y0: float, x1: float, y1: float) -> Box:
    """Pixel box covering a float extent, clipped to the image; drawing only inside it keeps generation fast."""
    return (max(0, math.floor(x0) - 1), max(0, math.floor(y0) - 1),
            min(size, math.ceil(x1) + 2), min(size, math.ceil(y1) + 2))


def _coverage(box: Box, paint) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] over `box`: `paint(draw, ox, oy, k)` draws at k-times resolution."""
    k = SUPERSAMPLE
    w, h = box[2] - box[0], box[3] - box[1]
    canvas = Image.new("L", (w * k, h * k), 0)
    paint(ImageDraw.Draw(canvas), box[0] * k, box[1] * k, k)
    return np.asarray(canvas.resize((w, h), Image.BOX), np.float32) / 255.0


def shape_alpha(kind: str, size: int, cx: float, cy: float, r: float, theta: float) -> tuple[np.ndarray, Box]:
    """Coverage of one shape centred at (cx, cy) with radius r pixels, over the box it can touch."""
    ext = 1.2 * r
    box = _box(size, cx - ext, cy - ext, cx + ext, cy + ext)
    return _coverage(box, lambda d, ox, oy, k: _draw_kind(d, kind, cx * k - ox, cy * k - oy, r * k, theta)), box


def _clutter_alpha(rng: np.random.Generator, size: int) -> tuple[np.ndarray, Box]:
    """A thin line or a small dot: junk that is part of the background class."""
    x, y = rng.uniform(0, size, 2)
    if rng.random() < 0.6:
        length, ang = rng.uniform(0.1, 0.4) * size, rng.uniform(0, math.pi)
        x2, y2, width = x + length * math.cos(ang), y + length * math.sin(ang), rng.uniform(0.8, 1.6)
        box = _box(size, min(x, x2) - width, min(y, y2) - width, max(x, x2) + width, max(y, y2) + width)
        return _coverage(box, lambda d, ox, oy, k: d.line(
            [x * k - ox, y * k - oy, x2 * k - ox, y2 * k - oy], fill=255, width=int(round(width * k)))), box
    rad = rng.uniform(0.7, 1.6)
    box = _box(size, x - rad, y - rad, x + rad, y + rad)
    return _coverage(box, lambda d, ox, oy, k: d.ellipse(
        [(x - rad) * k - ox, (y - rad) * k - oy, (x + rad) * k - ox, (y + rad) * k - oy], fill=255)), box


def _object_colour(rng: np.random.Generator, kind: str, s: float) -> np.ndarray:
    hue = _HUE[kind] + rng.normal(0, 0.04) if rng.random() < CLASS_HUE_PROB else rng.random()
    hue += s * 0.12  # alien style: a global colour cast
    sat = _blend(rng, s, (0.55, 0.9), (0.25, 0.5))
    return _hsv(hue, sat, rng.uniform(0.6, 0.95))


def render_scene(rng: np.random.Generator, size: int, content: Content, style_shift: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene. Returns (RGB uint8 HxWx3, labels uint8 HxW with label ids of KINDS, 255 = ambiguous edge).

    Later objects occlude earlier ones (painter's order), which is how occlusion enters the labels too.
    """
    s = float(style_shift)
    img = _background(rng, size, s)
    labels = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(content.num_clutter[0], content.num_clutter[1] + 1)):
        a, (x0, y0, x1, y1) = _clutter_alpha(rng, size)
        colour = _hsv(rng.random(), rng.uniform(0, 0.7), rng.uniform(0.1, 0.9))
        if a.size:
            img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - a[..., None]) + colour * a[..., None]
    probs = np.asarray(content.class_probs, np.float64)
    lo, hi = (math.log(f * size) for f in content.radius)
    for _ in range(rng.integers(content.num_objects[0], content.num_objects[1] + 1)):
        label = int(rng.choice(len(probs), p=probs / probs.sum())) + 1
        kind = KINDS[label]
        r = math.exp(rng.uniform(lo, hi))
        cx, cy = rng.uniform(0.3 * r, size - 0.3 * r, 2)
        alpha, (x0, y0, x1, y1) = shape_alpha(kind, size, cx, cy, r, rng.uniform(0, 2 * math.pi))
        # Soft shading along a random direction, so objects are not flat colour patches.
        phi = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        ramp = ((xx - cx) * math.cos(phi) + (yy - cy) * math.sin(phi)) / max(r, 1.0)
        shade = 1 + rng.uniform(0.05, 0.2) * np.clip(ramp, -1, 1)
        colour = _object_colour(rng, kind, s)[None, None, :] * shade[..., None]
        region, lab = img[y0:y1, x0:x1], labels[y0:y1, x0:x1]  # views: edits land in img / labels
        region[:] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
        lab[alpha >= 0.75] = label
        lab[(alpha > 0.25) & (alpha < 0.75)] = IGNORE
    grain = _blend(rng, s, (0.01, 0.03), (0.06, 0.10))
    img = img + rng.normal(0, grain, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), labels
