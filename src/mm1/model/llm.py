"""Decoder LLM: any causal LM `transformers` builds, dense or mixture-of-experts.

MoE follows MM1 / MM1.5: sparse FFNs only in the LLM, top-2 routing, a sparse layer every `every` layers,
load-balancing loss (weight 0.01) and router z-loss (weight 0.001).  Qwen3-MoE is the default MoE family
because it has exactly that layout (no shared expert, `decoder_sparse_step`) and serving engines load it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from mm1.config import LLMConfig, MoEConfig
from mm1.registry import Registry


@dataclass(frozen=True)
class LLMFamily:
    model_type: str  # transformers' model_type
    moe_fields: dict[str, str] | None = None  # our MoE field -> transformers config field (None: dense only)


LLMS: Registry[LLMFamily] = Registry("LLM")
LLMS.register("llama")(LLMFamily("llama"))
LLMS.register("qwen2")(LLMFamily("qwen2"))
LLMS.register("qwen3")(LLMFamily("qwen3"))
LLMS.register("qwen3-moe")(
    LLMFamily(
        "qwen3_moe",
        {"experts": "num_experts", "top_k": "num_experts_per_tok", "every": "decoder_sparse_step",
         "expert_intermediate_size": "moe_intermediate_size"},
    )
)
LLMS.register("mixtral")(
    LLMFamily("mixtral", {"experts": "num_local_experts", "top_k": "num_experts_per_tok"})
)


# ---- attention within each packed sample -------------------------------------------------------------------------
# A packed row (data/packing.py) has no attention mask and restarts its position ids at every sample.  transformers'
# sdpa turns that into a dense block-diagonal mask, and the CPU kernel then computes all L^2 scores of the row;
# attending sample by sample costs sum(l_i^2) instead (a flash-attention varlen kernel does the same on GPUs).
PER_SAMPLE_SDPA = "sdpa-per-sample"


def per_sample_sdpa_mask(*, attention_mask=None, q_length: int, kv_length: int, kv_offset: int = 0, **kwargs):
    """No mask for rows without padding and cache (the attention splits them by position ids); sdpa's otherwise."""
    if attention_mask is None and q_length == kv_length and kv_offset == 0:
        return None
    return sdpa_mask(attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, kv_offset=kv_offset,
                     **kwargs)


def sample_lengths(position_ids: torch.Tensor, batch: int) -> list[list[int]]:
    """Per row, the lengths of its runs of consecutive positions: one run per packed sample."""
    positions = position_ids.expand(batch, -1)
    starts: list[list[int]] = [[0] for _ in range(batch)]
    for row, index in (positions[:, 1:] - positions[:, :-1] != 1).nonzero().tolist():
        starts[row].append(index + 1)
    return [[b - a for a, b in zip(row, row[1:] + [positions.shape[1]])] for row in starts]


def per_sample_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                              scaling: float | None = None, position_ids: torch.Tensor | None = None, **kwargs):
    """Causal SDPA over each packed sample of each row; anything else (padding masks, a KV cache) goes to sdpa."""
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    rows = []
    # split (not slicing): its backward is one concatenation, where each slice's would fill a zero tensor of the row
    for lengths, q, k, v in zip(sample_lengths(position_ids, query.shape[0]), query.split(1), key.split(1),
                                value.split(1)):
        rows.append(torch.cat([
            F.scaled_dot_product_attention(q_i, k_i, v_i, dropout_p=dropout, is_causal=True, scale=scaling)
            for q_i, k_i, v_i in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2))], dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register(PER_SAMPLE_SDPA, per_sample_sdpa_attention)
AttentionMaskInterface.register(PER_SAMPLE_SDPA, per_sample_sdpa_mask)


def hf_llm_config(cfg: LLMConfig, vocab_size: int) -> PretrainedConfig:
    family = LLMS.get(cfg.type)
    if cfg.path:
        hf = AutoConfig.from_pretrained(cfg.path)
        if hf.model_type != family.model_type:
            raise ValueError(f"llm.type={cfg.type!r} expects model_type {family.model_type!r}, "
                             f"but {cfg.path}/config.json says {hf.model_type!r}")
        if cfg.moe is not None and family.moe_fields:
            # The checkpoint fixes the expert layout; the block may only restate it (and set loss weights).
            for ours, hf_name in family.moe_fields.items():
                value = getattr(cfg.moe, ours)
                if value is not None and value != getattr(hf, hf_name):
                    raise ValueError(f"llm.moe.{ours}={value} contradicts {cfg.path}/config.json "
                                     f"{hf_name}={getattr(hf, hf_name)}")
        return hf
    if cfg.moe is not None and family.moe_fields is None:
        raise ValueError(f"llm.type={cfg.type!r} is dense; use qwen3-moe or mixtral for llm.moe")
    if cfg.moe is None and family.moe_fields is not None:
        raise ValueError(f"llm.type={cfg.type!r} is a mixture of experts and needs an llm.moe block")
    if cfg.hidden_size % cfg.heads:
        raise ValueError(f"llm.hidden_size={cfg.hidden_size} is not divisible by llm.heads={cfg.heads}")
    fields = dict(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads or cfg.heads,
        head_dim=cfg.hidden_size // cfg.heads,
        intermediate_size=cfg.intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=cfg.max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
    )
    if cfg.moe is not None:
        moe = cfg.moe
        every = moe.every if moe.every is not None else (2 if "every" in family.moe_fields else 1)
        if "every" not in family.moe_fields and every != 1:
            raise ValueError(f"llm.type={cfg.type!r} puts experts in every layer; set llm.moe.every=1")
        values = {"experts": moe.experts or 64, "top_k": moe.top_k or 2, "every": every,
                  "expert_intermediate_size": moe.expert_intermediate_size or cfg.intermediate_size}
        fields.update({hf_name: values[ours] for ours, hf_name in family.moe_fields.items()})
        # Balance and z-loss are added by MM1Model with the recipe's weights, not inside transformers.
        fields["router_aux_loss_coef"] = 0.0
    return AutoConfig.for_model(family.model_type, **fields)


def build_llm(cfg: LLMConfig, vocab_size: int, hf_config: PretrainedConfig | None = None,
              load_weights: bool = True) -> PreTrainedModel:
    known = ["eager", *AttentionInterface().valid_keys()]
    if cfg.attention not in known:
        raise ValueError(f"llm.attention={cfg.attention!r} is not an attention implementation; one of {known}")
    hf_config = hf_config or hf_llm_config(cfg, vocab_size)
    if cfg.path and load_weights:
        model = AutoModelForCausalLM.from_pretrained(cfg.path, config=hf_config, dtype=torch.float32,
                                                     attn_implementation=cfg.attention)
    else:
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32, attn_implementation=cfg.attention)
    if model.get_input_embeddings().num_embeddings < vocab_size:
        # The image placeholder and chat tokens are new to a pretrained vocabulary.
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    return model


def num_experts(llm: PreTrainedModel) -> int:
    """0 for a dense LLM."""
    return getattr(llm.config, "num_experts", None) or getattr(llm.config, "num_local_experts", None) or 0


def moe_aux_losses(router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int,
                   token_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Switch/GShard load-balancing loss and ST-MoE router z-loss over the sparse layers' router logits."""
    balance = load_balancing_loss_func(router_logits, num_experts, top_k, token_mask)
    z_per_layer = [torch.logsumexp(logits.float(), dim=-1).square() for logits in router_logits]
    z = torch.stack(z_per_layer)  # (layers, tokens)
    if token_mask is not None:
        mask = token_mask.reshape(1, -1).to(z.dtype)
        z_loss = (z * mask).sum() / (mask.sum() * len(router_logits)).clamp(min=1)
    else:
        z_loss = z.mean()
    return balance, z_loss


@torch.no_grad()
def expert_load(router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int) -> torch.Tensor:
    """Share of top-k assignments each expert receives, averaged over sparse layers (1/num_experts if balanced)."""
    chosen = torch.cat([logits.topk(top_k, dim=-1).indices.flatten() for logits in router_logits])
    return torch.bincount(chosen, minlength=num_experts).float() / chosen.numel()


def moe_weights(moe: MoEConfig | None) -> tuple[float, float]:
    return (moe.balance_loss, moe.z_loss) if moe is not None else (0.01, 0.001)
