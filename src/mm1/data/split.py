"""MM1.5 dynamic image splitting ("AnyRes", spec section 4): the tile grid for an image and its view markers.

Geometry only, no pixels, so the token count, the pixel pipeline and the coordinate maps share one source of truth.
Every canvas is anchored top-left: the resized image starts at canvas pixel (0, 0) and the padding goes right and
below it, so mapping a coordinate between the image and a canvas is a pure scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Canvas:
    """An image of `width` x `height` resized to `resized` and pasted top-left on `rows` x `cols` tiles of `tile` px."""

    width: int
    height: int
    rows: int
    cols: int
    tile: int
    resized: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        """Canvas pixels per image pixel along x and y (they differ by the rounding of `resized`)."""
        return self.resized[0] / self.width, self.resized[1] / self.height

    def tile_boxes(self) -> list[tuple[int, int, int, int]]:
        """(left, top, right, bottom) of each tile on the canvas, row-major."""
        t = self.tile
        return [(c * t, r * t, (c + 1) * t, (r + 1) * t) for r in range(self.rows) for c in range(self.cols)]


def _scale(width: int, height: int, rows: int, cols: int, tile: int) -> Fraction:
    """Aspect-kept scale at which the image just fits the canvas (one side touches its edge); exact."""
    return min(Fraction(rows * tile, height), Fraction(cols * tile, width))


def fit(width: int, height: int, rows: int, cols: int, tile: int) -> Canvas:
    scale = _scale(width, height, rows, cols, tile)
    # round() of a Fraction stays within the canvas; max(1, ...) keeps a 1-pixel sliver of extreme aspect ratios.
    resized = (max(1, round(width * scale)), max(1, round(height * scale)))
    return Canvas(width, height, rows, cols, tile, resized)


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """All (rows, cols) with min_tiles <= rows * cols <= max_tiles (MM1.5 Eq. 1)."""
    return [(r, c) for r in range(1, max_tiles + 1) for c in range(1, max_tiles // r + 1) if r * c >= min_tiles]


def select_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(rows, cols) for an image: spec section 4.3 (MM1.5 Eq. 1) over the grids that leave no tile empty.

    Eq. 1: if some grid holds the image without down-scaling, the one with the least padding; otherwise the one
    that down-scales least (then the least padding).  Our refinement: grids where the fitted image does not reach
    every row and column are considered only when no other grid is allowed, since a tile of pure padding spends
    its tokens on nothing (e.g. 448x172 with 4..9 tiles: Eq. 1 alone picks (1, 4) with an empty fourth column).
    Exact ties (costs are fractions, so ties are real, never float noise) go to fewer tiles, then fewer rows:
    a square image picks (2, 2) over (3, 3), and with only (1, 2) and (2, 1) allowed it picks (1, 2).
    """
    def cost(grid: tuple[int, int]):
        rows, cols = grid
        canvas = fit(width, height, rows, cols, tile)
        empty_tile = canvas.resized[0] <= (cols - 1) * tile or canvas.resized[1] <= (rows - 1) * tile
        scale = _scale(width, height, rows, cols, tile)
        padding = rows * cols * tile * tile - width * height * scale * scale
        return empty_tile, max(Fraction(0), 1 - scale), padding, rows * cols, rows

    return min(candidate_grids(min_tiles, max_tiles), key=cost)


def markers(rows: int, cols: int, image_index: int, indicators: str) -> tuple[list[str], str]:
    """Text printed before each tile's image tokens (row-major) and before the overview's (spec section 4.4).

    index: "(k,i,j)" with k the 0-based image index in the sample, i, j the 1-based row and column; "(k,0,0)" marks
    the overview.  seps: "," between columns, "\\n" between rows, ":" before the overview.  none: nothing.
    """
    cells = [(i, j) for i in range(1, rows + 1) for j in range(1, cols + 1)]
    if indicators == "index":
        return [f"({image_index},{i},{j})" for i, j in cells], f"({image_index},0,0)"
    if indicators == "seps":
        return ["," if j > 1 else "\n" if i > 1 else "" for i, j in cells], ":"
    return [""] * len(cells), ""
