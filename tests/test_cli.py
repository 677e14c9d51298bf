import subprocess
import sys

from mm1.cli import main


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "mm1.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("config", "demo"):
        assert command in out.stdout


def test_config_error_exits_2_with_message(capsys):
    assert main(["config", "recipes/tiny.yaml", "--set", "model.connector.tokens=10"]) == 2
    assert "connector.tokens=10 must be a square" in capsys.readouterr().err


def test_config_prints_resolved_overrides(capsys):
    assert main(["config", "recipes/tiny.yaml", "--set", "model.connector.type=avg-pool"]) == 0
    assert "type: avg-pool" in capsys.readouterr().out


def test_inspect_image_writes_png_and_budget(tmp_path, capsys):
    from pathlib import Path

    import skimage
    from PIL import Image

    page = Path(skimage.__file__).parent / "data" / "page.png"  # 384x191, text-rich
    out = tmp_path / "inspect.png"
    assert main(["inspect-image", str(page), "--config", "recipes/tiny.yaml", "--set", "image.split.enabled=true",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # 4..9 tiles: a 2x4 grid holds the 2:1 page with the least padding, plus the overview = 9 views x 16 tokens.
    assert "grid [2, 4], 9 views x 16 tokens = 144 image tokens" in printed
    assert Image.open(out).size[0] > 600


def test_data_validate_counts_and_names_bad_records(tmp_path, capsys):
    from conftest import png, write_shard

    write_shard(tmp_path / "s.tar", [("a.png", png()), ("a.txt", b"fine"), ("b.png", b"\x89PNG broken"),
                                     ("b.txt", b"bad image"), ("c.txt", b"no image")])
    assert main(["data", "validate", str(tmp_path / "s.tar"), "--format", "webdataset"]) == 1
    out = capsys.readouterr().out
    assert "3 records read, 2 skipped" in out
    assert "s.tar record b" in out and "cannot decode image" in out and "no image member" in out
    assert main(["data", "validate", str(tmp_path / "nothing"), "--format", "text"]) == 2
    assert "does not exist" in capsys.readouterr().err
