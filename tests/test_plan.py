"""`mm1 plan`: parameter counts against hand formulas and the real built model, and memory / FLOPs / time against
the formulas of `mm1.plan` worked by hand on a small config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import CORPUS
from mm1.cli import main
from mm1.config import config_from_dict, load_config
from mm1.data.tokenizer import build_tokenizer
from mm1.model.mllm import MM1Model
from mm1.plan import build_meta, model_counts, plan

RECIPES = Path(__file__).parent.parent / "recipes"
C, P, G, I_ENC, L_ENC = 32, 8, 4, 64, 3  # encoder width, patch, grid (32 px / 8), FFN, layers
H, I, L = 32, 64, 2  # LLM width, FFN, layers
STAGE = {"name": "pretrain", "steps": 1000, "batch_size": 2, "seq_len": 64, "max_images_per_sequence": 2,
         "warmup_steps": 1, "bf16": True, "activation_checkpointing": True}


def tree(vocab: int, llm: dict | None = None, stage: dict | None = None) -> dict:
    return {"model": {
        "encoder": {"image_size": G * P, "patch_size": P, "hidden_size": C, "layers": L_ENC, "heads": 2,
                    "intermediate_size": I_ENC},
        "connector": {"type": "mlp", "mlp_depth": 2},
        "llm": {"hidden_size": H, "layers": L, "heads": 2, "intermediate_size": I, "vocab_size": vocab} | (llm or {})},
        "tokenizer": {"vocab_size": 300}, "stages": [STAGE | (stage or {})]}


@pytest.fixture(scope="module")
def vocab() -> int:
    return len(build_tokenizer(config_from_dict(tree(1)).tokenizer, CORPUS))


def real_model(cfg) -> MM1Model:
    return MM1Model(cfg, build_tokenizer(cfg.tokenizer, CORPUS))


ENC_LAYER = 4 * (C * C + C) + 4 * C + 2 * C * I_ENC + I_ENC + C  # q, k, v, out (biased); 2 LayerNorms; fc1, fc2
ENCODER = 3 * P * P * C + C + (G * G + 1) * C + 2 * C + L_ENC * ENC_LAYER  # patches, class, positions, pre-LN
CONNECTOR = C * H + H + H * H + H  # Linear, GELU, Linear
LLM_LAYER = 4 * H * H + 3 * H * I + 2 * H  # q, k, v, o; gate, up, down; 2 RMSNorms


def test_dense_counts_match_hand_formula_and_real_model(vocab):
    cfg = config_from_dict(tree(vocab))
    counts = model_counts(cfg)
    llm = 2 * vocab * H + L * LLM_LAYER + H  # embeddings, lm_head, final norm
    assert (counts.encoder, counts.connector, counts.llm) == (ENCODER, CONNECTOR, llm)
    assert counts.llm_active == llm and counts.llm_flop == llm - vocab * H
    assert counts.largest_block == max(ENC_LAYER, LLM_LAYER)
    assert counts.root == ENCODER + CONNECTOR + llm - L_ENC * ENC_LAYER - L * LLM_LAYER
    model = real_model(cfg)
    assert counts.total == sum(p.numel() for p in model.parameters())
    for name in ("encoder", "connector", "llm"):
        assert getattr(counts, name) == sum(p.numel() for p in getattr(model, name).parameters())


def test_moe_counts_active_share_and_layout(vocab):
    moe = {"type": "qwen3-moe", "layers": 4, "moe": {"experts": 4, "top_k": 2, "every": 2,
                                                     "expert_intermediate_size": 16}}
    cfg = config_from_dict(tree(vocab, llm=moe))
    counts = model_counts(cfg)
    model = real_model(cfg)
    assert counts.llm == sum(p.numel() for p in model.llm.parameters())
    # Layers 1 and 3 are sparse; per token 2 of 4 experts (gate, up, down of 32 x 16 each) do work.
    assert [hasattr(layer.mlp, "experts") for layer in model.llm.model.layers] == [False, True, False, True]
    assert counts.llm - counts.llm_active == 2 * (4 - 2) * 3 * H * 16


def test_paper_scale_counts_by_hand():
    dense = model_counts(load_config(RECIPES / "mm1/3b.yaml"))
    h, ffn, v = 3200, 8640, 32000
    assert dense.llm == 2 * v * h + 26 * (4 * h * h + 3 * h * ffn + 2 * h) + h
    width, grid = 1280, 27  # ViT-H/14 at 378 px, every layer kept
    layer = 4 * (width ** 2 + width) + 4 * width + 2 * width * 5120 + 5120 + width
    assert dense.encoder == 3 * 14 * 14 * width + width + (grid ** 2 + 1) * width + 2 * width + 32 * layer
    moe = model_counts(load_config(RECIPES / "mm1/3b-moe.yaml"))
    assert moe.llm - moe.llm_active == 13 * (64 - 2) * 3 * h * ffn  # 13 sparse layers, 62 idle experts each


def test_memory_flops_time_by_hand(vocab):
    cfg = config_from_dict(tree(vocab))
    counts = model_counts(cfg)
    gpus, peak, mfu = 4, 1e12, 0.5
    s = plan(cfg, gpus, gpu_memory_gb=80, mfu=mfu, peak=peak, target_days=0.001)["stages"][0]
    batch, tokens = 2 * gpus, 2 * gpus * 64
    images = min(2, 64 // (G * G))  # 16 tokens per image: 2 fit, the stage allows 2
    views = batch * images
    assert (s["global_batch"], s["tokens_per_step"], s["encoder_views_per_step"]) == (batch, tokens, views)
    flops = s["flops_per_step"]
    assert flops["encoder"] == 6 * ENCODER * (G * G + 1) * views
    assert flops["connector"] == 3 * 2 * (C * H + H * H) * G * G * views  # matmuls only: biases are not FLOPs here
    assert flops["llm"] == 6 * (counts.llm - vocab * H) * tokens
    assert s["time_per_step_s"] == pytest.approx(flops["total"] / (gpus * peak * mfu))
    assert s["gpus_for_target"] == math.ceil(1000 * flops["total"] / (0.001 * 86400 * peak * mfu))
    total, block, root = counts.total, counts.largest_block, counts.root
    memory = s["memory_gb"]
    assert memory["sharded"] * 1e9 == pytest.approx((4 + 4 + 8) * total / gpus)
    assert memory["gathered"] * 1e9 == pytest.approx((2 * block + root) * 2 + (block + root) * 4)
    assert memory["activations"] * 1e9 == pytest.approx(2 * 64 * (L * H * 2 + vocab * (2 + 8))
                                                        + 2 * images * (G * G + 1) * C * L_ENC * 2)


@pytest.mark.parametrize("trainable, multipliers", [
    (["encoder", "connector", "llm"], (6, 6, 6)),
    (["connector", "llm"], (2, 6, 6)),
    (["llm"], (2, 2, 6)),
    (["connector"], (2, 6, 4)),  # the frozen LLM still passes gradients back to the connector
])
def test_frozen_modules_cost_less(vocab, trainable, multipliers):
    full = plan(config_from_dict(tree(vocab)), 1)["stages"][0]
    part = plan(config_from_dict(tree(vocab, stage={"trainable": trainable})), 1)["stages"][0]
    for module, m in zip(("encoder", "connector", "llm"), multipliers):
        assert part["flops_per_step"][module] == pytest.approx(full["flops_per_step"][module] * m / 6)
    if trainable == ["llm"]:
        assert part["trainable_params"] == model_counts(config_from_dict(tree(vocab))).llm
        assert part["memory_gb"]["sharded"] < full["memory_gb"]["sharded"]


def test_a_stage_that_changes_the_connector_is_planned_with_its_model(vocab):
    changed = tree(vocab, stage={"max_images_per_sequence": 32})
    changed["model"]["connector"] = {"type": "avg-pool", "tokens": 16}
    changed["stages"].append(changed["stages"][0] | {"name": "grid", "connector": {"position_embedding": True,
                                                                                   "tokens": 4}})
    cfg = config_from_dict(changed)
    result = plan(cfg, 1)
    first, grid = result["stages"]
    assert (first["images_per_sequence"], grid["images_per_sequence"]) == (64 // 16, 64 // 4)
    before, grown = model_counts(cfg), model_counts(cfg, cfg.stage_model(1))
    assert grown.connector == before.connector + 2 * 2 * 6 * H + H  # grid embedding: (row, col) x (sin, cos) x 6
    assert (first["trainable_params"], grid["trainable_params"]) == (before.total, grown.total)
    assert result["params"]["connector"] == grown.connector  # the exported model's


def test_meta_build_allocates_nothing():
    parts = build_meta(load_config(RECIPES / "mm1.5/3b-moe.yaml"))
    assert all(p.device == torch.device("meta") for p in parts.parameters())


def test_cli_table_and_json(capsys):
    assert main(["plan", str(RECIPES / "mm1/3b.yaml"), "--gpus", "256", "--target-days", "7"]) == 0
    table = capsys.readouterr().out
    assert "memory / GPU (GB)" in table and "GPUs for 7 days" in table and "pretrain" in table
    assert main(["plan", str(RECIPES / "mm1/3b.yaml"), "--gpus", "256", "--stage", "pretrain", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (stage,) = result["stages"]
    assert stage["global_batch"] == 512 and stage["tokens_per_step"] == 512 * 4096
    assert stage["images_per_sequence"] == 16 and stage["fits"]
    assert main(["plan", str(RECIPES / "mm1/3b.yaml"), "--gpus", "8", "--stage", "nope"]) == 2
