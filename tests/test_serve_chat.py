"""mm1 chat: the terminal conversation (input() from a scripted stdin)."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from test_serve import png, save_tiny, scripted

import mm1
from mm1.cli import main
from mm1.serve.chat_cli import run_chat

ANSWER = "a red circle [10,20,300,400]"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("chat") / "m")


def test_chat_command_streams_multi_turn_replies(model_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "a.png").write_bytes(png())
    script = f"What is it?\n/image nowhere.png\n/image {tmp_path / 'a.png'}\nAnd now?\n/quit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert main(["chat", str(model_dir), "--image", str(tmp_path / "a.png"), "--max-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("mm1> ") == 2
    assert "(not attached: cannot read image nowhere.png" in out
    assert "(image attached to your next message: 40x30)" in out


def test_grounding_answer_is_drawn(model_dir, tmp_path, monkeypatch, capsys):
    model = scripted(mm1.load(model_dir), ANSWER)
    (tmp_path / "a.png").write_bytes(png(200, 100, colour=(0, 0, 255)))
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/image {tmp_path / 'a.png'}\nWhere is the circle?\nAgain?\n"))
    run_chat(model, out_dir=tmp_path / "out")
    out = capsys.readouterr().out
    assert f"mm1> {ANSWER}\n" in out
    # Multi-turn: the second prompt holds the first exchange; the image came with the first message only.
    (first, pixels_1), (second, pixels_2) = model.calls
    assert "Where is the circle?" in second and ANSWER in second and second.startswith(first)
    assert pixels_1.shape[0] == pixels_2.shape[0] == 1
    assert f"drawn on the last image: {tmp_path / 'out' / 'grounding-1.png'}" in out
    drawn = Image.open(tmp_path / "out" / "grounding-2.png")  # the second answer, on the same image
    assert drawn.size == (200, 100)
    # Box [10,20,300,400] in bins is x 2..60, y 2..40 px on a 200x100 image: red outline, blue inside.
    assert drawn.getpixel((30, 2)) == (255, 0, 0) and drawn.getpixel((30, 20)) == (0, 0, 255)
