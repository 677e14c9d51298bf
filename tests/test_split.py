"""Dynamic image splitting: grid choice, views, markers, token counts, and the model running on all of them."""

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import skimage
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import assistant, tiny_model, user
from mm1.config import ConfigError, EncoderConfig, ImageConfig, SplitConfig, config_from_dict
from mm1.data.image import ViewMaker, sample_frames
from mm1.data.processor import Processor
from mm1.data.split import candidate_grids, fit, markers, select_grid
from mm1.data.tokenizer import build_tokenizer
from mm1.model.mllm import MM1Model

DATA = Path(skimage.__file__).parent / "data"
R = 672  # MM1.5 tile size
# Grid budgets for which some grid always leaves no tile empty (4..9 is the MM1.5 training budget, 4..16 inference).
FULL_BUDGETS = [(4, 9), (4, 16), (1, 9), (1, 1), (2, 8)]

sizes = st.tuples(st.integers(1, 8000), st.integers(1, 8000))
budgets = st.integers(1, 12).flatmap(lambda lo: st.tuples(st.just(lo), st.integers(lo, 16)))


def maker(tile=R, **split) -> ViewMaker:
    image_cfg = ImageConfig(size=tile, split=SplitConfig(enabled=True, **split))
    return ViewMaker(image_cfg, EncoderConfig(image_size=32, patch_size=8, hidden_size=32, layers=2, heads=2))


# ---- grid choice ---------------------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(size=sizes, budget=budgets)
def test_grid_in_budget_and_image_fits_canvas(size, budget):
    rows, cols = select_grid(*size, R, *budget)
    assert budget[0] <= rows * cols <= budget[1]
    canvas = fit(*size, rows, cols, R)
    w, h = canvas.resized
    assert 1 <= w <= cols * R and 1 <= h <= rows * R
    assert w == cols * R or h == rows * R  # longer-side fit: the image touches the canvas edge


@settings(max_examples=150, deadline=None)
@given(size=sizes, budget=st.sampled_from(FULL_BUDGETS))
def test_no_tile_is_entirely_padding(size, budget):
    rows, cols = select_grid(*size, R, *budget)
    w, h = fit(*size, rows, cols, R).resized
    assert w > (cols - 1) * R and h > (rows - 1) * R


@pytest.mark.parametrize("size, budget, grid", [
    ((100, 100), (4, 9), (2, 2)),     # (2,2) and (3,3) both hold a square with no padding: fewer tiles wins the tie
    ((3000, 3000), (4, 9), (3, 3)),   # no grid avoids down-scaling; (3,3) shrinks least (x0.672)
    ((8000, 200), (4, 9), (1, 9)),    # too wide for any canvas: the widest row shrinks least (x0.756)
    ((200, 8000), (4, 9), (9, 1)),
    ((600, 400), (4, 9), (2, 3)),     # 3:2 fills 2016x1344 exactly: zero padding
    # Eq. 1 alone picks (1,4) here (x3.907 -> 1750x672, least padding) but its fourth column would be all padding;
    # of the grids without empty tiles, (2,4) (x6 -> 2688x1032, padding 838,656) beats (2,3) (padding 1,149,120).
    ((448, 172), (4, 9), (2, 4)),
    ((10, 10), (2, 2), (1, 2)),       # only (1,2) and (2,1), both half padding: fewer rows wins the tie
])
def test_grid_by_hand(size, budget, grid):
    assert select_grid(*size, R, *budget) == grid


def test_candidates_match_spec():
    assert sorted(candidate_grids(4, 9)) == sorted([
        (1, 4), (2, 2), (4, 1), (1, 5), (5, 1), (1, 6), (2, 3), (3, 2), (6, 1), (1, 7), (7, 1), (1, 8), (2, 4), (4, 2),
        (8, 1), (1, 9), (3, 3), (9, 1)])


# ---- views and markers ------------------------------------------------------------------------------------------
def test_markers():
    assert markers(2, 3, 1, "index") == (["(1,1,1)", "(1,1,2)", "(1,1,3)", "(1,2,1)", "(1,2,2)", "(1,2,3)"], "(1,0,0)")
    assert markers(2, 3, 0, "seps") == (["", ",", ",", "\n", ",", ","], ":")
    assert markers(2, 2, 0, "none") == ([""] * 4, "")


@settings(max_examples=25, deadline=None)
@given(width=st.integers(1, 8000), data=st.data(), budget=st.sampled_from(FULL_BUDGETS),
       overview=st.sampled_from(["after", "before"]), indicators=st.sampled_from(["index", "seps", "none"]),
       images=st.integers(1, 4))
def test_views_match_num_views_and_no_tile_is_padding(width, data, budget, overview, indicators, images):
    height = data.draw(st.integers(1, max(1, 400_000 // width)))  # keep the pixels small; aspect up to 8000:1
    vm = maker(tile=16, min_tiles=budget[0], max_tiles=budget[1], overview=overview, indicators=indicators)
    red = Image.new("RGB", (width, height), (255, 0, 0))
    views = vm.render(red, images, image_index=3)
    made = vm(red, images, image_index=3)
    assert vm.num_views(width, height, images) == len(views) == made.pixels.shape[0] == len(made.layout)
    assert made.pixels.shape[1:] == (3, 16, 16)
    if images > 2:
        assert [m for m, _ in views] == [""]
        return
    rows, cols = select_grid(width, height, 16, *budget)
    assert len(views) == rows * cols + 1
    tiles = views[1:] if overview == "before" else views[:-1]
    for _, tile in tiles:
        assert np.asarray(tile)[..., 0].max() > 200, "a tile holds only padding"
    over_marker = views[0][0] if overview == "before" else views[-1][0]
    assert over_marker == {"index": "(3,0,0)", "seps": ":", "none": ""}[indicators]


def test_padding_is_right_and_below():
    # 30x10 with 16-px tiles, 4..9 tiles: (2,4) scales x32/15 to 64x21 (every grid with fewer columns leaves a
    # whole row or column empty), so the second row holds 5 image rows, then padding; the overview is 16x5.
    vm = maker(tile=16)
    views = [view for _, view in vm.render(Image.new("RGB", (30, 10), (255, 0, 0)), 1)]
    assert (vm.grid(30, 10, 1).rows, vm.grid(30, 10, 1).cols, vm.grid(30, 10, 1).resized) == (2, 4, (64, 21))
    bottom_right, overview = views[7], views[8]
    assert bottom_right.getpixel((15, 4))[0] > 200 and bottom_right.getpixel((0, 5)) == vm.fill
    assert overview.getpixel((15, 4))[0] > 200 and overview.getpixel((0, 5)) == vm.fill


def test_static_mode_and_image_limit():
    static = ViewMaker(ImageConfig(size=16), EncoderConfig(image_size=32, patch_size=8, hidden_size=32, layers=2,
                                                           heads=2))
    assert static.num_views(5000, 100, 1) == 1 and static.grid(5000, 100, 1) is None
    vm = maker(tile=16)
    assert vm.num_views(600, 400, 2) == 7  # (2,3) + overview
    assert vm.num_views(600, 400, 3) == 1  # MM1.5: split only with fewer than 3 images


def test_split_config_validation():
    with pytest.raises(ConfigError, match="min_tiles"):
        config_from_dict({"image": {"split": {"min_tiles": 5, "max_tiles": 4}}})
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"image": {"split": {"tiles": 4}}})
    with pytest.raises(ConfigError, match="indicators"):
        config_from_dict({"image": {"split": {"indicators": "tuple"}}})


# ---- token counts on real images (MM1.5 setting: 672 tiles, 144 tokens per view, 4..9 tiles) ----------------------
@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(config_from_dict({}).tokenizer, ["some text"] * 10)


@pytest.mark.parametrize("name, transpose, grid, tokens", [
    # page.png 384x191 (text-rich).  Without down-scaling and without empty tiles: (2,3) scales x5.25 to 2016x1003,
    # padding 6*672^2 - 2016*1002.75 = 687,960; (2,4) scales x7 to 2688x1337, padding 8*672^2 - 2688*1337 = 18,816.
    # (1,4) and (2,2) would leave whole tiles empty.  -> (2,4): 8 tiles + overview = 9 views x 144 = 1296 tokens.
    ("page.png", False, (2, 4), 9 * 144),
    # text.png 448x172 (wide, 2.6:1): (2,4) at x6 = 2688x1032 (padding 838,656) beats (2,3) at x4.5 (1,149,120).
    ("text.png", False, (2, 4), 9 * 144),
    # coffee.png 600x400 turned to 400x600 (tall, 2:3): (3,2) holds it at x3.36 = 1344x2016 with no padding.
    ("coffee.png", True, (3, 2), 7 * 144),
])
def test_real_images_grid_and_tokens(tokenizer, name, transpose, grid, tokens):
    cfg = config_from_dict({"image": {"size": R, "split": {"enabled": True}}})
    processor = Processor(tokenizer, cfg.model, cfg.image)
    image = processor.load_image(DATA / name)
    if transpose:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    canvas = processor.views.grid(*image.size, 1)
    assert (canvas.rows, canvas.cols) == grid
    assert processor.image_token_count(*image.size, 1) == tokens
    assert processor.image_token_count(*image.size, 3) == 144


# ---- the model runs on what the processor makes ----------------------------------------------------------------
SPLITS = [  # (enabled, min, max, overview, indicators)
    (False, 4, 9, "after", "index"), (True, 4, 9, "after", "index"), (True, 1, 16, "before", "seps"),
    (True, 4, 9, "after", "none"),
]


@lru_cache(maxsize=None)
def split_model(split: tuple) -> MM1Model:
    enabled, lo, hi, overview, indicators = split
    return tiny_model(image={"size": 48, "split": {"enabled": enabled, "min_tiles": lo, "max_tiles": hi,
                                                   "overview": overview, "indicators": indicators}})


def run_chat(model: MM1Model, images: list[Image.Image]):
    processor = model.processor
    enc = processor.encode_chat([user("hi", len(images)), assistant("ok")], images)
    batch = processor.collate([enc])
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss)
    expected = sum(processor.image_token_count(*im.size, len(images)) for im in images)
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == expected
    return batch


@settings(max_examples=12, deadline=None)
@given(width=st.integers(1, 8000), data=st.data(), split=st.sampled_from(SPLITS), n_images=st.integers(1, 3))
def test_model_forward_token_count(width, data, split, n_images):
    height = data.draw(st.integers(1, max(1, 400_000 // width)))
    images = [Image.new("RGB", (width, height), (10 * i, 100, 200)) for i in range(n_images)]
    model = split_model(split)
    views = run_chat(model, images)["pixel_values"].shape[0]
    assert views == n_images * model.processor.views.num_views(width, height, n_images)
    if not split[0] or n_images == 3:
        assert views == n_images


def test_model_forward_split_multi_image_and_video():
    model = split_model(SPLITS[1])
    page = model.processor.load_image(DATA / "page.png")
    assert run_chat(model, [page])["pixel_values"].shape[0] == 9  # (2,4) + overview
    three = [page, page.transpose(Image.Transpose.TRANSPOSE), page]
    assert run_chat(model, three)["pixel_values"].shape[0] == 3  # 3 images: not split
    frames = sample_frames(DATA / "no_time_for_that_tiny.gif", n=24)
    batch = run_chat(model, frames)
    assert batch["pixel_values"].shape[0] == 24
    assert int((batch["input_ids"] == model.processor.image_token_id).sum()) == 24 * 4


def test_inspect_image(tokenizer, tmp_path):
    from mm1.data.inspect import inspect_image

    cfg = config_from_dict({"image": {"size": R, "split": {"enabled": True}}})
    info = inspect_image(DATA / "page.png", cfg, tmp_path / "page.png")
    processor = Processor(tokenizer, cfg.model, cfg.image)
    assert info["grid"] == [2, 4] and info["views"] == 9 and info["tokens_per_view"] == 144
    assert info["total_tokens"] == processor.image_token_count(384, 191, 1)
    assert info["layout"][-1] == "(0,0,0)" and len(info["layout"]) == 9
    assert Image.open(tmp_path / "page.png").size[0] > 3 * 384
    assert inspect_image(DATA / "page.png", config_from_dict({}), tmp_path / "static.png")["grid"] is None
