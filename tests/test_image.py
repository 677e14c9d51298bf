"""Image loading: bad inputs fail clearly, odd modes / EXIF / animations decode right, frames sample uniformly."""

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mm1.data.image import ImageError, load_image, sample_frames

DATA = Path(skimage.__file__).parent / "data"
GIF = DATA / "no_time_for_that_tiny.gif"  # 14x25, 24 frames
LIMIT = 89_478_485  # ImageConfig.max_pixels default


def png_bytes(image: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **params)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size but holds no pixel data: decoding it would fail, so only a header check can pass."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# ---- errors -------------------------------------------------------------------------------------------------------
def test_image_error_is_value_error():
    assert issubclass(ImageError, ValueError)


@pytest.mark.parametrize("data", [b"", b"definitely not an image", png_bytes(Image.new("RGB", (64, 64)))[:60]])
def test_corrupt_bytes(data):
    with pytest.raises(ImageError, match=r"cannot decode image <bytes>"):
        load_image(data, LIMIT)


def test_truncated_file_names_the_path(tmp_path):
    data = (DATA / "astronaut.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])  # the header is intact: the error appears only when decoding
    with pytest.raises(ImageError, match=rf"cannot decode image {path}.*truncated"):
        load_image(path, LIMIT)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match=rf"cannot read image {tmp_path / 'nope.png'}"):
        load_image(tmp_path / "nope.png", LIMIT)


def test_zero_size():
    with pytest.raises(ImageError, match=r"zero size \(0x5\)"):
        load_image(Image.new("RGB", (0, 5)), LIMIT)


def test_pixel_limit_checked_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(10_000, 10_000))  # 1e8 pixels claimed, no pixel data
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow warns, we refuse
        with pytest.raises(ImageError, match=rf"image {path} has 100000000 pixels, over the limit of {LIMIT}"):
            load_image(path, LIMIT)
    with pytest.raises(ImageError, match=r"<bytes> is over the pixel limit"):  # Pillow's own refusal, reworded
        load_image(png_header_only(100_000, 100_000), LIMIT)
    with pytest.raises(ImageError, match=r"262144 pixels, over the limit of 100000"):
        load_image(DATA / "astronaut.png", 100_000)


# ---- modes, EXIF, animation ----------------------------------------------------------------------------------------
def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 0
    return image


grey16 = np.array([[0, 32768, 65535]], dtype=np.uint16)


@pytest.mark.parametrize("image, expected", [
    (Image.new("RGBA", (3, 1), (255, 0, 0, 0)), [(255, 255, 255)] * 3),  # transparent: the white behind shows
    (Image.new("RGBA", (3, 1), (255, 0, 0, 128)), [(255, 127, 127)] * 3),
    (Image.new("LA", (3, 1), (0, 255)), [(0, 0, 0)] * 3),
    (palette_with_transparency(), [(255, 255, 255), (0, 255, 0)]),
    (Image.new("L", (3, 1), 77), [(77, 77, 77)] * 3),
    (Image.new("1", (3, 1), 1), [(255, 255, 255)] * 3),
    # 16-bit greyscale is rescaled (Pillow's convert() would clip 32768 and 65535 to 255)
    (Image.fromarray(grey16), [(0, 0, 0), (128, 128, 128), (255, 255, 255)]),
    (Image.fromarray(grey16.astype(">u2")), [(0, 0, 0), (128, 128, 128), (255, 255, 255)]),
    (Image.fromarray(grey16.astype(np.int32)), [(0, 0, 0), (128, 128, 128), (255, 255, 255)]),
])
def test_modes_become_rgb8(image, expected):
    for source in (image,) if image.mode == "I" else (image, png_bytes(image)):  # PNG has no 32-bit mode
        out = load_image(source, LIMIT)
        assert out.mode == "RGB"
        assert [out.getpixel((x, 0)) for x in range(out.width)] == expected


def test_16bit_png_file():
    data = png_bytes(Image.fromarray(grey16))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # what Pillow decodes 16-bit PNGs to
    assert load_image(data, LIMIT).getpixel((1, 0)) == (128, 128, 128)


@settings(max_examples=30, deadline=None)
@given(width=st.integers(1, 300), height=st.integers(1, 300),
       mode=st.sampled_from(["L", "LA", "RGBA", "P", "I;16", "1"]))
def test_any_mode_and_size_round_trips_to_rgb(width, height, mode):
    out = load_image(png_bytes(Image.new(mode, (width, height))), LIMIT)
    assert out.mode == "RGB" and out.size == (width, height)


def test_exif_orientation_is_applied():
    stored = Image.new("RGB", (20, 10), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 4, 4))  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = load_image(png_bytes(stored, exif=exif), LIMIT)
    assert out.size == (10, 20)
    assert out.getpixel((9, 0)) == (255, 0, 0) and out.getpixel((0, 0)) == (0, 0, 255)  # now top-right


def test_animated_and_multipage_give_first_frame():
    gif = Image.open(GIF)
    assert np.array_equal(np.asarray(load_image(GIF, LIMIT)), np.asarray(gif.convert("RGB")))
    tif = Image.open(DATA / "multipage.tif")
    assert np.array_equal(np.asarray(load_image(DATA / "multipage.tif", LIMIT))[..., 0], np.asarray(tif))


# ---- frames ---------------------------------------------------------------------------------------------------------
def gif_frame(index: int) -> np.ndarray:
    gif = Image.open(GIF)
    gif.seek(index)
    return np.asarray(gif.convert("RGB"))


def test_sample_frames_from_animation():
    assert [f.size for f in sample_frames(GIF)] == [(14, 25)] * 24
    # n=6 of 24: the middle of six 4-frame segments, floor((2i+1) * 24 / 12) = 2, 6, 10, 14, 18, 22
    frames = sample_frames(GIF.read_bytes(), n=6)
    for frame, index in zip(frames, [2, 6, 10, 14, 18, 22]):
        assert np.array_equal(np.asarray(frame), gif_frame(index))
    assert len(sample_frames(DATA / "astronaut.png", n=3)) == 3  # a still image is its one frame, repeated


def test_sample_frames_from_folder_in_natural_order(tmp_path):
    for i in range(12):  # frame_0 .. frame_11, so plain string order would put frame_10 before frame_2
        Image.new("L", (4, 3), 20 * i).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    frames = sample_frames(tmp_path, n=4)  # 12 frames, n=4: indices 1, 4, 7, 10
    assert [f.getpixel((0, 0))[0] for f in frames] == [20, 80, 140, 200]
    assert [f.getpixel((0, 0))[0] for f in sample_frames(tmp_path, n=24)][:4] == [0, 0, 20, 20]  # repeats
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="holds no image files"):
        sample_frames(tmp_path / "empty", n=2)


def test_video_without_decoder_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` fail
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00" * 64)
    with pytest.raises(ImageError, match=r"pip install av"):
        sample_frames(clip)


def test_video_file(tmp_path):
    av = pytest.importorskip("av")
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    frames = sample_frames(clip, n=6)  # 30 frames: indices 2, 7, 12, 17, 22, 27
    assert [f.size for f in frames] == [(64, 48)] * 6
    assert [f.getpixel((8, 8))[0] for f in frames] == pytest.approx([16, 56, 96, 136, 176, 216], abs=6)


def test_frame_count_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        sample_frames(GIF, n=0)
