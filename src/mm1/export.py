"""`mm1 export MODEL OUT`: a saved mm1 model as a `transformers` LLaVA checkpoint, for tools that load
`LlavaForConditionalGeneration` (and `LlavaProcessor`) directly.

LLaVA is vision tower -> two-layer GELU MLP over every patch -> LLM, one view per image.  An mm1 model with the
`mlp` connector (mlp_depth 2), a CLIP or SigLIP encoder, a dense Llama/Qwen LLM and no image splitting is exactly
that, so the export renames weights and writes configs; nothing is approximated.  The C-Abstractor, attention
pooling and average pooling connectors, and MM1.5's tiles with position indicators, have no `transformers`
equivalent: for those models the mm1 directory itself is the serving format (`mm1 serve`, `mm1.load`).

Our encoder keeps only the layers up to `feature_layer`; the exported vision tower is that truncated tower
(num_hidden_layers = the kept layers) read at its last hidden state (vision_feature_layer = -1), so no weight is
missing or invented.  LLaVA's vision model also owns a post-layernorm it never applies to the features it reads;
it is written as the identity.

Images: the processor config approximates our preprocessing (pad to square with the mean colour, resize, normalise);
we pad right and below, LLaVA pads both sides, so only square images give identical pixels.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from mm1.data.tokenizer import IMAGE_TOKEN
from mm1.model.mllm import MM1Model

# Encoder type -> LLaVA's vision_feature_select_strategy: "default" drops CLIP's class token, "full" keeps all.
FEATURE_STRATEGY = {"clip": "default", "siglip": "full"}
LLMS = ("llama", "qwen2", "qwen3")  # dense text models transformers' LLaVA builds (MoE untested there)
# Prepended to our chat template, which expects each message's content as one string with <image> markers (the
# processor flattens OpenAI-style parts first): LlavaProcessor.apply_chat_template passes the parts themselves.
FLATTEN_PARTS = """{%- set ns = namespace(messages=[]) -%}
{%- for m in messages -%}
{%- if m['content'] is string -%}{%- set ns.messages = ns.messages + [m] -%}
{%- else -%}{%- set text = namespace(s='') -%}
{%- for part in m['content'] -%}
{%- set text.s = text.s + ('<image>' if part['type'] in ('image', 'image_url') else part['text']) -%}
{%- endfor -%}
{%- set ns.messages = ns.messages + [{'role': m['role'], 'content': text.s}] -%}
{%- endif -%}
{%- endfor -%}
{%- set messages = ns.messages -%}
"""
KEYS = (("encoder.vision.", "model.vision_tower."),
        ("connector.proj.0.", "model.multi_modal_projector.linear_1."),
        ("connector.proj.2.", "model.multi_modal_projector.linear_2."),
        ("llm.model.", "model.language_model."),
        ("llm.lm_head.", "lm_head."))


def llava_key(key: str) -> str:
    for ours, theirs in KEYS:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(f"no LLaVA counterpart for {key}")


def check_exportable(model: MM1Model) -> None:
    cfg = model.config
    connector, encoder, llm = cfg.model.connector, cfg.model.encoder, cfg.model.llm
    problems = []
    if connector.type != "mlp" or connector.mlp_depth != 2:
        problems.append(f"the connector is {connector.type!r} (mlp_depth {connector.mlp_depth}); LLaVA has only the "
                        "2-layer MLP projector (c-abstractor, attn-pool and avg-pool have no transformers equivalent)")
    extras = [name for name, on in (("a grid position embedding", connector.position_embedding),
                                    ("an output norm", connector.output_norm)) if on]
    if extras:
        problems.append(f"the connector adds {' and '.join(extras)}; LLaVA's projector has no such part")
    if encoder.stem != "patch":
        problems.append(f"the encoder has a {encoder.stem} stem; LLaVA's vision tower embeds patches linearly")
    if encoder.type not in FEATURE_STRATEGY:
        problems.append(f"encoder type {encoder.type!r} is not one of {sorted(FEATURE_STRATEGY)}")
    if llm.type not in LLMS:
        problems.append(f"LLM type {llm.type!r} is not one of {list(LLMS)}")
    if cfg.image.split.enabled:
        problems.append("image splitting is on; LLaVA encodes one view per image")
    if model.processor.views.size != model.encoder.native_size:
        problems.append(f"views are {model.processor.views.size} px but the encoder's native size is "
                        f"{model.encoder.native_size} px (LLaVA does not interpolate position embeddings)")
    if problems:
        raise ValueError("cannot export to the transformers LLaVA layout: " + "; ".join(problems)
                         + ". Serve the mm1 directory itself instead (mm1 serve / mm1.load).")


def llava_config(model: MM1Model) -> LlavaConfig:
    vision = model.encoder.hf_config.to_dict() | {"num_hidden_layers": len(model.encoder.vision.encoder.layers)}
    if model.config.model.encoder.type == "siglip":
        vision["vision_use_head"] = False  # our encoder drops SigLIP's pooling head: nothing reads it
    tie = model.llm.config.tie_word_embeddings
    return LlavaConfig(
        vision_config=vision, text_config=model.llm.config.to_dict(), image_token_id=model.image_token_id,
        vision_feature_layer=-1, vision_feature_select_strategy=FEATURE_STRATEGY[model.config.model.encoder.type],
        projector_hidden_act="gelu", multimodal_projector_bias=True, tie_word_embeddings=tie,
    )


def llava_processor(model: MM1Model) -> LlavaProcessor:
    size, enc = model.encoder.native_size, model.config.model.encoder
    images = LlavaImageProcessorPil(
        do_pad=True, size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(enc.image_mean), image_std=list(enc.image_std),
    )
    tokenizer = copy.deepcopy(model.processor.tokenizer)
    tokenizer.chat_template = FLATTEN_PARTS + tokenizer.chat_template
    return LlavaProcessor(
        image_processor=images, tokenizer=tokenizer, patch_size=model.encoder.patch_size,
        vision_feature_select_strategy=FEATURE_STRATEGY[enc.type], image_token=IMAGE_TOKEN,
        num_additional_image_tokens=int(model.encoder.family.has_class_token), chat_template=tokenizer.chat_template,
    )


def export_llava(model_dir: str | Path, out: str | Path) -> Path:
    model = MM1Model.from_pretrained(model_dir)
    check_exportable(model)
    config = llava_config(model)
    with torch.device("meta"):  # shapes only: the weights are ours, assigned below
        llava = LlavaForConditionalGeneration(config)
    state = {llava_key(k): v for k, v in model.state_dict().items()}
    for key, p in llava.state_dict().items():
        if key not in state and ".post_layernorm." in key:
            state[key] = torch.ones(p.shape) if key.endswith("weight") else torch.zeros(p.shape)
    llava.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        llava.tie_weights()
    tokenizer = model.processor.tokenizer
    llava.generation_config.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                   bos_token_id=tokenizer.bos_token_id)
    out = Path(out)
    llava.save_pretrained(out)
    llava_processor(model).save_pretrained(out)
    return out
