"""`mm1 ablate`: the spec validates naming the field, arms become configs through `--set`-style overrides (stages
and sources by name), identical arms train once, the statistics and the paper's directions, and a toy run end to
end on the small world, resumed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY
from mm1.ablate import Expect, arm_stats, check, load_spec, plan, run_ablations, select
from mm1.cli import build_parser
from mm1.config import ConfigError, load_config
from mm1.train.trainer import Trainer

ROOT = Path(__file__).parent.parent
TASKS = ROOT / "recipes" / "tasks"


def base_recipe(path: Path, run_dir: Path) -> Path:
    """The tiny model of conftest on the three stages of the embedded default, its world under `run_dir`."""
    world = run_dir / "world"
    source = {"webdataset": "train-*.tar", "interleaved": "train.parquet", "text": "train.jsonl"}
    stage = {"batch_size": 1, "seq_len": 512, "warmup_steps": 1, "checkpoint_every": 100}
    pretrain = [{"name": name, "format": fmt, "path": str(world / name / source[fmt]), "weight": weight}
                for name, fmt, weight in (("captions", "webdataset", 45), ("interleaved", "interleaved", 45),
                                          ("text", "text", 10))]
    tree = copy.deepcopy(TINY) | {"run_dir": str(run_dir), "tokenizer": {"vocab_size": 1024}, "stages": [
        {"name": "pretrain", **stage, "data": pretrain, "eval": {"tasks": [str(TASKS / "world-vqa.yaml")]}},
        {"name": "cpt", **stage, "image": {"split": {"enabled": True, "min_tiles": 4, "max_tiles": 4}},
         "data": [{"name": "ocr", "format": "webdataset", "path": str(world / "ocr" / "train-*.tar")}]},
        {"name": "sft", **stage, "data": [{"name": "sft", "format": "llava", "path": str(world / "sft/train.json")}]},
    ], "generation": {"max_new_tokens": 4}}
    path.write_text(yaml.safe_dump(tree))
    return path


def study(name: str, arms: list[dict], stages=("pretrain",), **extra) -> dict:
    steps = {s: 2 for s in stages}
    return {"name": name, "finding": f"{name} matters (a paper, §1).", "stages": list(stages), "steps": steps,
            "quick": {"steps": steps, "limit": 2}, "arms": arms,
            "eval": {"tasks": [str(TASKS / "world-vqa.yaml")], "shots": [0], "mode": "base", "limit": 2}} | extra


def write_spec(tmp_path: Path, studies: list[dict], **extra) -> Path:
    recipe = base_recipe(tmp_path / "base.yaml", tmp_path / "run")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"recipe": str(recipe), "studies": studies, "world_size": "small"} | extra))
    return path


TWO_ARMS = [{"name": "c-abstractor"}, {"name": "avg-pool", "set": {"model.connector.type": "avg-pool"}}]


# ---- overrides by stage and source name (config.py) ----------------------------------------------------------
def test_overrides_address_list_items_by_name(tmp_path):
    recipe = base_recipe(tmp_path / "base.yaml", tmp_path / "run")
    cfg = load_config(recipe, ["stages.cpt.steps=7", "stages.pretrain.data.captions.weight=50",
                               "stages.pretrain.data.text=null", "stages.sft=null", "stages.0.lr=0.5"])
    assert [s.name for s in cfg.stages] == ["pretrain", "cpt"] and cfg.stages[1].steps == 7
    assert [(d.name, d.weight) for d in cfg.stages[0].data] == [("captions", 50), ("interleaved", 45)]
    assert cfg.stages[0].lr == 0.5
    with pytest.raises(ConfigError, match=r"no item named 'rlhf'; names: \['pretrain', 'cpt', 'sft'\]"):
        load_config(recipe, ["stages.rlhf.steps=3"])


# ---- the spec ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (lambda s: s["studies"][0].update(stages=["pretrain", "cpt"]), "studies.0: Value error, study a: steps needs"),
    (lambda s: s["studies"][0]["arms"][0].update(sett={}), "studies.0.arms.0.sett: unknown key"),
    (lambda s: s["studies"][0]["arms"].pop(), "study a: arms need at least 2 distinct names"),
    (lambda s: s["studies"][0].update(expect=[{"better": "c-abstractor", "worse": "mlp"}]), "unknown arms ['mlp']"),
    (lambda s: s["studies"][0].update(expect=[{"better": "c-abstractor"}]), "give either better and worse"),
    (lambda s: s["studies"][0]["arms"][1].update(stages=["sft"]), "arm avg-pool: stages ['sft'] must be"),
    (lambda s: s["studies"][0]["eval"].update(shots=[-1]), "studies.0.eval"),
    (lambda s: s.update(seeds=[0, 0]), "seeds must be distinct"),
    (lambda s: s.update(recipe="nope.yaml"), "recipe: nope.yaml does not exist"),
])
def test_bad_spec_names_the_field(tmp_path, change, message):
    path = write_spec(tmp_path, [study("a", copy.deepcopy(TWO_ARMS))])
    tree = yaml.safe_load(path.read_text())
    change(tree)
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert message in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("arms, extra, message", [
    ([{"name": "x"}, {"name": "y", "set": {"model.conector.tokens": 4}}], {}, "arm y: invalid config"),
    ([{"name": "x"}, {"name": "y", "set": {"stages.pretrain.steps": 9}}], {}, "arms x and y train stage pretrain"),
    (TWO_ARMS, {"expect": [{"similar": ["c-abstractor", "avg-pool"], "metrics": ["world-vqa/4-shot"]}]},
     "studies.0.expect: unknown metrics ['world-vqa/4-shot']; the study's evaluation gives ['world-vqa/0-shot']"),
    (TWO_ARMS, {"stages": ["rlhf"], "steps": {"rlhf": 1}, "quick": {"steps": {"rlhf": 1}}},
     "studies.0.stages: ['rlhf']"),
])
def test_plan_errors_name_study_and_arm(tmp_path, arms, extra, message):
    path = write_spec(tmp_path, [study("a", arms, **extra)])
    with pytest.raises(ConfigError) as err:
        plan(load_spec(path), str(path), tmp_path / "out", False, tmp_path / "tok")
    assert message in str(err.value) and str(path) in str(err.value)


def test_arms_become_configs_and_identical_arms_share_a_run(tmp_path):
    cpt = study("cpt", [{"name": "off", "stages": ["pretrain", "sft"]}, {"name": "on"}],
                stages=("pretrain", "cpt", "sft"), steps={"pretrain": 6, "cpt": 3, "sft": 4})
    mixture = study("mixture", [{"name": "captions", "set": {"stages.pretrain.data.interleaved": None,
                                                              "stages.pretrain.data.text": None}}, {"name": "mix"}])
    path = write_spec(tmp_path, [study("connector", TWO_ARMS), mixture, cpt], seeds=[3, 4])
    planned = plan(load_spec(path), str(path), tmp_path / "out", False, tmp_path / "tok")
    runs = {(r.study, r.arm, r.seed): r for r in planned}
    assert len(runs) == 2 * (2 + 2 + 2)
    off, on = runs["cpt", "off", 3].cfg, runs["cpt", "on", 3].cfg
    assert [(s.name, s.steps) for s in off.stages] == [("pretrain", 6), ("sft", 4)]
    assert [(s.name, s.steps) for s in on.stages] == [("pretrain", 6), ("cpt", 3), ("sft", 4)]
    assert all(s.eval is None for s in on.stages) and on.tokenizer.path == str(tmp_path / "tok")
    assert [d.name for d in runs["mixture", "captions", 3].cfg.stages[0].data] == ["captions"]
    assert runs["connector", "avg-pool", 4].cfg.model.connector.type == "avg-pool"
    assert runs["connector", "avg-pool", 4].cfg.seed == 4
    # The baseline appears in two studies: one run per seed; every other arm and seed has its own.
    assert runs["connector", "c-abstractor", 3].run_dir == runs["mixture", "mix", 3].run_dir
    assert len({r.run_dir for r in runs.values()}) == 2 * 5
    assert runs["connector", "c-abstractor", 3].run_dir.name.endswith("-s3")
    assert runs["connector", "c-abstractor", 3].summary == runs["mixture", "mix", 3].summary
    quick = plan(load_spec(path), str(path), tmp_path / "out", True, tmp_path / "tok")
    assert {s.steps for r in quick for s in r.cfg.stages} == {2} and {r.eval.limit for r in quick} == {2}
    assert select(load_spec(path), ["cpt"], [9]).studies[0].name == "cpt"
    with pytest.raises(ConfigError, match="unknown studies"):
        select(load_spec(path), ["nope"], None)


def test_command_line():
    args = build_parser().parse_args(["ablate", "--quick", "--seeds", "0,2", "--studies", "cpt"])
    assert (args.spec, args.quick, args.seeds, args.studies, args.out) == (
        "recipes/ablations/tiny.yaml", True, "0,2", "cpt", None)
    assert args.func.__name__ == "cmd_ablate"


def test_shipped_spec_plans():
    spec_path = ROOT / "recipes" / "ablations" / "tiny.yaml"
    spec = load_spec(spec_path)
    runs = plan(spec, str(spec_path), Path("runs/ablate-quick"), True, Path("runs/ablate-quick/tokenizer"))
    assert {s.name for s in spec.studies} == {"resolution", "connector", "tokens", "mixture", "cpt"}
    assert len(runs) == 2 * (2 + 3 + 2 + 4 + 2) and len({r.run_dir for r in runs}) == 2 * 10  # baseline shared


# ---- statistics and the paper's direction -----------------------------------------------------------------------
def test_arm_stats_and_directions():
    stats = arm_stats({0: {"m": 0.2}, 1: {"m": 0.4}, 2: {"m": 0.3}})
    assert stats["mean"]["m"] == pytest.approx(0.3) and stats["std"]["m"] == pytest.approx(0.1) and stats["n"] == 3
    assert arm_stats({0: {"m": 0.5}})["std"]["m"] == 0.0
    arms = {"hi": {"mean": {"m": 0.5}, "std": {"m": 0.03}}, "lo": {"mean": {"m": 0.3}, "std": {"m": 0.04}},
            "near": {"mean": {"m": 0.46}, "std": {"m": 0.03}}}
    row = check(Expect(better="hi", worse="lo"), arms, "m")
    assert row["reproduced"] == "yes"
    assert row["difference"] == pytest.approx(0.2) and row["noise"] == pytest.approx(0.05)
    assert check(Expect(better="lo", worse="hi"), arms, "m")["reproduced"] == "no (opposite)"
    assert check(Expect(better="near", worse="hi"), arms, "m")["reproduced"] == "within noise"
    assert check(Expect(similar=["hi", "near"]), arms, "m")["reproduced"] == "yes (within noise)"
    assert check(Expect(similar=["near", "lo", "hi"]), arms, "m")["reproduced"] == "no (hi ahead of lo)"


# ---- end to end -------------------------------------------------------------------------------------------------
def test_toy_ablation_end_to_end_and_resume(tmp_path):
    tokens = study("tokens", [{"name": "4-tokens"}, {"name": "16-tokens", "set": {"model.connector.tokens": 16}}],
                   expect=[{"better": "16-tokens", "worse": "4-tokens"}])
    spec = write_spec(tmp_path, [study("connector", TWO_ARMS, expect=[{"similar": ["c-abstractor", "avg-pool"]}]),
                                 tokens])
    out, lines = tmp_path / "out", []
    results = run_ablations(spec, out, quick=True, seeds=[0, 1], log=lines.append)
    for name, arms in (("connector", TWO_ARMS), ("tokens", tokens["arms"])):
        study_results = results["studies"][name]
        for arm in arms:
            entry = study_results["arms"][arm["name"]]
            assert set(entry["scores"]) == {0, 1} and entry["n"] == 2
            assert set(entry["mean"]) == {"world-vqa/0-shot"} and 0 <= entry["mean"]["world-vqa/0-shot"] <= 1
        assert len(study_results["checks"]) == 1
    assert "6 distinct runs for 8 study arms x seeds; 0 already done" in lines
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["studies"]["tokens"]["arms"]["4-tokens"]["runs"]["1"].endswith("-s1")
    table = (out / "ablations.md").read_text()
    assert "| 16-tokens | " in table and "| 16-tokens > 4-tokens | world-vqa/0-shot |" in table
    assert (out / "ablations.png").stat().st_size > 0 and (tmp_path / "run" / "world" / "world.json").is_file()
    # A rerun trains and evaluates nothing, and gives the same numbers.
    lines.clear()
    again = run_ablations(spec, out, quick=True, seeds=[0, 1], log=lines.append)
    assert "6 already done" in lines[0] and not any(line.startswith("[") for line in lines)
    assert json.dumps(again["studies"]) == json.dumps(results["studies"])


def test_arms_that_differ_only_later_train_their_common_stages_once(tmp_path):
    """Two arms that differ only in the CPT stage share pre-training: it trains once, is copied into the other
    run, and the copy is what training it there would have given (so sharing changes no number)."""
    arms = [{"name": "lr-1e-3", "set": {"stages.cpt.lr": 1e-3}}, {"name": "lr-1e-4", "set": {"stages.cpt.lr": 1e-4}}]
    spec = write_spec(tmp_path, [study("cpt-lr", arms, stages=("pretrain", "cpt"))])
    out, lines = tmp_path / "out", []
    results = run_ablations(spec, out, quick=True, seeds=[0], log=lines.append)
    first, second = (Path(results["studies"]["cpt-lr"]["arms"][a["name"]]["runs"][0]) for a in arms)
    assert [line for line in lines if "copied" in line] == [f"  stage pretrain: the same as in {first}, copied"]
    assert not (second / "pretrain" / "checkpoints").exists() and (second / "cpt" / "model").is_dir()
    alone = load_config(second / "config.yaml", [f"run_dir={tmp_path / 'alone'}"])
    Trainer(alone, log=lambda _: None, progress=False).run()
    shared, trained = (load_file(run / "pretrain" / "model" / "model.safetensors") for run in (second, tmp_path / "alone"))
    assert shared.keys() == trained.keys() and all(torch.equal(shared[k], trained[k]) for k in shared)
