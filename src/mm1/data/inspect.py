"""`mm1 inspect-image`: what the processor makes of one image, as a PNG and a summary.

The PNG shows, left to right, the grid drawn over the padded canvas, the tiles as they are cut (each with its marker)
and the overview, under a header with the token budget.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from mm1.config import MM1Config
from mm1.data.image import ViewMaker, fit_canvas, load_image
from mm1.model.connector import output_tokens

PANEL = 384  # display size of each panel's square box
GAP = 12
HEADER = 56
_GRID_COLOR = (255, 0, 0)


def _fit_box(image: Image.Image, box: int) -> Image.Image:
    scale = box / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font) -> None:
    if text:
        text = text.replace("\n", "\\n")  # the "seps" row marker, visible
        draw.rectangle(draw.textbbox(xy, text, font=font), fill=(0, 0, 0))
        draw.text(xy, text, fill=(255, 255, 255), font=font)


def inspect_image(image_path: str | Path, cfg: MM1Config, out_png: str | Path, images_in_sample: int = 1) -> dict:
    """Write the PNG to `out_png`; return grid ((rows, cols), or None when the image is one view), views,
    tokens_per_view, total_tokens and layout (the marker before each view)."""
    image = load_image(image_path, cfg.image.max_pixels)
    maker = ViewMaker(cfg.image, cfg.model.encoder)
    tokens_per_view = output_tokens(cfg.model.connector, maker.size // cfg.model.encoder.patch_size)
    views = maker.render(image, images_in_sample)
    grid = maker.grid(*image.size, images_in_sample)
    canvas = grid or maker.overview(*image.size)
    if grid is None:
        tiles, overview = [], views[0]
    elif cfg.image.split.overview == "before":
        tiles, overview = views[1:], views[0]
    else:
        tiles, overview = views[:-1], views[-1]

    font = ImageFont.load_default(size=14)
    out = Image.new("RGB", (3 * PANEL + 4 * GAP, HEADER + PANEL + GAP), (255, 255, 255))
    draw = ImageDraw.Draw(out)

    shown = _fit_box(fit_canvas(image, canvas, maker.fill, cfg.image.resample), PANEL)
    out.paste(shown, (GAP, HEADER))
    step = shown.width / canvas.cols  # the canvas is cols x rows tiles, so both steps are equal
    for c in range(canvas.cols + 1):
        x = GAP + round(c * step)
        draw.line((x, HEADER, x, HEADER + shown.height), fill=_GRID_COLOR, width=2)
    for r in range(canvas.rows + 1):
        y = HEADER + round(r * step)
        draw.line((GAP, y, GAP + shown.width, y), fill=_GRID_COLOR, width=2)

    if tiles:
        cell = (PANEL - GAP * (max(canvas.rows, canvas.cols) - 1)) // max(canvas.rows, canvas.cols)
        for index, (marker, tile) in enumerate(tiles):
            r, c = divmod(index, canvas.cols)
            xy = (2 * GAP + PANEL + c * (cell + GAP // 2), HEADER + r * (cell + GAP // 2))
            out.paste(tile.resize((cell, cell)), xy)
            _label(draw, xy, marker, font)
    marker, view = overview
    xy = (3 * GAP + 2 * PANEL, HEADER)
    out.paste(view.resize((PANEL, PANEL)), xy)
    _label(draw, xy, marker or "overview", font)

    info = {
        "image": str(image_path), "size": list(image.size),
        "grid": [canvas.rows, canvas.cols] if grid else None, "resized": list(canvas.resized),
        "views": len(views), "tokens_per_view": tokens_per_view, "total_tokens": len(views) * tokens_per_view,
        "layout": [marker for marker, _ in views],
    }
    grid_text = f"grid {canvas.rows}x{canvas.cols} + overview" if grid else "one view (not split)"
    draw.text((GAP, 8), f"{Path(image_path).name}  {image.width}x{image.height} -> {grid_text}, resized to "
              f"{canvas.resized[0]}x{canvas.resized[1]}", fill=(0, 0, 0), font=font)
    draw.text((GAP, 28), f"{info['views']} views x {tokens_per_view} tokens = {info['total_tokens']} image tokens",
              fill=(0, 0, 0), font=font)
    out.save(out_png)
    return info
