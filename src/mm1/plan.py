"""`mm1 plan`: what a recipe costs before it runs: parameters, memory per GPU, FLOPs and time per step.

The model is built on the meta device (shapes, no memory), so the counts are those of the modules `mm1 train`
builds, with the LLM vocabulary of `model.llm.vocab_size`.  Per stage, on N GPUs running the recipe as written
(global batch B = batch_size x grad_accum x N sequences of seq_len tokens, per-GPU micro-batch b = batch_size):

Parameters
    total; active per token = total - expert parameters x (1 - top_k / experts).

Memory per GPU (FSDP2, one unit per transformer block plus the root, activation checkpointing per block)
    sharded  = (4 P + (4 + s) P_trainable) / N       fp32 parameters, fp32 gradients, optimizer states of s bytes
                                                     per parameter (AdamW: 8; Adafactor: ~0, factored statistics)
    gathered = (2 P_block + P_root) p + (P_block + P_root) 4
                                                     the unsharded block being computed and the prefetched next
                                                     one, the root unit (embeddings, connector, lm_head; FSDP2
                                                     keeps it gathered), in p bytes (2 with bf16), and their fp32
                                                     gradients before the reduce-scatter
    activations = b S L h a + b V t L_enc h_enc a + b S vocab (a + 8)
                                                     hidden states (a = 2 bytes with bf16) at every block boundary
                                                     of the LLM (b sequences of S tokens, L blocks of width h) and
                                                     of the encoder (V views per sequence of t tokens), and the
                                                     logits with their float32 copy for the loss and its gradient
    Not counted: one block's recomputed internals in backward, attention workspaces, communication buffers and
    allocator fragmentation; keep some headroom.

FLOPs per step (model FLOPs: activation recomputation and attention scores not counted)
    LLM        m x P_llm x B S               P_llm = active parameters less the input embedding (a lookup)
    encoder    m x P_enc x t x views         t = patches + class token of one view, views = B x images x views
                                             per image (images per sequence: as many as fit, at most
                                             max_images_per_sequence; views per image: 1, or max_tiles + 1 when
                                             splitting) -- upper bounds, override with the flags
    connector  m / 2 x (forward FLOPs of one view, counted on the meta device) x views
    m = 2 (forward) + 2 (weight gradients, if the module trains) + 2 (input gradients, if it or a module before
    it trains): 6 for a trained module.

Time per step = FLOPs / (N x peak x MFU); GPUs for a target = steps x FLOPs per step / (days x 86400 x peak x MFU),
at the same global batch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mm1.config import ConnectorConfig, MM1Config, ModelConfig, StageConfig
from mm1.model.connector import build_connector, output_tokens
from mm1.model.encoder import ImageEncoder
from mm1.model.llm import build_llm
from mm1.train.distributed import decoder_layers
from mm1.train.optim import MODULES

H100_BF16_DENSE = 989e12  # FLOP/s, dense bf16 tensor cores (SXM)
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adafactor": 0}  # per trained parameter; Adafactor keeps row/column sums
GB = 1e9


@dataclass
class ViewCost:
    grid: int  # patches per side
    encoder_tokens: int  # patches (+ class token)
    connector_flops: int  # forward FLOPs of one view


@dataclass
class ModelCounts:
    """Parameter counts and shapes of the model a config builds."""

    encoder: int
    connector: int
    llm: int
    llm_active: int  # per token: experts counted at their top_k / experts share
    llm_flop: int  # llm_active less the input embedding, which is a lookup
    largest_block: int  # the biggest FSDP2 unit: an encoder or LLM transformer block
    root: int  # everything outside the blocks (one FSDP2 unit)
    encoder_layers: int  # kept (up to feature_layer)
    encoder_width: int
    llm_layers: int
    llm_width: int
    vocab: int
    views: dict[int, ViewCost]  # by view size in pixels

    @property
    def total(self) -> int:
        return self.encoder + self.connector + self.llm

    @property
    def active(self) -> int:
        return self.encoder + self.connector + self.llm_active


def build_meta(cfg: MM1Config, mcfg: ModelConfig | None = None) -> nn.ModuleDict:
    """Encoder, connector and LLM as `MM1Model` builds them (the run's model, or `mcfg`, e.g. a stage's), on the
    meta device (no memory, no weights read)."""
    mcfg = mcfg or cfg.model
    with torch.device("meta"):
        encoder = ImageEncoder(mcfg.encoder, load_weights=False)
        llm = build_llm(mcfg.llm, mcfg.llm.vocab_size, load_weights=False)
        connector = build_connector(mcfg.connector, encoder.width, llm.config.hidden_size)
    return nn.ModuleDict({"encoder": encoder, "connector": connector, "llm": llm})


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def view_sizes(cfg: MM1Config) -> set[int]:
    return {(s.image or cfg.image).size or cfg.model.encoder.image_size for s in cfg.stages}


def model_counts(cfg: MM1Config, mcfg: ModelConfig | None = None) -> ModelCounts:
    parts = build_meta(cfg, mcfg)
    encoder, connector, llm = parts["encoder"], parts["connector"], parts["llm"]
    llm_total = count(llm)
    experts = sum(p.numel() for name, p in llm.named_parameters() if ".experts." in name)
    n_experts = getattr(llm.config, "num_experts", None) or getattr(llm.config, "num_local_experts", None)
    idle = experts * (1 - llm.config.num_experts_per_tok / n_experts) if experts else 0
    llm_active = round(llm_total - idle)
    tied = llm.get_output_embeddings().weight is llm.get_input_embeddings().weight
    blocks = [count(block) for block in decoder_layers(parts)]
    views = {}
    for size in sorted(view_sizes(cfg)):
        grid = encoder.grid(size)
        with FlopCounterMode(display=False) as counter:
            connector(torch.empty(1, grid * grid, encoder.width, device="meta"))
        views[size] = ViewCost(grid, grid * grid + int(encoder.family.has_class_token), counter.get_total_flops())
    return ModelCounts(
        encoder=count(encoder), connector=count(connector), llm=llm_total, llm_active=llm_active,
        llm_flop=llm_active - (0 if tied else llm.get_input_embeddings().weight.numel()),
        largest_block=max(blocks), root=count(parts) - sum(blocks),
        encoder_layers=len(encoder.vision.encoder.layers), encoder_width=encoder.width,
        llm_layers=llm.config.num_hidden_layers, llm_width=llm.config.hidden_size,
        vocab=llm.get_input_embeddings().num_embeddings, views=views,
    )


def flop_multiplier(stage: StageConfig, module: str) -> int:
    """FLOPs per parameter and token: forward, weight gradients if trained, input gradients if anything before
    (or the module itself) trains."""
    upstream = MODULES[: MODULES.index(module) + 1]
    return 2 + 2 * (module in stage.trainable) + 2 * any(m in stage.trainable for m in upstream)


def plan_stage(cfg: MM1Config, counts: ModelCounts, connector: ConnectorConfig, stage: StageConfig, gpus: int,
               gpu_memory_gb: float, mfu: float, peak: float, target_days: float | None = None,
               images_per_sequence: float | None = None, views_per_image: float | None = None) -> dict:
    image = stage.image or cfg.image
    size = image.size or cfg.model.encoder.image_size
    view = counts.views[size]
    if views_per_image is None:
        views_per_image = image.split.max_tiles + 1 if image.split.enabled else 1
    image_tokens = views_per_image * output_tokens(connector, view.grid)
    if images_per_sequence is None:
        images_per_sequence = min(stage.max_images_per_sequence, stage.seq_len // image_tokens)
    global_batch = stage.batch_size * stage.grad_accum * gpus
    tokens = global_batch * stage.seq_len
    views = global_batch * images_per_sequence * views_per_image
    flops = {
        "encoder": flop_multiplier(stage, "encoder") * counts.encoder * view.encoder_tokens * views,
        "connector": flop_multiplier(stage, "connector") / 2 * view.connector_flops * views,
        "llm": flop_multiplier(stage, "llm") * counts.llm_flop * tokens,
    }
    flops["total"] = sum(flops.values())
    step_s = flops["total"] / (gpus * peak * mfu)

    trainable = sum(getattr(counts, m) for m in stage.trainable)
    p_bytes = a_bytes = 2 if stage.bf16 else 4
    c, micro = counts, stage.batch_size
    memory = {
        "sharded": (4 * c.total + (4 + OPTIMIZER_STATE_BYTES[stage.optimizer]) * trainable) / gpus,
        "gathered": (2 * c.largest_block + c.root) * p_bytes + (c.largest_block + c.root) * 4,
        "activations": micro * stage.seq_len * (c.llm_layers * c.llm_width * a_bytes + c.vocab * (a_bytes + 8))
                       + micro * images_per_sequence * views_per_image * view.encoder_tokens
                       * c.encoder_width * c.encoder_layers * a_bytes,
    }
    memory = {k: v / GB for k, v in memory.items()}
    memory["total"] = sum(memory.values())
    result = {
        "stage": stage.name, "steps": stage.steps, "global_batch": global_batch, "seq_len": stage.seq_len,
        "tokens_per_step": tokens, "images_per_sequence": images_per_sequence, "views_per_image": views_per_image,
        "view_size": size, "encoder_views_per_step": views, "trainable_params": trainable,
        "optimizer": stage.optimizer, "memory_gb": memory, "fits": memory["total"] <= gpu_memory_gb,
        "flops_per_step": flops, "time_per_step_s": step_s, "stage_days": stage.steps * step_s / 86400,
        "tokens_per_gpu_s": tokens / step_s / gpus,
    }
    if not stage.activation_checkpointing:
        result["note"] = "memory assumes activation_checkpointing, which this stage does not enable"
    if target_days is not None:
        result["gpus_for_target"] = math.ceil(stage.steps * flops["total"] / (target_days * 86400 * peak * mfu))
    return result


def plan(cfg: MM1Config, gpus: int, gpu_memory_gb: float = 80, mfu: float = 0.4, peak: float = H100_BF16_DENSE,
         target_days: float | None = None, stage: str | None = None, **assumptions) -> dict:
    if gpus < 1 or not 0 < mfu <= 1:
        raise ValueError(f"need gpus >= 1 and 0 < mfu <= 1, got gpus={gpus}, mfu={mfu}")
    if stage is not None and stage not in [s.name for s in cfg.stages]:
        raise ValueError(f"no stage {stage!r} in the recipe; stages: {[s.name for s in cfg.stages]}")
    models = [cfg.stage_model(i) for i in range(len(cfg.stages))]  # a stage may change the connector
    counts = {key: model_counts(cfg, m) for key, m in {repr(m): m for m in models}.items()}
    final = counts[repr(models[-1])]  # the model the run exports
    params = {k: getattr(final, k) for k in ("encoder", "connector", "llm", "llm_active", "llm_flop",
                                                "largest_block", "root", "total", "active")}
    return {"gpus": gpus, "gpu_memory_gb": gpu_memory_gb, "mfu": mfu, "peak_flops": peak, "target_days": target_days,
            "params": params,
            "stages": [plan_stage(cfg, counts[repr(m)], m.connector, s, gpus, gpu_memory_gb, mfu, peak, target_days,
                                  **assumptions) for m, s in zip(models, cfg.stages) if stage in (None, s.name)]}


def _num(x: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def format_plan(result: dict) -> str:
    p = result["params"]
    lines = [f"parameters: {_num(p['total'])} total, {_num(p['active'])} active per token "
             f"(encoder {_num(p['encoder'])}, connector {_num(p['connector'])}, LLM {_num(p['llm'])} / "
             f"{_num(p['llm_active'])} active); largest FSDP2 block {_num(p['largest_block'])}, root {_num(p['root'])}",
             f"{result['gpus']} GPUs x {result['gpu_memory_gb']:g} GB, MFU {result['mfu']:g} of "
             f"{result['peak_flops'] / 1e12:g} TFLOP/s", ""]
    stages = result["stages"]
    rows = [
        ("global batch x seq_len", lambda s: f"{s['global_batch']} x {s['seq_len']}"),
        ("tokens / step", lambda s: _num(s["tokens_per_step"])),
        ("images/seq x views @ px",
         lambda s: f"{s['images_per_sequence']:g} x {s['views_per_image']:g} @ {s['view_size']}"),
        ("encoder views / step", lambda s: _num(s["encoder_views_per_step"])),
        ("trainable params", lambda s: _num(s["trainable_params"])),
        ("memory sharded (GB)", lambda s: f"{s['memory_gb']['sharded']:.1f}"),
        ("memory gathered (GB)", lambda s: f"{s['memory_gb']['gathered']:.1f}"),
        ("memory activations (GB)", lambda s: f"{s['memory_gb']['activations']:.1f}"),
        ("memory / GPU (GB)", lambda s: f"{s['memory_gb']['total']:.1f} " + ("fits" if s["fits"] else "TOO BIG")),
        ("FLOPs / step encoder", lambda s: _num(s["flops_per_step"]["encoder"])),
        ("FLOPs / step connector", lambda s: _num(s["flops_per_step"]["connector"])),
        ("FLOPs / step LLM", lambda s: _num(s["flops_per_step"]["llm"])),
        ("FLOPs / step total", lambda s: _num(s["flops_per_step"]["total"])),
        ("time / step (s)", lambda s: f"{s['time_per_step_s']:.2f}"),
        ("steps", lambda s: str(s["steps"])),
        ("stage time (days)", lambda s: f"{s['stage_days']:.2f}"),
        ("tokens / GPU / s", lambda s: _num(s["tokens_per_gpu_s"])),
    ]
    if result["target_days"] is not None:
        rows.append((f"GPUs for {result['target_days']:g} days", lambda s: str(s["gpus_for_target"])))
    table = [["", *[s["stage"] for s in stages]]] + [[name, *map(fn, stages)] for name, fn in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines += ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
              for row in table]
    lines += [f"note ({s['stage']}): {s['note']}" for s in stages if "note" in s]
    return "\n".join(lines)


def to_json(result: dict) -> str:
    return json.dumps(result, indent=1)
