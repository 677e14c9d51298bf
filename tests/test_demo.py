"""The main job (`make demo`) end to end, at toy length: world -> encoder stage and the three MM1.5 stages ->
evaluation -> report -> answer."""

import json
from pathlib import Path

import yaml

from mm1.config import config_from_dict
from mm1.data.readers import files
from mm1.demo import run_demo

RECIPE = Path(__file__).parent.parent / "recipes" / "tiny.yaml"


def test_demo_runs_every_step(tmp_path):
    tree = yaml.safe_load(RECIPE.read_text().replace("runs/tiny", str(tmp_path / "run")))
    for stage in tree["stages"]:
        stage.update(steps=2, warmup_steps=1, checkpoint_every=2)
        if "eval" in stage:
            stage["eval"]["limit"] = 2
            if stage["eval"].get("shots"):
                stage["eval"]["shots"] = [0, 2]  # the small world's support set holds a few examples only
    summary = run_demo(config_from_dict(tree), world_size="small", log=lambda _: None)
    run = tmp_path / "run"
    assert set(summary["scores"]) == {"pretrain", "sft"}
    assert set(summary["scores"]["pretrain"]) == {"world-vqa/0-shot", "world-vqa/2-shot"}
    assert len(summary["scores"]["sft"]) == 8 and all(0 <= v <= 10 for v in summary["scores"]["sft"].values())
    report = (run / "report.md").read_text()
    for stage in ("encoder", "pretrain", "cpt", "sft"):
        assert f"| {stage} | 2 |" in report and (run / stage / "loss.png").is_file()
    assert (run / "scores.png").is_file() and (run / "answer.png").is_file()
    # Each evaluated stage leaves its predictions, and the report carries their details (partial credit, and
    # whether answers depend on the image), not only the scores.
    assert (run / "sft" / "eval" / "predictions" / "world-grounding_0shot.jsonl").is_file()
    assert "| world-grounding | 0 | chat |" in report and "no_region=" in report and "same_answer=" in report
    assert set(summary["probes"]) == {"encoder", "pretrain", "cpt", "sft"}
    assert "## What the image tokens carry" in report and "| shape | " in report
    assert summary["example"]["question"].startswith("Where is ") and summary["example"]["truth"].startswith("[")
    assert json.loads((run / "summary.json").read_text())["model"] == str(run / "sft" / "model")
    # Training never reads the held-out split: every file behind every source is a training file.
    for stage in tree["stages"]:
        for source in stage["data"]:
            suffix = {"webdataset": ("tar",), "interleaved": ("parquet",), "text": ("jsonl",), "llava": ("json",)}
            assert all(f.name.startswith("train") for f in files(source["path"], suffix[source["format"]]))
