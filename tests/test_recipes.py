"""Paper-scale recipes (recipes/mm1, recipes/mm1.5) and their tiny counterparts: they validate, carry the papers'
numbers, build the intended MoE layout on the meta device, and `base:` inheritance merges as documented."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from mm1.config import ConfigError, load_config
from mm1.data.readers import READERS, open_reader
from mm1.data.tokenizer import build_tokenizer
from mm1.model.mllm import MM1Model
from mm1.plan import build_meta
from mm1.train.trainer import Trainer, corpus_texts

RECIPES = Path(__file__).parent.parent / "recipes"
ALL = sorted([*RECIPES.glob("*.yaml"), *RECIPES.glob("mm1/*.yaml"), *RECIPES.glob("mm1.5/*.yaml")])
PROCESSES = 256  # the paper recipes' batch sizes are per process, written for 256 processes
# Recipe -> nominal LLM size N of the learning-rate rule (MoE models use their dense counterpart's).
SIZES = {"mm1/3b": 3e9, "mm1/7b": 7e9, "mm1/30b": 30e9, "mm1/3b-moe": 3e9, "mm1/7b-moe": 7e9,
         "mm1.5/1b": 1e9, "mm1.5/3b": 3e9, "mm1.5/7b": 7e9, "mm1.5/30b": 30e9, "mm1.5/1b-moe": 1e9,
         "mm1.5/3b-moe": 3e9, "mm1.5/video": 7e9, "mm1.5/ui": 1e9}


def stage(cfg, name):
    return next(s for s in cfg.stages if s.name == name)


@pytest.mark.parametrize("recipe", ALL, ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_validates(recipe):
    assert load_config(recipe).stages


@pytest.mark.parametrize("name", SIZES)
def test_paper_recipes(name):
    cfg = load_config(RECIPES / f"{name}.yaml")
    enc, conn = cfg.model.encoder, cfg.model.connector
    assert (enc.type, enc.image_size, enc.patch_size, enc.hidden_size, enc.layers) == ("clip", 378, 14, 1280, 32)
    assert (conn.type, conn.tokens) == ("c-abstractor", 144)
    pre = stage(cfg, "pretrain")
    eta = math.exp(-0.4214 * math.log(SIZES[name]) - 0.5535)
    assert pre.lr == pytest.approx(eta, rel=1e-3)
    assert pre.lr * pre.weight_decay == pytest.approx(0.1 * eta, rel=1e-3)  # torch applies lr x weight_decay
    assert (pre.steps, pre.batch_size * pre.grad_accum * PROCESSES, pre.seq_len) == (200_000, 512, 4096)
    assert (pre.max_images_per_sequence, pre.warmup_steps, pre.min_lr_ratio) == (16, 2000, 0.1)
    assert set(pre.trainable) == {"encoder", "connector", "llm"}
    weights = {s.name: s.weight for s in pre.data}
    assert weights == ({"captions": 45, "interleaved": 45, "text": 10} if name.startswith("mm1/")
                       else {"captions": 50, "interleaved": 10, "text": 40})
    assert cfg.run_dir.startswith("runs/") and cfg.model.encoder.path is None and cfg.model.llm.max_positions == 4096
    if name.startswith("mm1/"):
        sft = stage(cfg, "sft")
        assert (sft.steps, sft.batch_size * PROCESSES, sft.seq_len, sft.lr, sft.optimizer) == \
               (10_000, 256, 2048, 1e-5, "adafactor")
        assert (sft.image.size, sft.image.split.min_tiles, sft.image.split.max_tiles) == (672, 4, 4)  # 1344 px
        return
    cpt, sft = stage(cfg, "cpt"), stage(cfg, "sft")
    assert (cpt.steps, cpt.batch_size * PROCESSES, cpt.lr, cpt.min_lr_ratio, cpt.optimizer) == \
           (30_000, 256, 1e-5, 0.0, "adafactor")
    assert (cpt.image.size, cpt.image.split.enabled, cpt.image.split.max_tiles) == (672, True, 4)
    assert {s.name for s in cpt.data} == {"pdfa", "idl", "rendered-text", "docstruct-4m"}
    assert len({s.weight for s in cpt.data}) == 1  # sampled equally
    assert (sft.steps, sft.batch_size * PROCESSES, sft.lr, sft.optimizer) == (23_000, 256, 2e-5, "adafactor")
    assert (sft.image.split.min_tiles, sft.image.split.max_tiles, sft.image.split.overview) == (4, 9, "after")
    shares = {s.options["category"]: s.weight for s in sft.data}
    assert shares == {"text-rich": 37.2, "refer-ground": 22.5, "general": 11.3, "math": 5.6, "code": 2.3,
                      "science": 1.1, "multi-image": 10, "text-only": 10}
    for category, alpha in {"refer-ground": 2.0, "math": 0.5, "code": 0.2, "science": 0.1}.items():
        assert shares[category] / shares["general"] == pytest.approx(alpha, abs=0.02)  # spec 6.2 alphas


@pytest.mark.parametrize("name, experts, sparse", [
    ("mm1/3b-moe", 64, list(range(1, 26, 2))),
    ("mm1/7b-moe", 32, list(range(3, 32, 4))),
    ("mm1.5/1b-moe", 64, list(range(1, 22, 2))),
    ("mm1.5/3b-moe", 64, list(range(1, 26, 2))),
])
def test_moe_recipes_build_the_intended_experts(name, experts, sparse):
    cfg = load_config(RECIPES / f"{name}.yaml")
    moe = cfg.model.llm.moe
    assert (moe.top_k, moe.balance_loss, moe.z_loss) == (2, 0.01, 0.001)
    llm = build_meta(cfg)["llm"]
    assert llm.config.num_experts == experts and llm.config.num_experts_per_tok == 2
    layers = llm.model.layers
    assert [i for i, layer in enumerate(layers) if hasattr(layer.mlp, "experts")] == sparse
    width, ffn = cfg.model.llm.hidden_size, cfg.model.llm.intermediate_size
    assert layers[sparse[0]].mlp.experts.down_proj.shape == (experts, width, ffn)  # experts as wide as the FFN


def test_variants_append_one_stage_to_their_base():
    for variant, base, new in (("mm1.5/video", "mm1.5/7b", "video"), ("mm1.5/ui", "mm1.5/1b", "ui"),
                               ("tiny-video", "tiny", "video"), ("tiny-ui", "tiny", "ui")):
        cfg, parent = load_config(RECIPES / f"{variant}.yaml"), load_config(RECIPES / f"{base}.yaml")
        assert cfg.stages[:-1] == parent.stages and cfg.stages[-1].name == new
        assert cfg.model == parent.model and cfg.run_dir == parent.run_dir  # trains on from the base run's SFT
    video = load_config(RECIPES / "mm1.5/video.yaml").stages[-1]
    assert {s.options["video_frames"] for s in video.data} == {24} and video.seq_len >= 24 * 144


def test_the_long_mode_is_the_default_with_lookup_stages_and_a_longer_sft():
    """The default's model and first three stages step for step, then a lookup stage on position questions alone
    (long enough for the lookup to form, at a constant low lr), one that widens it to the other kinds, and a longer
    SFT that reads those questions too, all on one view per image as the lookup learnt."""
    long, default = load_config(RECIPES / "tiny-long.yaml"), load_config(RECIPES / "tiny.yaml")
    assert long.model == default.model and not long.model.connector.position_embedding
    assert long.world_dir() == default.world_dir() == Path("runs/tiny/world") and long.run_dir != default.run_dir
    assert [s.name for s in long.stages] == ["encoder", "pretrain", "cpt", "lookup-position", "lookup", "sft"]
    assert long.stages[:3] == default.stages[:3]
    stages = {s.name: s for s in long.stages}
    position, lookup, sft = stages["lookup-position"], stages["lookup"], stages["sft"]
    for stage in (position, lookup):
        assert [(s.format, s.path) for s in stage.data] == [("world-questions", "runs/tiny/world")]
        assert stage.lr <= 3e-4 and not stage.image.split.enabled and stage.trainable == ["connector", "llm"]
    assert position.data[0].options["kinds"] == ["position"] and position.min_lr_ratio == 1.0
    assert position.steps * position.batch_size >= 150_000
    assert set(lookup.data[0].options["kinds"]) == {"position", "size", "ground-box"}
    theirs = default.stages[-1]
    assert [s for s in sft.data if s.format != "world-questions"] == theirs.data
    assert (sft.lr, sft.batch_size, sft.seq_len) == (theirs.lr, theirs.batch_size, theirs.seq_len)
    assert sft.steps >= 1.5 * theirs.steps and not sft.image.split.enabled
    assert sft.eval.limit is None and sft.eval.tasks == theirs.eval.tasks
    assert [s.options["kinds"] for s in sft.data if s.format == "world-questions"] == [lookup.data[0].options["kinds"]]


def test_the_reading_recipe_is_the_default_with_a_sign_curriculum_before_its_sft():
    """The default's stages and tokenizer corpus, then signs of 1, 2-3 and 3-7 letters with the encoder trained:
    one view while a letter or two fill it, tiles as the SFT's for words; the SFT is the default's."""
    reading, default = load_config(RECIPES / "tiny-reading.yaml"), load_config(RECIPES / "tiny.yaml")
    assert reading.model == default.model and reading.run_dir != default.run_dir
    assert reading.stages[:3] == default.stages[:3] and reading.stages[-1] == default.stages[-1]
    def files(cfg):  # what the tokenizer is trained on (corpus_texts)
        return [s for stage in cfg.stages for s in stage.data if READERS.get(s.format).file_backed]
    assert files(reading) == files(default)
    curriculum = reading.stages[3:-1]
    assert [s.data[0].options["letters"] for s in curriculum] == [[1, 1], [2, 3], [3, 7]]
    for stage in curriculum:
        assert [(s.format, s.path) for s in stage.data] == [("world-signs", "runs/tiny/world")]
        assert stage.trainable == ["encoder", "connector", "llm"] and stage.lr_multipliers["encoder"] > 1
    assert [s.image.split.enabled for s in curriculum] == [False, False, True]
    assert curriculum[-1].image.split == default.stages[-1].image.split
    assert curriculum[-1].eval.tasks == ["recipes/tasks/world-ocr.yaml"]


def test_the_tokenizer_corpus_leaves_drawn_sources_out_when_there_are_files(tmp_path):
    """Sources drawn as they are read (the world's formats) repeat the world's templates: a recipe that adds them to
    another trains the same tokenizer (the longer mode's is the default's), and they are read only when alone."""
    text = tmp_path / "text.jsonl"
    text.write_text('{"text": "a red circle"}\n{"text": "two blue squares"}\n')
    drawn = {"name": "questions", "format": "world-questions", "path": str(tmp_path / "no-world")}
    def recipe(*sources):
        return load_config(write(tmp_path / "r.yaml", {"stages": [{"name": "sft", "data": list(sources)}]}))
    files = recipe({"name": "text", "format": "text", "path": str(text)})
    both = recipe({"name": "text", "format": "text", "path": str(text)}, drawn)
    assert list(corpus_texts(both)) == list(corpus_texts(files)) == ["a red circle", "two blue squares"]
    with pytest.raises(FileNotFoundError, match="world.json"):  # alone, the drawn source is what there is to read
        list(corpus_texts(recipe(drawn)))


def write(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def test_base_merges_mappings_and_named_lists(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", {
        "model": {"connector": {"type": "avg-pool", "tokens": 64}},
        "stages": [{"name": "a", "steps": 5, "warmup_steps": 1, "trainable": ["llm"],
                    "data": [{"name": "x", "format": "text", "path": "x", "weight": 1},
                             {"name": "y", "format": "text", "path": "y", "weight": 2}]}]})
    variant = write(tmp_path / "sub" / "v.yaml", {
        "base": "../base.yaml", "model": {"connector": {"tokens": 16}},
        "stages": [{"name": "a", "steps": 7, "trainable": ["connector"], "data": [{"name": "y", "weight": 9}]},
                   {"name": "b", "steps": 3, "warmup_steps": 0}]})
    cfg = load_config(variant, ["stages.1.steps=4"])
    assert (cfg.model.connector.type, cfg.model.connector.tokens) == ("avg-pool", 16)  # deep merge
    a, b = cfg.stages
    assert (a.name, a.steps, a.warmup_steps, a.trainable) == ("a", 7, 1, ["connector"])  # plain lists replace
    assert [(s.name, s.path, s.weight) for s in a.data] == [("x", "x", 1), ("y", "y", 9)]  # named lists merge
    assert (b.name, b.steps) == ("b", 4)  # new names append; overrides apply after the merge
    write(tmp_path / "m.yaml", {"base": "base.yaml", "stages": [{"name": "a"}, {"name": "z", "steps": 2,
                                                                                "warmup_steps": 0}]})
    inner = write(tmp_path / "i.yaml", {"base": "m.yaml", "stages": [{"name": "a"}, {"name": "b", "steps": 3,
                                                                                    "warmup_steps": 0}]})
    assert [s.name for s in load_config(inner).stages] == ["a", "b", "z"]  # a new name goes after the one before it


def test_base_errors_name_the_files(tmp_path):
    missing = write(tmp_path / "m.yaml", {"base": "nope.yaml"})
    with pytest.raises(ConfigError, match=r"nope.yaml does not exist \(base of .*m.yaml\)"):
        load_config(missing)
    write(tmp_path / "a.yaml", {"base": "b.yaml"})
    write(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    bad = write(tmp_path / "bad.yaml", {"base": str(RECIPES / "tiny.yaml"), "model": {"connector": {"tokens": 15}}})
    with pytest.raises(ConfigError, match=f"invalid config in {bad}"):
        load_config(bad)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mm1.data.world import generate

    root = tmp_path_factory.mktemp("repo")
    generate(root / "runs/tiny/world", 0, "small")
    return root


@pytest.mark.parametrize("variant, new", [("tiny-video", "video"), ("tiny-ui", "ui")])
def test_tiny_variant_trains_its_stage_from_an_sft_model(world, monkeypatch, variant, new):
    """The variant's stage reads its category of the synthetic world and trains from the previous stage's model."""
    monkeypatch.chdir(world)  # the recipes' data paths are relative to the repository root
    recipe = RECIPES / f"{variant}.yaml"
    index = [s.name for s in load_config(recipe).stages].index(new)
    cfg = load_config(recipe, [f"stages.{index}.steps=2", f"stages.{index}.warmup_steps=1",
                               f"stages.{index}.batch_size=2", f"stages.{index}.checkpoint_every=2",
                               f"run_dir=runs/{variant}"])
    previous = cfg.stages[index - 1].name
    MM1Model(cfg, build_tokenizer(cfg.tokenizer, corpus_texts(cfg, 200))).save_pretrained(
        Path(cfg.run_dir) / previous / "model")  # stands in for the finished SFT stage
    seen = []
    trainer = Trainer(cfg, progress=False, log=seen.append)
    trainer.run(new)
    assert (Path(cfg.run_dir) / new / "model" / "model.safetensors").is_file()
    assert any(line.startswith(f"stage {new} ") and f"from {cfg.run_dir}/{previous}/model" in line for line in seen)
    source = cfg.stages[index].data[0]
    records = list(open_reader(source.format, source.path, sharded=False, **source.options))
    assert records and {r.category for r in records} == {new}
