"""Region coordinates: Ferret bins on the original image, maps onto views, and parsing generated text."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mm1.config import EncoderConfig, ImageConfig, SplitConfig
from mm1.data.coords import (Region, box_to_text, draw_regions, from_bins, from_canvas, from_tile, parse_regions,
                             point_to_text, text_to_box, text_to_point, to_bins, to_canvas, to_tile)
from mm1.data.image import ViewMaker
from mm1.data.split import fit, select_grid

sizes = st.tuples(st.integers(1, 8000), st.integers(1, 8000))
bins = st.integers(0, 999)


@settings(max_examples=200, deadline=None)
@given(size=sizes, v=st.tuples(bins, bins), frac=st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_bins_round_trip(size, v, frac):
    for axis in (0, 1):
        extent = size[axis]
        assert to_bins(from_bins(v[axis], extent), extent) == v[axis]  # bins -> pixels -> bins: exact
        x = frac[axis] * extent
        assert abs(from_bins(to_bins(x, extent), extent) - x) <= extent / 1000  # pixels -> bins -> pixels: < 1 bin


@settings(max_examples=200, deadline=None)
@given(size=sizes, v=st.tuples(bins, bins), budget=st.sampled_from([(4, 9), (4, 16), (1, 9), (1, 1)]),
       tile=st.sampled_from([16, 336, 672]))
def test_round_trip_through_tiles_and_overview(size, v, budget, tile):
    x, y = from_bins(v[0], size[0]), from_bins(v[1], size[1])
    grid = fit(*size, *select_grid(*size, tile, *budget), tile)
    row, col, tx, ty = to_tile(x, y, grid)
    assert 0 <= row < grid.rows and 0 <= col < grid.cols and 0 <= tx <= tile and 0 <= ty <= tile
    back = from_tile(row, col, tx, ty, grid)
    assert (to_bins(back[0], size[0]), to_bins(back[1], size[1])) == v
    overview = fit(*size, 1, 1, tile)
    back = from_canvas(*to_canvas(x, y, overview), overview)
    assert (to_bins(back[0], size[0]), to_bins(back[1], size[1])) == v


@pytest.mark.parametrize("point", [(12, 12), (300, 100), (587, 387), (123, 321), (200, 199)])
def test_tile_map_finds_the_pixel(point):
    """A white dot placed on the original lands where to_tile says, in the tile the encoder actually sees."""
    image = Image.new("RGB", (600, 400), (0, 0, 0))
    image.paste((255, 255, 255), (point[0] - 12, point[1] - 12, point[0] + 13, point[1] + 13))
    maker = ViewMaker(ImageConfig(size=64, split=SplitConfig(enabled=True)),
                      EncoderConfig(image_size=32, patch_size=8, hidden_size=32, layers=2, heads=2))
    views = maker.render(image, 1)
    grid = maker.grid(600, 400, 1)  # (2,3), scale 192/600 = 0.32
    row, col, tx, ty = to_tile(point[0] + 0.5, point[1] + 0.5, grid)  # centre of the dot's middle pixel
    tile = np.asarray(views[row * grid.cols + col][1])
    assert tile[min(int(ty), 63), min(int(tx), 63)].min() > 150
    ox, oy = to_canvas(point[0] + 0.5, point[1] + 0.5, maker.overview(600, 400))
    assert np.asarray(views[-1][1])[int(oy), int(ox)].min() > 100  # the overview shrinks the dot more


def test_text_formats():
    assert box_to_text((10, 20, 300, 400), (640, 480)) == "[15, 41, 468, 833]"
    assert point_to_text((640, 480), (640, 480)) == "[999, 999]"  # the far edge clamps into the last bin
    assert point_to_text((0, 0), (640, 480)) == "[0, 0]"
    assert text_to_point("[0, 999]", (1000, 10)) == (0.5, 9.995)
    box = text_to_box(" [15,41 ,\n468, 833] ", (640, 480))
    assert box_to_text(box, (640, 480)) == "[15, 41, 468, 833]"
    with pytest.raises(ValueError, match="x2 < x1"):
        box_to_text((30, 0, 10, 5), (100, 100))


@pytest.mark.parametrize("text, reason", [
    ("[1, 2, 3]", "3 numbers"), ("[1000, 5]", "outside 0..999"), ("[-1, 5]", "outside"), ("[5, 5, 4, 9]", "x2 < x1"),
    ("[1.5, 2]", "not an integer"), ("[1 2 3 4]", "not an integer"), ("[1, 2,]", "not an integer"),
    ("[1, 2, 3", "no closing"),
])
def test_malformed_regions_are_reported(text, reason):
    regions, errors = parse_regions(f"the cat {text}")
    assert regions == []
    assert len(errors) == 1 and reason in errors[0].reason and errors[0].text == text
    with pytest.raises(ValueError, match=reason):
        text_to_box(text, (100, 100))


def test_parse_regions_mixed_text():
    text = "A cat [ 12,34 , 56,\n78 ] sits at [5, 6]; see [citation] and [3 apples], not [999, 1000]."
    regions, errors = parse_regions(text)
    assert [(r.kind, r.coords) for r in regions] == [("box", (12, 34, 56, 78)), ("point", (5, 6))]
    assert text[slice(*regions[1].span)] == "[5, 6]"
    assert [e.text for e in errors] == ["[3 apples]", "[999, 1000]"]  # "[citation]" is not a coordinate attempt
    with pytest.raises(ValueError, match="not a single box"):
        text_to_box("[1, 2, 3, 4] and more", (10, 10))
    with pytest.raises(ValueError, match="not a single point"):
        text_to_point("[1, 2, 3, 4]", (10, 10))


def test_draw_regions():
    image = Image.new("L", (200, 100), 0)
    out = draw_regions(image, [Region("box", (100, 200, 500, 800), (0, 0)), Region("point", (900, 500), (0, 0))])
    assert out.mode == "RGB" and image.getpixel((0, 0)) == 0  # a copy; the input is untouched
    pixels = np.asarray(out)
    # box: x 100 -> (100.5) * 200 / 1000 = 20.1 px, y 200 -> 20.05 px, x2 500 -> 100.1, y2 800 -> 80.05
    assert tuple(pixels[50, 20]) == (255, 0, 0) and tuple(pixels[20, 60]) == (255, 0, 0)
    assert tuple(pixels[50, 60]) == (0, 0, 0)  # inside the outline
    # point at (180.1, 50.05): a ring around it
    assert (pixels[40:61, 170:191, 0] == 255).any() and tuple(pixels[50, 180]) == (0, 0, 0)
