"""The trainer: stage chaining, exact resume, crash-safe checkpoints, non-finite losses, and torchrun (gloo)."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY, png, write_shard
from transformers import AutoTokenizer

from mm1.config import ConfigError, ContrastiveConfig, config_from_dict, to_dict
from mm1.model.mllm import MM1Model
from mm1.train import checkpoint
from mm1.train.contrastive import ContrastiveModel, greyscale, swap_groups, swapped
from mm1.train.trainer import NonFiniteLossError, Trainer

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 30)]
NAMES = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "caps").mkdir()
    items = []
    for i in range(24):
        c = i % 4
        items += [(f"{i:05d}.png", png(COLOURS[c], (16 + i, 12))), (f"{i:05d}.txt", f"a {NAMES[c]} box.".encode())]
    write_shard(root / "caps" / "train-000000.tar", items)
    (root / "text.jsonl").write_text("".join(json.dumps({"text": f"{a} plus {a} is {2 * a}."}) + "\n" for a in range(9)))
    (root / "imgs").mkdir()
    sft = []
    for i in range(12):
        c = i % 4
        (root / "imgs" / f"{i}.png").write_bytes(png(COLOURS[c], (20, 20 + i)))
        sft.append({"id": str(i), "image": f"imgs/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": NAMES[c]}]})
    (root / "sft.json").write_text(json.dumps(sft))
    return root


def recipe(data, run_dir, **stage_overrides):
    pretrain = {"name": "pretrain", "steps": 6, "batch_size": 2, "seq_len": 64, "lr": 3e-3, "warmup_steps": 2,
                "checkpoint_every": 3, "data": [
                    {"name": "captions", "format": "webdataset", "path": str(data / "caps"), "weight": 3},
                    {"name": "text", "format": "text", "path": str(data / "text.jsonl"), "weight": 1}]}
    pretrain.update(stage_overrides)
    tree = json.loads(json.dumps(TINY))
    tree.update(stages=[pretrain], run_dir=str(run_dir), seed=5)
    return tree


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def test_three_stages_chain(data, tmp_path):
    tree = recipe(data, tmp_path / "run")
    cpt = dict(tree["stages"][0], name="cpt", steps=3, image={"size": 32, "split": {"enabled": True, "min_tiles": 2, "max_tiles": 4}},
               seq_len=256, max_images_per_sequence=2)
    sft = {"name": "sft", "steps": 4, "batch_size": 2, "seq_len": 128, "lr": 1e-3, "warmup_steps": 1,
           "packing": False, "trainable": ["connector", "llm"],
           "data": [{"name": "sft", "format": "llava", "path": str(data / "sft.json")}]}
    tree["stages"] += [cpt, sft]
    final = Trainer(config_from_dict(tree), progress=False).run()
    assert final == tmp_path / "run" / "sft" / "model"
    for stage in ("pretrain", "cpt", "sft"):
        rows = [json.loads(l) for l in (tmp_path / "run" / stage / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and (tmp_path / "run" / stage / "loss.png").is_file()
    # SFT froze the encoder: it leaves the stage exactly as the continual pre-training exported it.
    before, after = weights(tmp_path / "run" / "cpt" / "model"), weights(final)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("llm."))
    import mm1
    model = mm1.load(final)
    assert model.config.image.split.enabled is False  # the SFT stage's (default) image settings travel with it
    # A finished run is not trained again.
    assert Trainer(config_from_dict(tree), progress=False).run() == final


def test_resume_is_bit_exact(data, tmp_path, monkeypatch):
    tree = recipe(data, tmp_path / "straight", steps=7, checkpoint_every=3)
    Trainer(config_from_dict(tree), progress=False).run()
    reference = weights(tmp_path / "straight" / "pretrain" / "model")
    ref_rows = (tmp_path / "straight" / "pretrain" / "metrics.jsonl").read_text()

    import mm1.train.trainer as trainer_module
    real_step = trainer_module.optimizer_step
    calls = {"n": 0}

    def crash_at_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated crash after step 4")
        return real_step(*args, **kwargs)

    tree = recipe(data, tmp_path / "resumed", steps=7, checkpoint_every=3)
    monkeypatch.setattr(trainer_module, "optimizer_step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config_from_dict(tree), progress=False).run()
    monkeypatch.setattr(trainer_module, "optimizer_step", real_step)
    assert [p.name for p in checkpoint.checkpoints(tmp_path / "resumed" / "pretrain" / "checkpoints")] == ["step-00000003"]
    Trainer(config_from_dict(tree), progress=False).run()
    resumed = weights(tmp_path / "resumed" / "pretrain" / "model")
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    strip = lambda text: [{k: v for k, v in json.loads(l).items() if k != "tokens_per_s"} for l in text.splitlines()]
    assert strip((tmp_path / "resumed" / "pretrain" / "metrics.jsonl").read_text()) == strip(ref_rows)


def test_kill_during_checkpoint_leaves_previous_loadable(data, tmp_path):
    tree = recipe(data, tmp_path / "run", steps=6, checkpoint_every=2)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(tree))
    script = textwrap.dedent(f"""
        import os, signal
        import torch.distributed.checkpoint as dcp
        from mm1.config import load_config
        from mm1.train.trainer import Trainer
        real, calls = dcp.save, [0]
        def save_then_die(*args, **kwargs):
            real(*args, **kwargs)
            calls[0] += 1
            if calls[0] == 2:  # the second checkpoint's shards are written, its metadata and rename are not
                os.kill(os.getpid(), signal.SIGKILL)
        dcp.save = save_then_die
        Trainer(load_config({str(tmp_path / 'recipe.yaml')!r}), progress=False).run()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    folder = tmp_path / "run" / "pretrain" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000002", "step-00000004.tmp"]
    assert [p.name for p in checkpoint.checkpoints(folder)] == ["step-00000002"]
    Trainer(config_from_dict(tree), progress=False).run()  # resumes from step 2 and finishes
    assert [p.name for p in checkpoint.checkpoints(folder)] == ["step-00000004", "step-00000006"]


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nonfinite_loss(data, tmp_path, monkeypatch, policy):
    tree = recipe(data, tmp_path / "run", steps=4, checkpoint_every=2, on_nonfinite=policy)
    import mm1.model.mllm as mllm
    real_forward = mllm.MM1Model.forward
    calls = {"n": 0}

    def nan_at_3(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(mllm.MM1Model, "forward", nan_at_3)
    trainer = Trainer(config_from_dict(tree), progress=False, log=lambda _: None)
    if policy == "stop":
        with pytest.raises(NonFiniteLossError, match="step 3: loss nan.*Last good checkpoint: .*step-00000002"):
            trainer.run()
    else:
        trainer.run()
        rows = [json.loads(l) for l in (tmp_path / "run" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["skipped_steps"] == 1 and rows[-1]["step"] == 4


def run_torchrun(tree, tmp_path, nproc):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(tree))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "-m", "mm1.cli", "train", str(tmp_path / "recipe.yaml")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_match_one(data, tmp_path, strategy):
    """2 ranks x batch 2 read records {0,2,4,6..} and {1,3,5,7..}: the same 4 samples a single process reads per step."""
    source = [{"name": "captions", "format": "webdataset", "path": str(data / "caps")}]
    single = recipe(data, tmp_path / "one", steps=4, batch_size=4, packing=False)
    single["stages"][0]["data"] = source
    Trainer(config_from_dict(single), progress=False).run()
    double = recipe(data, tmp_path / "two", steps=4, batch_size=2, packing=False)
    double["stages"][0]["data"] = source
    double["distributed"] = {"strategy": strategy}
    run_torchrun(double, tmp_path, 2)
    one, two = weights(tmp_path / "one" / "pretrain" / "model"), weights(tmp_path / "two" / "pretrain" / "model")
    for key in one:
        if key.endswith("k_proj.bias"):
            # Softmax ignores a bias shared by all keys, so its true gradient is 0 and Adam turns float noise of
            # different reduction orders into lr-sized steps in either direction; it stays near its start instead.
            assert two[key].abs().max() < 1e-3 and one[key].abs().max() < 1e-3
            continue
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    rows = [json.loads(l) for l in (tmp_path / "two" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(l) for l in (tmp_path / "one" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], rel=1e-4)


def test_text_only_batches_on_one_rank_do_not_hang(data, tmp_path):
    """Ranks draw sources independently, so one rank often has a text-only batch while the other has images."""
    tree = recipe(data, tmp_path / "run", steps=6, batch_size=1, packing=False)
    tree["stages"][0]["data"][1]["weight"] = 3
    tree["distributed"] = {"strategy": "fsdp2"}
    run_torchrun(tree, tmp_path, 2)
    assert (tmp_path / "run" / "pretrain" / "model" / "model.safetensors").is_file()


def test_evaluation_hook_runs_during_and_after_a_stage(data, tmp_path):
    tree = recipe(data, tmp_path / "run", steps=5, eval_every=2)
    seen = []

    def evaluator(model):
        seen.append(model.training)
        return {"probe": float(len(seen))}

    Trainer(config_from_dict(tree), evaluator=evaluator, progress=False).run()
    rows = [json.loads(l) for l in (tmp_path / "run" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["eval"]["probe"]) for r in rows if "eval" in r] == [(2, 1.0), (4, 2.0), (5, 3.0)]
    assert seen == [True, True, False]  # the hook sees the live model; training resumes after it


def test_stage_option_runs_one_stage_from_the_previous_export(data, tmp_path):
    tree = recipe(data, tmp_path / "run", steps=2)
    tree["stages"] += [dict(tree["stages"][0], name="second", steps=2), dict(tree["stages"][0], name="third", steps=2)]
    with pytest.raises(ValueError, match="starts from stage pretrain, which has not been run yet"):
        Trainer(config_from_dict(tree), progress=False).run("second")
    with pytest.raises(ValueError, match="no stage 'fourth'"):
        Trainer(config_from_dict(tree), progress=False).run("fourth")
    Trainer(config_from_dict(tree), progress=False).run("pretrain")
    assert not (tmp_path / "run" / "second").exists()
    # The stage's own export, though a later stage has none yet (`mm1 train` prints it).
    assert Trainer(config_from_dict(tree), progress=False).run("second") == tmp_path / "run" / "second" / "model"
    assert not (tmp_path / "run" / "third").exists()
    tree["model"]["connector"]["position_embedding"] = True  # a run resumed with another architecture stops
    with pytest.raises(ValueError, match=r"second/model was built with another model than the recipe's: "
                                         r"\{'connector': \{'saved': .*'position_embedding': False"):
        Trainer(config_from_dict(tree), progress=False).run("third")


def test_a_stage_adds_to_the_connector_and_the_rest_carries_over(data, tmp_path):
    tree = recipe(data, tmp_path / "run", steps=2)
    tree["stages"] += [dict(tree["stages"][0], name="grid", steps=2, trainable=["connector"],
                            connector={"position_embedding": True, "output_norm": True}),
                       dict(tree["stages"][0], name="after", steps=2)]
    cfg = config_from_dict(tree)
    assert [cfg.stage_model(i).connector.position_embedding for i in range(3)] == [False, True, True]
    Trainer(cfg, progress=False).run("pretrain")
    Trainer(cfg, progress=False).run("grid")
    before, grown = weights(tmp_path / "run" / "pretrain" / "model"), weights(tmp_path / "run" / "grid" / "model")
    added = sorted(set(grown) - set(before))
    assert added == ["connector.norm.weight", "connector.position.proj.bias", "connector.position.proj.weight"]
    # The stage trained the connector alone: all else is the previous stage's, bit for bit.
    assert all(torch.equal(before[k], grown[k]) for k in before if not k.startswith("connector."))
    model = MM1Model.from_pretrained(tmp_path / "run" / "grid" / "model")  # its config rebuilds it
    assert model.config.model.connector.position_embedding and model.connector.position is not None
    # A new output norm starts at the scale of the loaded text embeddings (not of the randomly drawn ones).
    start = Trainer(cfg, progress=False).initial_model(1, tmp_path / "run" / "pretrain" / "model")
    embedding_rms = before["llm.model.embed_tokens.weight"].pow(2).mean().sqrt()
    assert torch.allclose(start.connector.norm.weight, embedding_rms.expand(32))
    Trainer(cfg, progress=False).run("after")  # the next stage starts from the grown model as it is
    assert set(weights(tmp_path / "run" / "after" / "model")) == set(grown)


def test_a_stage_cannot_drop_or_reshape_connector_weights(data, tmp_path):
    tree = recipe(data, tmp_path / "run", steps=2)
    Trainer(config_from_dict(tree), progress=False).run()
    for change, message in (({"type": "avg-pool"}, r"unexpected \['connector\."),
                            ({"hidden_size": 16}, r"27 parameters have another shape, e\.g\. \[.connector\.")):
        tree["stages"] = tree["stages"][:1] + [dict(tree["stages"][0], name="changed", connector=change)]
        with pytest.raises(ValueError, match=r"pretrain/model/model.safetensors does not match the config: .*" + message):
            Trainer(config_from_dict(tree), progress=False).run()
    tree["stages"][1]["connector"] = {"position_embeding": True}
    with pytest.raises(ConfigError, match=r"stages.changed.connector:\n  connector.position_embeding: unknown key"):
        config_from_dict(tree)


def test_gradient_accumulation_equals_one_big_batch(data, tmp_path):
    source = [{"name": "captions", "format": "webdataset", "path": str(data / "caps")}]
    big = recipe(data, tmp_path / "big", steps=3, batch_size=4, packing=False)
    accum = recipe(data, tmp_path / "accum", steps=3, batch_size=2, grad_accum=2, packing=False)
    for tree in (big, accum):
        tree["stages"][0]["data"] = source
        Trainer(config_from_dict(tree), progress=False).run()
    one, two = weights(tmp_path / "big" / "pretrain" / "model"), weights(tmp_path / "accum" / "pretrain" / "model")
    for key in one:
        if not key.endswith("k_proj.bias"):  # no true gradient: see test_two_processes_match_one
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)


def test_epochs_set_the_number_of_steps(data, tmp_path):
    source = [{"name": "captions", "format": "webdataset", "path": str(data / "caps")}]
    tree = recipe(data, tmp_path / "run", steps=100, batch_size=4, packing=False, epochs=1.0, warmup_steps=1)
    tree["stages"][0]["data"] = source
    Trainer(config_from_dict(tree), progress=False).run()
    rows = [json.loads(l) for l in (tmp_path / "run" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 6  # 24 records / 4 per step


@pytest.mark.parametrize("settings", [
    {"bf16": True}, {"activation_checkpointing": True}, {"optimizer": "adafactor"}, {"compile": True}])
def test_stage_options_train(data, tmp_path, settings):
    tree = recipe(data, tmp_path / "run", steps=3, **settings)
    Trainer(config_from_dict(tree), progress=False).run()
    rows = [json.loads(l) for l in (tmp_path / "run" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)


def test_activation_checkpointing_keeps_the_loss(data, tmp_path):
    losses = []
    for name, ckpt in (("plain", False), ("ckpt", True)):
        Trainer(config_from_dict(recipe(data, tmp_path / name, steps=3, activation_checkpointing=ckpt)), progress=False).run()
        losses.append([json.loads(l)["loss"] for l in (tmp_path / name / "pretrain" / "metrics.jsonl").read_text().splitlines()])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_moe_training_logs_expert_load_and_tensorboard(data, tmp_path):
    tree = recipe(data, tmp_path / "run", steps=3)
    tree["model"]["llm"].update({"type": "qwen3-moe", "moe": {"experts": 4, "every": 2, "expert_intermediate_size": 32}})
    tree["tensorboard"] = True
    Trainer(config_from_dict(tree), progress=False).run()
    rows = [json.loads(l) for l in (tmp_path / "run" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["balance_loss"] > 0 and r["z_loss"] > 0 for r in rows)
    assert all(0 <= r["expert_load_min"] <= 0.25 <= r["expert_load_max"] <= 1 for r in rows)
    assert list((tmp_path / "run" / "pretrain" / "tensorboard").glob("events.out.tfevents.*"))


def contrastive_stage(data, **overrides) -> dict:
    stage = {"name": "encoder", "objective": "contrastive", "trainable": ["encoder"], "packing": False,
             "steps": 40, "batch_size": 8, "seq_len": 32, "lr": 3e-3, "warmup_steps": 2, "checkpoint_every": 40,
             "contrastive": {"width": 32, "layers": 1, "heads": 2},
             "data": [{"name": "captions", "format": "webdataset", "path": str(data / "caps")}]}
    return stage | overrides


def test_contrastive_stage_trains_the_encoder_alone_and_learns_to_match(data, tmp_path):
    """The captions name one of four colours: a CLIP-style stage must learn to tell the images apart by it."""
    tree = recipe(data, tmp_path / "run")
    tree["stages"] = [contrastive_stage(data), dict(tree["stages"][0], steps=2)]
    Trainer(config_from_dict(tree), progress=False).run()
    rows = [json.loads(l) for l in (tmp_path / "run" / "encoder" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    # 8 pairs with 4 colours: two captions fit each image, so matching by colour gives 1/2 and chance is 1/8.
    assert first["retrieval_accuracy"] < 0.3 and last["retrieval_accuracy"] >= 0.5
    assert last["loss"] < first["loss"] - 0.5
    torch.manual_seed(tree["seed"])  # the trainer's initialisation of the first stage
    init = MM1Model(config_from_dict(tree), AutoTokenizer.from_pretrained(tmp_path / "run" / "tokenizer"))
    trained = weights(tmp_path / "run" / "encoder" / "model")
    initial = {k: v for k, v in init.state_dict().items()}
    assert any(not torch.equal(initial[k], trained[k]) for k in trained if k.startswith("encoder."))
    assert all(torch.equal(initial[k], trained[k]) for k in trained if not k.startswith("encoder."))
    assert {k.split(".")[0] for k in trained} == {"encoder", "connector", "llm"}  # no text tower exported


def test_contrastive_stage_rejects_packing_and_split_views(data, tmp_path):
    tree = recipe(data, tmp_path / "run")
    tree["stages"] = [contrastive_stage(data, packing=True)]
    with pytest.raises(ValueError, match="packing: false and trainable: \\[encoder\\]"):
        config_from_dict(tree)
    split = {"size": 32, "split": {"enabled": True, "min_tiles": 2, "max_tiles": 4}}
    tree["stages"] = [contrastive_stage(data, image=split, seq_len=256)]
    with pytest.raises(ValueError, match=r"exactly one image view per caption: got \d+ views for 8 captions"):
        Trainer(config_from_dict(tree), progress=False).run()


def test_a_stage_whose_every_sample_is_too_long_stops_with_the_reason(data, tmp_path):
    tree = recipe(data, tmp_path / "run", seq_len=3)  # every caption's image alone is 4 tokens
    tree["stages"][0]["data"] = tree["stages"][0]["data"][:1]  # captions only: each has an image
    with pytest.raises(ValueError, match=r"(?s)1000 samples in a row were dropped as longer than seq_len=3.*image tokens "
                                         r"reach past seq_len=3"):
        Trainer(config_from_dict(tree), progress=False).run()


def test_swapped_captions_replace_each_listed_word_by_another_of_its_group():
    groups = [torch.tensor([5, 6, 7]), torch.tensor([20, 21])]
    ids = torch.tensor([[1, 5, 9, 20, 6, 3], [5, 5, 5, 5, 2, 21]])
    caption = torch.tensor([[True] * 6, [False] + [True] * 5])  # the second row's first token is no caption token
    for seed in range(10):
        torch.manual_seed(seed)
        out = swapped(ids, caption, groups)
        for row in range(2):
            for i, (before, after) in enumerate(zip(ids[row].tolist(), out[row].tolist())):
                group = next((g.tolist() for g in groups if before in g.tolist()), None)
                if group is None or not caption[row, i]:
                    assert after == before
                else:
                    assert after in group and after != before


def test_hard_negatives_join_only_the_image_side_of_the_loss(model):
    tokenizer = model.processor.tokenizer
    groups = swap_groups(tokenizer, [["red", "blue"]])
    with pytest.raises(ValueError, match=r"'xylophone' is \d+ tokens"):
        swap_groups(tokenizer, [["red", "xylophone"]])
    with pytest.raises(ValueError, match="needs at least two words"):
        swap_groups(tokenizer, [["red"]])

    def loss(text: str, swap: list) -> float:
        torch.manual_seed(0)
        encoder_cfg = model.config.model.encoder
        contrast = ContrastiveModel(model.encoder, ContrastiveConfig(width=32, layers=1, heads=2), len(tokenizer),
                                    64, (encoder_cfg.image_mean, encoder_cfg.image_std), swap).eval()
        ids = torch.tensor([tokenizer(f"a {text} {i}.")["input_ids"] for i in range(2)])
        with torch.no_grad():
            return contrast(ids, ids.clone(), torch.randn(2, 3, 32, 32))[0].item()

    # A swapped caption only adds to what each image is contrasted with, so the loss grows; with no swappable word
    # in the captions it stays the same.
    assert loss("red circle", groups) > loss("red circle", []) + 1e-4
    assert loss("square", groups) == pytest.approx(loss("square", []), abs=1e-6)


def test_contrastive_stage_with_hard_negatives_learns_to_match(data, tmp_path):
    tree = recipe(data, tmp_path / "run")
    stage = contrastive_stage(data, contrastive={"width": 32, "layers": 1, "heads": 2, "swap_words": [NAMES]})
    tree["stages"] = [stage]
    Trainer(config_from_dict(tree), progress=False).run()
    rows = [json.loads(l) for l in (tmp_path / "run" / "encoder" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["retrieval_accuracy"] < 0.3 and rows[-1]["retrieval_accuracy"] >= 0.5


def test_greyscale_turns_the_chosen_views_grey_in_the_same_normalisation():
    mean, std = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
    rgb = torch.rand(6, 3, 4, 4)
    pixels = (rgb - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.equal(greyscale(pixels, 0.0, mean, std), pixels)
    grey = greyscale(pixels, 1.0, mean, std) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    for channel in range(3):
        torch.testing.assert_close(grey[:, channel], luma)
    torch.manual_seed(0)
    half = greyscale(pixels, 0.5, mean, std)
    changed = [not torch.equal(half[i], pixels[i]) for i in range(6)]
    assert 0 < sum(changed) < 6  # some views grey, the others untouched
