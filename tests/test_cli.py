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
