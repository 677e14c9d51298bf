"""Numerical parity of mm1's building blocks with the `transformers` reference implementations.

Every test builds a tiny random model, and checks that our code computes what `transformers` computes from the
same weights:

* `ImageEncoder` (CLIP and SigLIP) == the vision model's `hidden_states[feature_layer]` (CLS dropped for CLIP),
  at the native resolution and, with `interpolate_pos_encoding=True`, at another one;
* `build_llm` (Llama, Qwen2, Qwen3-MoE) == `AutoModelForCausalLM.from_pretrained` logits, on padded batches and
  (our per-sample attention against transformers' block-diagonal sdpa mask) on packed rows, with their gradients;
  the MoE balance loss ==
  transformers' `load_balancing_loss_func` (and the model's own `aux_loss`), the router z-loss == a hand
  computation;
* `MM1Model` with an MLP connector == `LlavaForConditionalGeneration` holding the same weights (logits and loss).

Weights are re-drawn with a large spread before saving, so that a wrong layer, a dropped bias or a swapped
projection shows up far above the tolerances (transformers' own init leaves biases at zero and norms at one).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
    Qwen3MoeConfig,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.activations import ACT2FN
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from mm1.config import EncoderConfig, LLMConfig, config_from_dict
from mm1.data.tokenizer import build_tokenizer
from mm1.model.encoder import ImageEncoder
from mm1.model.llm import PER_SAMPLE_SDPA, build_llm, moe_aux_losses, num_experts
from mm1.model.mllm import MM1Model

TOL = dict(atol=1e-5, rtol=1e-5)
VOCAB = 97
IMAGE_SIZE, PATCH = 32, 8


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@torch.no_grad()
def randomize(module: torch.nn.Module, std: float = 0.2, generator: torch.Generator | None = None) -> None:
    """Every parameter random: norm scales around 1, everything else (biases included) around 0."""
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=generator, dtype=p.dtype) * std
        if name.endswith("weight") and p.dim() == 1:  # LayerNorm / RMSNorm scale
            p.copy_(1 + noise)
        else:
            p.copy_(noise)


# ---------------------------------------------------------------------------------------------------------------
# 1. Image encoder
# ---------------------------------------------------------------------------------------------------------------

ENCODER_LAYERS = 3


@pytest.fixture(scope="module")
def vision_dirs(tmp_path_factory):
    torch.manual_seed(1)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=ENCODER_LAYERS, num_attention_heads=2,
                  image_size=IMAGE_SIZE, patch_size=PATCH)
    dirs = {}
    for name, config, cls in (("clip", CLIPVisionConfig(**common), CLIPVisionModel),
                              ("siglip", SiglipVisionConfig(**common), SiglipVisionModel)):
        model = cls(config)
        randomize(model)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        dirs[name] = path
    return dirs


@pytest.mark.parametrize("family", ["clip", "siglip"])
@pytest.mark.parametrize("feature_layer", [-2, -1, 1])
@pytest.mark.parametrize("size", [IMAGE_SIZE, 48, 24], ids=["native", "up-48", "down-24"])
@torch.no_grad()
def test_encoder_matches_transformers_hidden_state(vision_dirs, family, feature_layer, size):
    path = vision_dirs[family]
    ours = ImageEncoder(EncoderConfig(type=family, path=str(path), feature_layer=feature_layer)).eval()
    keep = feature_layer if feature_layer > 0 else ENCODER_LAYERS + 1 + feature_layer
    assert len(ours.vision.encoder.layers) == keep

    cls = CLIPVisionModel if family == "clip" else SiglipVisionModel
    ref = cls.from_pretrained(path).eval()
    assert ref.config._attn_implementation == ours.vision.config._attn_implementation

    pixels = torch.randn(2, 3, size, size)
    out = ref(pixels, output_hidden_states=True, interpolate_pos_encoding=size != IMAGE_SIZE)
    assert len(out.hidden_states) == ENCODER_LAYERS + 1
    expected = out.hidden_states[feature_layer]
    if family == "clip":
        expected = expected[:, 1:]

    got = ours(pixels)
    grid = ours.grid(size)
    assert got.shape == (2, grid * grid, 32) == expected.shape
    torch.testing.assert_close(got, expected, **TOL)
    # The comparison can tell layers apart: a neighbouring hidden state is far outside the tolerance.
    neighbour = out.hidden_states[feature_layer - 1]
    if family == "clip":
        neighbour = neighbour[:, 1:]
    assert (got - neighbour).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------------------------
# 2. LLM
# ---------------------------------------------------------------------------------------------------------------

LLM_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)


def llm_configs():
    return {
        "llama": LlamaConfig(num_hidden_layers=2, **LLM_COMMON),
        "qwen2": Qwen2Config(num_hidden_layers=2, **LLM_COMMON),
        "qwen3-moe": Qwen3MoeConfig(num_hidden_layers=4, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                    decoder_sparse_step=2, moe_intermediate_size=16, mlp_only_layers=[],
                                    norm_topk_prob=True, **LLM_COMMON),
    }


@pytest.fixture(scope="module")
def llm_dirs(tmp_path_factory):
    torch.manual_seed(2)
    dirs = {}
    for name, config in llm_configs().items():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        randomize(model, std=0.1)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        dirs[name] = path
    return dirs


def _ids_and_mask(batch: int = 2, length: int = 12):
    ids = torch.randint(0, VOCAB, (batch, length))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in the second row
    return ids, mask


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3-moe"])
@torch.no_grad()
def test_llm_logits_match_transformers(llm_dirs, family):
    path = llm_dirs[family]
    ours = build_llm(LLMConfig(type=family, path=str(path)), vocab_size=VOCAB).eval()
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert type(ours) is type(ref)
    # A padding mask sends our attention to transformers' sdpa: the same kernel on the same inputs.
    assert (ours.config._attn_implementation, ref.config._attn_implementation) == (PER_SAMPLE_SDPA, "sdpa")
    ids, mask = _ids_and_mask()
    got = ours(input_ids=ids, attention_mask=mask).logits
    expected = ref(input_ids=ids, attention_mask=mask).logits
    assert got.shape == (2, 12, VOCAB)
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3-moe"])
def test_packed_rows_attend_within_samples_as_transformers_masks_them(llm_dirs, family):
    """Packed rows (no mask, positions restarting per sample, data/packing.py): our sample-by-sample attention
    gives transformers' logits and gradients under its dense block-diagonal mask, and those of each sample alone."""
    path = llm_dirs[family]
    ours = build_llm(LLMConfig(type=family, path=str(path)), vocab_size=VOCAB)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lengths = [[7, 12, 1, 4], [24]]  # a one-token sample, and a row that is one sample
    ids = torch.randint(0, VOCAB, (2, 24))
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    outputs = []
    for model in (ours, ref):
        logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        logits.square().mean().backward()
        outputs.append((logits.detach(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None}))
    (got, got_grads), (expected, expected_grads) = outputs
    torch.testing.assert_close(got, expected, **TOL)
    assert got_grads.keys() == expected_grads.keys() and len(got_grads) > 10
    for name in got_grads:
        torch.testing.assert_close(got_grads[name], expected_grads[name], **TOL, msg=name)
    with torch.no_grad():
        alone = torch.cat([ref(input_ids=part[None], use_cache=False).logits[0]
                           for part in ids[0].split(lengths[0])])
    torch.testing.assert_close(got[0], alone, **TOL)
    with torch.no_grad():  # the check can fail: attending across samples changes the later samples' logits
        across = ref(input_ids=ids[:1], use_cache=False).logits[0]
    assert (across[7:] - alone[7:]).abs().max() > 1e-2


def test_unknown_attention_is_named():
    with pytest.raises(ValueError, match=r"llm.attention='sdpa-per-sampel' is not an attention implementation"):
        build_llm(LLMConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, attention="sdpa-per-sampel"), VOCAB)


@torch.no_grad()
def test_llm_with_grown_vocab_keeps_pretrained_logits(llm_dirs):
    """New special tokens grow the vocabulary; the pretrained rows' logits stay exactly those of the reference."""
    path = llm_dirs["llama"]
    ours = build_llm(LLMConfig(type="llama", path=str(path)), vocab_size=VOCAB + 5).eval()
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert ours.get_input_embeddings().num_embeddings == VOCAB + 5
    assert ours.get_output_embeddings().out_features == VOCAB + 5
    ids, mask = _ids_and_mask()
    got = ours(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got[..., :VOCAB], ref(input_ids=ids, attention_mask=mask).logits, **TOL)


def _balance_by_hand(router_logits, n_experts, top_k, mask):
    """Switch-Transformer load balancing (transformers' convention): E * sum_i f_i * P_i over all sparse layers,
    f_i = top-k assignments of expert i per token, P_i = mean router probability of expert i."""
    rows = [] if mask is None else mask.reshape(-1).double()
    counts = torch.zeros(n_experts, dtype=torch.float64)
    probs_sum = torch.zeros(n_experts, dtype=torch.float64)
    total = 0.0
    for logits in router_logits:
        probs = torch.softmax(logits.double(), dim=-1)
        weight = torch.ones(probs.shape[0], dtype=torch.float64) if mask is None else rows
        chosen = probs.topk(top_k, dim=-1).indices
        one_hot = F.one_hot(chosen, n_experts).sum(1).double()  # (tokens, experts)
        counts += (one_hot * weight[:, None]).sum(0)
        probs_sum += (probs * weight[:, None]).sum(0)
        total += float(weight.sum())
    return n_experts * torch.sum((counts / total) * (probs_sum / total))


def _z_loss_by_hand(router_logits, mask):
    """Mean over (unmasked) tokens and sparse layers of log(sum_j exp(logit_j))^2, in float64."""
    keep = None if mask is None else mask.reshape(-1).bool()
    values = []
    for logits in router_logits:
        lse = torch.log(torch.exp(logits.double()).sum(-1))
        values.append(lse if keep is None else lse[keep])
    return torch.cat(values).square().mean()


@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "padded"])
@torch.no_grad()
def test_moe_aux_losses_match_transformers(llm_dirs, masked):
    path = llm_dirs["qwen3-moe"]
    ours = build_llm(LLMConfig(type="qwen3-moe", path=str(path)), vocab_size=VOCAB).eval()
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids, mask = _ids_and_mask()
    mask = mask if masked else None
    out = ours(input_ids=ids, attention_mask=mask, output_router_logits=True)
    ref_out = ref(input_ids=ids, attention_mask=mask, output_router_logits=True)

    # decoder_sparse_step=2 over 4 layers: layers 1 and 3 are sparse, each gives (batch*seq, experts) logits.
    assert len(out.router_logits) == 2
    assert all(r.shape == (2 * 12, 4) for r in out.router_logits)
    for a, b in zip(out.router_logits, ref_out.router_logits):
        torch.testing.assert_close(a, b, **TOL)

    n, k = num_experts(ours), ours.config.num_experts_per_tok
    assert (n, k) == (4, 2)
    balance, z = moe_aux_losses(out.router_logits, n, k, mask)

    torch.testing.assert_close(balance, load_balancing_loss_func(out.router_logits, n, k, mask), **TOL)
    torch.testing.assert_close(balance, ref_out.aux_loss, **TOL)  # what Qwen3MoeForCausalLM itself reports
    torch.testing.assert_close(balance.double(), _balance_by_hand(out.router_logits, n, k, mask), **TOL)
    torch.testing.assert_close(z.double(), _z_loss_by_hand(out.router_logits, mask), **TOL)
    assert z > 0 and balance > 0


def test_moe_masked_losses_ignore_padding():
    """Padding rows of any value do not move the masked losses; unmasked, the same rows do."""
    g = torch.Generator().manual_seed(3)
    logits = tuple(torch.randn(2 * 5, 4, generator=g) * 2 for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    poisoned = tuple(torch.where(mask.reshape(-1, 1).bool(), l, torch.full_like(l, 50.0)) for l in logits)
    clean = moe_aux_losses(logits, 4, 2, mask)
    dirty = moe_aux_losses(poisoned, 4, 2, mask)
    torch.testing.assert_close(clean[0], dirty[0], **TOL)
    torch.testing.assert_close(clean[1], dirty[1], **TOL)
    torch.testing.assert_close(clean[1].double(), _z_loss_by_hand(logits, mask), **TOL)
    assert not torch.allclose(moe_aux_losses(poisoned, 4, 2, None)[1], clean[1])


# ---------------------------------------------------------------------------------------------------------------
# 3. Full MLLM vs LLaVA
# ---------------------------------------------------------------------------------------------------------------


def tiny_mm1() -> MM1Model:
    cfg = config_from_dict({"model": {
        "encoder": {"image_size": IMAGE_SIZE, "patch_size": PATCH, "hidden_size": 32, "layers": 2, "heads": 2,
                    "intermediate_size": 64, "feature_layer": -2},
        "connector": {"type": "mlp", "mlp_depth": 2},
        "llm": {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 512}}})
    tok = build_tokenizer(cfg.tokenizer, ["a red circle on the left", "a blue square"] * 10)
    return MM1Model(cfg, tok).eval()


def to_llava_key(key: str) -> str:
    for ours, theirs in (("encoder.vision.", "model.vision_tower."),
                         ("connector.proj.0.", "model.multi_modal_projector.linear_1."),
                         ("connector.proj.2.", "model.multi_modal_projector.linear_2."),
                         ("llm.model.", "model.language_model."),
                         ("llm.lm_head.", "lm_head.")):
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(f"no LLaVA counterpart for {key}")


def test_llava_gelu_is_exact_erf_gelu():
    x = torch.linspace(-6, 6, 1001)
    assert torch.equal(ACT2FN["gelu"](x), torch.nn.GELU()(x))
    # Exact erf GELU up to float rounding, and measurably not the tanh approximation.
    torch.testing.assert_close(torch.nn.GELU()(x), 0.5 * x * (1 + torch.erf(x / math.sqrt(2))), atol=1e-6, rtol=0)
    assert (ACT2FN["gelu"](x) - F.gelu(x, approximate="tanh")).abs().max() > 1e-4


def _image(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@torch.no_grad()
def test_mm1_mlp_connector_matches_llava(attn):
    model = tiny_mm1()
    randomize(model, std=0.2)
    if attn != model.llm.config._attn_implementation:
        model.llm.set_attn_implementation(attn)
        model.encoder.vision.set_attn_implementation(attn)
    assert isinstance(model.connector.proj[1], torch.nn.GELU) and model.connector.proj[1].approximate == "none"

    config = LlavaConfig(
        vision_config=model.encoder.hf_config.to_dict(), text_config=model.llm.config.to_dict(),
        image_token_id=model.processor.image_token_id, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", multimodal_projector_bias=True,
    )
    llava = LlavaForConditionalGeneration(config).eval()
    llava.set_attn_implementation(attn)
    randomize(llava, std=0.5)  # whatever our weights do not overwrite is garbage, and must not matter

    ours_sd = model.state_dict()
    mapped = {to_llava_key(k): v for k, v in ours_sd.items()}
    missing, unexpected = llava.load_state_dict(mapped, strict=False)
    assert unexpected == []
    # Only the vision layer after feature_layer and the post-layernorm (which LLaVA skips) are not ours.
    assert sorted(missing) == sorted(k for k in llava.state_dict()
                                     if k.startswith(("model.vision_tower.encoder.layers.1.",
                                                      "model.vision_tower.post_layernorm.")))
    assert len(model.encoder.vision.encoder.layers) == 1 and len(llava.model.vision_tower.encoder.layers) == 2

    proc = model.processor
    samples = [
        proc.encode_chat([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
                          {"role": "assistant", "content": "a red circle"}], images=[_image(0, (40, 24))]),
        proc.encode_chat([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"},
                                                       {"type": "text", "text": "and"}, {"type": "image"}]},
                          {"role": "assistant", "content": "a blue square on the left"}],
                         images=[_image(1, (32, 32)), _image(2, (20, 50))]),
    ]
    batch = proc.collate(samples)
    ids, mask, labels, pixels = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["pixel_values"]
    assert pixels.shape == (3, 3, IMAGE_SIZE, IMAGE_SIZE)
    tokens_per_view = (IMAGE_SIZE // PATCH) ** 2
    assert int((ids == proc.image_token_id).sum()) == 3 * tokens_per_view
    assert mask[0].sum() < mask.shape[1]  # the first row is padded on the right

    ours = model(ids, pixel_values=pixels, attention_mask=mask, labels=labels)
    ref = llava(input_ids=ids, pixel_values=pixels, attention_mask=mask, labels=labels)
    assert ours.logits.shape == ref.logits.shape == (2, ids.shape[1], len(proc.tokenizer))
    torch.testing.assert_close(ours.logits, ref.logits, **TOL)
    torch.testing.assert_close(ours.lm_loss, ref.loss, **TOL)

    # The images matter: other pixels change both models' logits at the image and later positions.
    other = model(ids, pixel_values=torch.randn_like(pixels), attention_mask=mask).logits
    assert (other - ours.logits).abs().max() > 1e-2


def test_moe_block_must_agree_with_checkpoint(llm_dirs):
    path = str(llm_dirs["qwen3-moe"])
    from mm1.config import MoEConfig
    from mm1.model.llm import hf_llm_config

    assert hf_llm_config(LLMConfig(type="qwen3-moe", path=path, moe=MoEConfig(z_loss=0.01)), VOCAB).num_experts == 4
    with pytest.raises(ValueError, match="llm.moe.experts=8 contradicts"):
        hf_llm_config(LLMConfig(type="qwen3-moe", path=path, moe=MoEConfig(experts=8)), VOCAB)
