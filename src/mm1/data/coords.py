"""Region coordinates in text (spec section 5): Ferret's convention, always relative to the ORIGINAL image.

A point is `[x, y]` and a box `[x1, y1, x2, y2]` (x first), in integer bins 0..999: a pixel coordinate x of an image
`width` wide becomes floor(x * 1000 / width), clamped to 999 (Ferret truncates too).  A bin maps back to its centre,
(v + 0.5) * width / 1000, so bins -> pixels -> bins is exact and pixels -> bins -> pixels moves a point by at most
half a bin.  The frame never changes with the grid or padding; `to_canvas` / `to_tile` (and back) map original
pixels onto the views the encoder sees, which are a pure scale of the image (top-left anchored, `split.py`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from PIL import Image, ImageDraw

from mm1.data.split import Canvas

BINS = 1000


@dataclass(frozen=True)
class Region:
    kind: Literal["point", "box"]
    coords: tuple[int, ...]  # bins: (x, y) or (x1, y1, x2, y2)
    span: tuple[int, int]  # where it is in the parsed text


@dataclass(frozen=True)
class RegionError:
    text: str
    span: tuple[int, int]
    reason: str


# ---- pixels <-> bins ---------------------------------------------------------------------------------------------
def to_bins(value: float, extent: int, bins: int = BINS) -> int:
    return min(bins - 1, max(0, math.floor(value * bins / extent)))


def from_bins(value: int, extent: int, bins: int = BINS) -> float:
    return (value + 0.5) * extent / bins


def _xy_to_bins(coords: Sequence[float], size: tuple[int, int], bins: int) -> tuple[int, ...]:
    return tuple(to_bins(v, size[i % 2], bins) for i, v in enumerate(coords))


def _xy_from_bins(coords: Sequence[int], size: tuple[int, int], bins: int) -> tuple[float, ...]:
    return tuple(from_bins(v, size[i % 2], bins) for i, v in enumerate(coords))


def point_to_text(point: Sequence[float], size: tuple[int, int], bins: int = BINS) -> str:
    """Pixel point (x, y) of an image of `size` = (width, height) -> "[x, y]" in bins."""
    return "[" + ", ".join(map(str, _xy_to_bins(point, size, bins))) + "]"


def box_to_text(box: Sequence[float], size: tuple[int, int], bins: int = BINS) -> str:
    """Pixel box (x1, y1, x2, y2) of an image of `size` = (width, height) -> "[x1, y1, x2, y2]" in bins."""
    x1, y1, x2, y2 = box
    if x2 < x1 or y2 < y1:
        raise ValueError(f"box {tuple(box)} has x2 < x1 or y2 < y1")
    return "[" + ", ".join(map(str, _xy_to_bins(box, size, bins))) + "]"


def _one(text: str, kind: str, bins: int) -> Region:
    regions, errors = parse_regions(text, bins)
    if errors:
        raise ValueError(f"{errors[0].text!r}: {errors[0].reason}")
    if len(regions) != 1 or regions[0].kind != kind or text.strip() != text[slice(*regions[0].span)]:
        raise ValueError(f"{text!r} is not a single {kind}")
    return regions[0]


def text_to_point(text: str, size: tuple[int, int], bins: int = BINS) -> tuple[float, float]:
    """"[x, y]" in bins -> pixel point in an image of `size`; ValueError unless the text is exactly one valid point."""
    return _xy_from_bins(_one(text, "point", bins).coords, size, bins)


def text_to_box(text: str, size: tuple[int, int], bins: int = BINS) -> tuple[float, float, float, float]:
    """"[x1, y1, x2, y2]" in bins -> pixel box in an image of `size`; ValueError unless exactly one valid box."""
    return _xy_from_bins(_one(text, "box", bins).coords, size, bins)


# ---- original image <-> views ------------------------------------------------------------------------------------
def to_canvas(x: float, y: float, canvas: Canvas) -> tuple[float, float]:
    """Original-image pixel -> pixel of the canvas (the overview is a 1 x 1 canvas)."""
    sx, sy = canvas.scale
    return x * sx, y * sy


def from_canvas(x: float, y: float, canvas: Canvas) -> tuple[float, float]:
    sx, sy = canvas.scale
    return x / sx, y / sy


def to_tile(x: float, y: float, canvas: Canvas) -> tuple[int, int, float, float]:
    """Original-image pixel -> (row, col, x, y in that tile); row and col are 0-based (markers print them 1-based)."""
    cx, cy = to_canvas(x, y, canvas)
    row = min(canvas.rows - 1, max(0, int(cy // canvas.tile)))
    col = min(canvas.cols - 1, max(0, int(cx // canvas.tile)))
    return row, col, cx - col * canvas.tile, cy - row * canvas.tile


def from_tile(row: int, col: int, x: float, y: float, canvas: Canvas) -> tuple[float, float]:
    return from_canvas(col * canvas.tile + x, row * canvas.tile + y, canvas)


# ---- generated text -----------------------------------------------------------------------------------------------
# A bracket whose content starts with a number is a coordinate attempt; its end is "]" or, when the generation was
# cut off, the end of the text.  Anything else in brackets ("[citation]") is ordinary text.
_CANDIDATE = re.compile(r"\[(\s*[-+]?\.?\d[^\[\]]*)(\]|$)")
_INT = re.compile(r"[-+]?\d+")


def _check(content: str, bins: int) -> tuple[int, ...] | str:
    """The coordinates in a bracket's content, or the reason they are malformed."""
    parts = [p.strip() for p in content.split(",")]
    bad = [p for p in parts if not _INT.fullmatch(p)]
    if bad:
        return f"{bad[0]!r} is not an integer"
    values = tuple(int(p) for p in parts)
    if len(values) not in (2, 4):
        return f"{len(values)} numbers; a point has 2, a box 4"
    out = [v for v in values if not 0 <= v < bins]
    if out:
        return f"{out[0]} is outside 0..{bins - 1}"
    if len(values) == 4 and (values[2] < values[0] or values[3] < values[1]):
        return "x2 < x1 or y2 < y1"
    return values


def parse_regions(text: str, bins: int = BINS) -> tuple[list[Region], list[RegionError]]:
    """Every point and box in generated text, in order, and every malformed attempt with the reason.

    Whitespace (newlines too) around numbers and commas is accepted; nothing else is repaired: a wrong count,
    a non-integer, a number outside 0..bins-1, a box with x2 < x1 or y2 < y1 or a missing "]" is reported.
    """
    regions, errors = [], []
    for match in _CANDIDATE.finditer(text):
        result = _check(match.group(1), bins) if match.group(2) else "no closing ']'"
        if isinstance(result, str):
            errors.append(RegionError(match.group(0), match.span(), result))
        else:
            regions.append(Region("point" if len(result) == 2 else "box", result, match.span()))
    return regions, errors


def draw_regions(image: Image.Image, regions: Sequence[Region], color: tuple[int, int, int] = (255, 0, 0),
                 bins: int = BINS) -> Image.Image:
    """A copy of `image` with each box outlined and each point marked (bins mapped to this image's pixels)."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    line = max(1, round(min(out.size) / 200))
    for region in regions:
        xy = _xy_from_bins(region.coords, out.size, bins)
        if region.kind == "box":
            draw.rectangle(xy, outline=color, width=line)
        else:
            r = 3 * line
            draw.ellipse((xy[0] - r, xy[1] - r, xy[0] + r, xy[1] + r), outline=color, width=line)
    return out
