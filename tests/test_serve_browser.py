"""The web chat page at `/`, in headless Chromium (Debian's package; playwright's own download is never used).

The model is scripted to answer with a box (the tiny random model never writes coordinates), through the real server,
batcher and streaming path.
"""

from __future__ import annotations

import os
import shutil

import pytest
from playwright.sync_api import sync_playwright
from test_serve import png, running, save_tiny, scripted

import mm1
from mm1.data.coords import parse_regions
from mm1.serve.api import create_app

ANSWER = "The circle is at [10,20,300,400]."
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    if executable is None:
        reason = "chromium is not installed (apt-get install -y --no-install-recommends chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must install it (.ci/run does)")
        pytest.skip(reason)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = scripted(mm1.load(save_tiny(tmp_path_factory.mktemp("page") / "m")), ANSWER)
    with running(create_app(model, "tiny")) as url:
        yield url, model


def test_page_sends_image_streams_reply_and_draws_box(browser, server, tmp_path):
    url, model = server
    (tmp_path / "shapes.png").write_bytes(png(400, 300, colour=(0, 0, 255)))
    page = browser.new_page(viewport={"width": 900, "height": 640})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
    page.set_input_files("#file", str(tmp_path / "shapes.png"))
    page.wait_for_selector("#preview:not([hidden])")
    page.fill("#text", "Where is the circle?")
    page.press("#text", "Enter")
    page.wait_for_selector(".assistant canvas", timeout=20_000)
    assert page.inner_text(".user") == "Where is the circle?"
    assert page.inner_text(".assistant") == ANSWER
    prompt, pixels = model.calls[-1]
    assert "Where is the circle?" in prompt and pixels is not None and pixels.shape[0] == 1  # the upload was sent
    # Box [10,20,300,400] in bins on the 400x300 image: x 4..120, y 6..120 px; red outline over the blue image.
    pixel = "([x, y]) => Array.from(document.querySelector('.assistant canvas').getContext('2d')" \
            ".getImageData(x, y, 1, 1).data.slice(0, 3))"
    assert page.evaluate("[document.querySelector('.assistant canvas').width, " 
                         "document.querySelector('.assistant canvas').height]") == [400, 300]
    assert page.evaluate(pixel, [60, 6]) == [255, 0, 0]  # top edge
    assert page.evaluate(pixel, [4, 60]) == [255, 0, 0]  # left edge
    assert page.evaluate(pixel, [60, 60]) == [0, 0, 255]  # inside: the image itself
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert errors == []

    # A second turn carries the conversation (with the earlier image) and shows a second reply.
    page.fill("#text", "Thanks")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.assistant canvas').length === 2")
    prompt, pixels = model.calls[-1]
    assert prompt.count(ANSWER) == 1 and "Thanks" in prompt and pixels.shape[0] == 1


def test_page_parses_coordinates_like_python(browser, server):
    url, _ = server
    page = browser.new_page()
    page.goto(url)
    text = "a [1, 2] b [5,6,4,9] c [ 10,20 ,300, 400] d [1000,1] e [3,4,5] f [citation] g [7,8"
    regions, _ = parse_regions(text)
    expected = [{"kind": r.kind, "coords": list(r.coords)} for r in regions]
    assert page.evaluate("parseRegions", text) == expected


def test_page_shows_a_refusal_and_goes_on(browser, server, tmp_path):
    url, _ = server
    (tmp_path / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    page = browser.new_page()
    page.goto(url)
    page.set_input_files("#file", str(tmp_path / "drawing.svg"))
    page.wait_for_selector("#preview:not([hidden])")
    page.fill("#text", "What is this?")
    page.click("#send")
    page.wait_for_selector(".assistant.error")
    assert "unsupported image type 'image/svg+xml'" in page.inner_text(".assistant.error")
    page.fill("#text", "Hello?")  # the refused message left the conversation; the next one is answered
    page.click("#send")
    page.wait_for_function(f"[...document.querySelectorAll('.assistant')].at(-1).textContent === {ANSWER!r}")
