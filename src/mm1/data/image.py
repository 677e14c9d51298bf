"""Image loading and views: the pixels one image contributes to the encoder.

Static mode (MM1 pre-training, or a sample with more than `split.max_images` images): one view, the whole image
resized (aspect kept) onto a square.  Split mode (MM1.5): the tiles of a grid chosen per image (`split.py`), row-major,
plus an overview view of the whole image, each view preceded in the text by its marker.  All padding is right and
below the image (top-left anchoring), so coordinates map between image and views by a scale (`coords.py`).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps

from mm1.config import EncoderConfig, ImageConfig
from mm1.data.split import Canvas, fit, markers, select_grid

ImageSource = Union[str, Path, bytes, Image.Image]

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "lanczos": Image.Resampling.LANCZOS}
_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_WIDE_GREY_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageError(ValueError):
    """An image that cannot be used, with the reason and where it came from."""


def _check_size(width: int, height: int, name: str, max_pixels: int) -> None:
    if width == 0 or height == 0:
        raise ImageError(f"image {name} has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"image {name} has {width * height} pixels, over the limit of {max_pixels}")


def _open(source: ImageSource, max_pixels: int) -> tuple[Image.Image, str]:
    """Open lazily (Pillow reads only the header) and check the size before any pixel is decoded."""
    name = str(source) if isinstance(source, (str, Path)) else f"<{type(source).__name__}>"
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
        except OSError as err:
            raise ImageError(f"cannot read image {name}: {err.strerror}") from None
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as err:  # Pillow's own header check, at twice its pixel limit
            raise ImageError(f"image {name} is over the pixel limit: {err}") from None
        except Exception as err:  # Pillow raises several types for undecodable bytes
            raise ImageError(f"cannot decode image {name}: {err}") from None
    _check_size(*image.size, name, max_pixels)
    return image, name


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: transparency composited over white, 16/32-bit greyscale rescaled."""
    if image.mode in _WIDE_GREY_MODES:
        # convert() would clip these to 0..255; they hold 16-bit values (Pillow decodes 16-bit PNG/TIFF to them).
        grey = np.asarray(image).astype(np.int64).clip(0, 65535)
        image = Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _decode(image: Image.Image, name: str) -> Image.Image:
    try:
        return to_rgb(ImageOps.exif_transpose(image))  # upright as a viewer shows it, which is what captions describe
    except Exception as err:  # truncated or corrupt data surfaces only when the pixels are decoded
        raise ImageError(f"cannot decode image {name}: {err}") from None


def load_image(source: ImageSource, max_pixels: int) -> Image.Image:
    """Decode to upright 8-bit RGB (first frame of an animation), refusing images over `max_pixels` before decoding."""
    return _decode(*_open(source, max_pixels))


def _uniform(total: int, n: int) -> list[int]:
    """Indices of the middle of n equal segments of `total` frames; they repeat when total < n."""
    return [(2 * i + 1) * total // (2 * n) for i in range(n)]


def _natural(path: Path) -> list:
    """Sort key that puts frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _video_frames(path: Path, n: int, max_pixels: int) -> list[Image.Image]:
    try:
        import av
    except ImportError:
        raise ImageError(f"{path} is not an image format; to sample frames from a video file install PyAV "
                         "(pip install av), or pass a folder of frame images") from None
    try:
        # Decoded twice: container frame counts are often missing or wrong, and keeping every frame would not fit
        # in memory for long videos.
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ImageError(f"{path} has no video stream")
            stream = container.streams.video[0]
            _check_size(stream.width, stream.height, str(path), max_pixels)
            total = sum(1 for _ in container.decode(stream))
        if total == 0:
            raise ImageError(f"video {path} has no frames")
        wanted = _uniform(total, n)
        picked: dict[int, Image.Image] = {}
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    picked[index] = to_rgb(frame.to_image())
                if index == wanted[-1]:
                    break
    except av.FFmpegError as err:
        raise ImageError(f"cannot decode video {path}: {err}") from None
    return [picked[i] for i in wanted]


def sample_frames(source: ImageSource, n: int = 24, max_pixels: int = ImageConfig.max_pixels) -> list[Image.Image]:
    """`n` frames sampled uniformly (MM1.5 video: 24), as upright 8-bit RGB images.

    `source`: a folder of frame images (natural name order), an animated image (GIF, WebP, APNG; a still image gives
    its one frame n times), or a video file (needs PyAV).  Frames repeat when there are fewer than `n`, so a clip
    always costs `n` views.  Pass the frames as the images of one sample: with n > split.max_images (the MM1.5 rule)
    they are never split, one view each.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    path = Path(source) if isinstance(source, (str, Path)) else None
    if path is not None and path.is_dir():
        files = sorted((p for p in path.iterdir() if p.suffix.lower() in Image.registered_extensions()), key=_natural)
        if not files:
            raise ImageError(f"folder {path} holds no image files")
        return [load_image(files[i], max_pixels) for i in _uniform(len(files), n)]
    if path is not None and path.suffix.lower() not in Image.registered_extensions():
        return _video_frames(path, n, max_pixels)
    image, name = _open(source, max_pixels)
    frames = []
    for index in _uniform(getattr(image, "n_frames", 1), n):
        try:
            image.seek(index)
        except EOFError as err:
            raise ImageError(f"cannot decode frame {index} of {name}: {err}") from None
        frames.append(_decode(image, name))
    return frames


def fit_canvas(image: Image.Image, canvas: Canvas, fill: tuple[int, int, int], resample: str) -> Image.Image:
    """The image resized to `canvas.resized` on a rows x cols tile canvas of `fill`, anchored top-left."""
    out = Image.new("RGB", (canvas.cols * canvas.tile, canvas.rows * canvas.tile), fill)
    out.paste(image.resize(canvas.resized, _RESAMPLE[resample]), (0, 0))
    return out


def to_tensor(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


@dataclass
class ImageViews:
    pixels: torch.Tensor  # (views, 3, size, size)
    layout: list[str]  # text before each view's image tokens ("" when no position marker)


class ViewMaker:
    """Turns one decoded image into encoder views."""

    def __init__(self, image_cfg: ImageConfig, encoder_cfg: EncoderConfig):
        self.cfg = image_cfg
        self.split = image_cfg.split
        self.size = image_cfg.size or encoder_cfg.image_size
        if self.size % encoder_cfg.patch_size:
            raise ValueError(f"image.size {self.size} is not a multiple of the patch size {encoder_cfg.patch_size}")
        self.mean, self.std = encoder_cfg.image_mean, encoder_cfg.image_std
        self.fill = tuple(round(m * 255) for m in self.mean)

    def grid(self, width: int, height: int, images_in_sample: int) -> Canvas | None:
        """The tile canvas of a split image; None when the image is one view (static mode, or too many images)."""
        if not self.split.enabled or images_in_sample > self.split.max_images:
            return None
        rows, cols = select_grid(width, height, self.size, self.split.min_tiles, self.split.max_tiles)
        return fit(width, height, rows, cols, self.size)

    def overview(self, width: int, height: int) -> Canvas:
        """The single view of the whole image (the only view in static mode)."""
        return fit(width, height, 1, 1, self.size)

    def num_views(self, width: int, height: int, images_in_sample: int) -> int:
        grid = self.grid(width, height, images_in_sample)
        return 1 if grid is None else grid.rows * grid.cols + 1

    def render(self, image: Image.Image, images_in_sample: int, image_index: int = 0) -> list[tuple[str, Image.Image]]:
        """(marker, view) pairs in token order: tiles row-major with the overview before or after them."""
        overview = fit_canvas(image, self.overview(*image.size), self.fill, self.cfg.resample)
        grid = self.grid(*image.size, images_in_sample)
        if grid is None:
            return [("", overview)]
        canvas = fit_canvas(image, grid, self.fill, self.cfg.resample)
        tile_markers, overview_marker = markers(grid.rows, grid.cols, image_index, self.split.indicators)
        tiles = [(marker, canvas.crop(box)) for marker, box in zip(tile_markers, grid.tile_boxes())]
        if self.split.overview == "before":
            return [(overview_marker, overview), *tiles]
        return [*tiles, (overview_marker, overview)]

    def __call__(self, image: Image.Image, images_in_sample: int, image_index: int = 0) -> ImageViews:
        views = self.render(image, images_in_sample, image_index)
        pixels = torch.stack([to_tensor(view, self.mean, self.std) for _, view in views])
        return ImageViews(pixels, [marker for marker, _ in views])
