"""Image loading and views: the pixels one image contributes to the encoder.

Static mode (MM1 pre-training): one view, the whole image resized (aspect kept) and padded to a square.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from mm1.config import EncoderConfig, ImageConfig

ImageSource = Union[str, Path, bytes, Image.Image]

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "lanczos": Image.Resampling.LANCZOS}


class ImageError(ValueError):
    """An image that cannot be used, with the reason and where it came from."""


def load_image(source: ImageSource, max_pixels: int) -> Image.Image:
    """Decode to RGB, refusing images over `max_pixels` before decoding their pixels."""
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
        except Exception as err:  # Pillow raises several types for undecodable bytes
            raise ImageError(f"cannot decode image {name}: {err}") from None
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageError(f"image {name} has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"image {name} has {width * height} pixels, over the limit of {max_pixels}")
    try:
        return image.convert("RGB")
    except Exception as err:
        raise ImageError(f"cannot decode image {name}: {err}") from None


def fit_square(image: Image.Image, size: int, fill: tuple[int, int, int], resample: str) -> Image.Image:
    """Resize so the longer side is `size`, then pad the shorter side evenly with `fill`."""
    width, height = image.size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = image.resize((new_w, new_h), _RESAMPLE[resample])
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return canvas


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
        self.size = image_cfg.size or encoder_cfg.image_size
        if self.size % encoder_cfg.patch_size:
            raise ValueError(f"image.size {self.size} is not a multiple of the patch size {encoder_cfg.patch_size}")
        self.mean, self.std = encoder_cfg.image_mean, encoder_cfg.image_std
        self.fill = tuple(round(m * 255) for m in self.mean)

    def num_views(self, width: int, height: int, images_in_sample: int) -> int:
        return 1

    def __call__(self, image: Image.Image, images_in_sample: int) -> ImageViews:
        view = fit_square(image, self.size, self.fill, self.cfg.resample)
        return ImageViews(to_tensor(view, self.mean, self.std).unsqueeze(0), [""])
