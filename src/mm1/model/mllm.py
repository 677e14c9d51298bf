"""The MLLM: image encoder -> connector -> image tokens scattered into the LLM's input embeddings.

One sample from disk to loss: the processor writes N image placeholders per view (N = the connector's
`output_tokens`) and the view pixels; here the encoder and connector turn the pixels into exactly those N
embeddings per view, one masked scatter puts them in place, and the LLM predicts the labelled tokens.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import AutoConfig, AutoTokenizer, DynamicCache

from mm1.config import ConnectorConfig, MM1Config, load_config, save_config
from mm1.data.processor import IGNORE_INDEX, Processor
from mm1.data.tokenizer import IMAGE_TOKEN
from mm1.model.connector import build_connector, output_tokens
from mm1.model.encoder import ENCODERS, ImageEncoder
from mm1.model.llm import build_llm, expert_load, moe_aux_losses, moe_weights, num_experts

WEIGHTS, CONFIG, HF_CONFIGS = "model.safetensors", "config.yaml", "hf_configs.json"


@dataclass
class MM1Output:
    loss: torch.Tensor | None
    logits: torch.Tensor
    lm_loss: torch.Tensor | None = None
    balance_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None
    cache: object | None = None  # the KV cache (transformers >= 5.24 names it `cache`)
    expert_load: torch.Tensor | None = None  # MoE: share of routed tokens per expert, averaged over sparse layers


class MM1Model(nn.Module):
    def __init__(self, config: MM1Config, tokenizer, hf_configs: dict | None = None, load_weights: bool = True):
        super().__init__()
        self.config = config
        mcfg = config.model
        hf_configs = hf_configs or {}
        enc_hf = hf_configs.get("encoder")
        if enc_hf is not None:
            enc_hf = ENCODERS.get(mcfg.encoder.type).config_class.from_dict(enc_hf)
        llm_hf = hf_configs.get("llm")
        if llm_hf is not None:
            llm_hf = AutoConfig.for_model(**llm_hf)
        self.encoder = ImageEncoder(mcfg.encoder, enc_hf, load_weights)
        self.llm = build_llm(mcfg.llm, len(tokenizer), llm_hf, load_weights)
        self.connector = build_connector(mcfg.connector, self.encoder.width, self.llm.config.hidden_size)
        if self.connector.norm is not None:
            self.scale_image_tokens()
        self.processor = Processor(tokenizer, mcfg, config.image)
        self.image_token_id = self.processor.image_token_id
        self.num_experts = num_experts(self.llm)

    @torch.no_grad()
    def scale_image_tokens(self) -> None:
        """Image tokens start at the scale of the text tokens around them (the output norm's gain)."""
        self.connector.norm.weight.fill_(self.llm.get_input_embeddings().weight.float().pow(2).mean().sqrt())

    # ---- images -> embeddings ------------------------------------------------------------------------------
    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(views, 3, S, S) -> (views, tokens_per_view, llm_width)."""
        patches = self.encoder(pixel_values)
        grid = self.encoder.grid(pixel_values.shape[-1])
        tokens = self.connector(patches)
        expected = output_tokens(self.config.model.connector, grid)
        if tokens.shape[1] != expected:
            raise ValueError(f"connector produced {tokens.shape[1]} tokens per view, its rule says {expected}")
        return tokens

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, run_vision: bool = False) -> torch.Tensor:
        embeds = self.llm.get_input_embeddings()(input_ids)
        slots = input_ids == self.image_token_id
        n_slots = int(slots.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if n_slots:
                raise ValueError(f"input has {n_slots} image tokens but no images (pixel_values is empty)")
            if run_vision:  # a blank view, times zero: same modules in the same order as a batch with images
                size = self.processor.views.size
                blank = torch.zeros(1, 3, size, size, device=embeds.device, dtype=embeds.dtype)
                embeds = embeds + 0.0 * self.image_features(blank).sum()
            return embeds
        features = self.image_features(pixel_values.to(embeds.dtype)).flatten(0, 1)
        if features.shape[0] != n_slots:
            raise ValueError(
                f"image token/feature mismatch: the text has {n_slots} image tokens but the "
                f"{pixel_values.shape[0]} image views give {features.shape[0]} features"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))

    # ---- forward and loss ----------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cache=None, use_cache: bool = False,
                num_target_tokens: float | None = None, run_vision: bool = False) -> MM1Output:
        """`num_target_tokens` normalises the summed loss (e.g. over all micro-batches of a step or all ranks);
        by default the loss is the mean over this batch's target tokens.

        `run_vision` runs encoder and connector on one blank view when the batch has no image and adds its output
        times zero to the loss: under DDP and FSDP2 every rank must run the same modules in every step, or a
        text-only batch on one rank would leave the others waiting for its gradient collectives."""
        extra = {"output_router_logits": True} if self.num_experts and labels is not None else {}
        out = self.llm(
            inputs_embeds=self.embed(input_ids, pixel_values, run_vision), attention_mask=attention_mask,
            position_ids=position_ids, cache=cache, use_cache=use_cache, **extra,
        )
        if labels is None:
            return MM1Output(None, out.logits, cache=out.cache)
        targets = labels[:, 1:]
        summed = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                 ignore_index=IGNORE_INDEX, reduction="sum")
        denom = num_target_tokens if num_target_tokens is not None else (targets != IGNORE_INDEX).sum().clamp(min=1)
        lm_loss = summed / denom
        loss, balance, z = lm_loss, None, None
        if extra:
            token_mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
            top_k = self.llm.config.num_experts_per_tok
            balance, z = moe_aux_losses(out.router_logits, self.num_experts, top_k, token_mask)
            w_balance, w_z = moe_weights(self.config.model.llm.moe)
            loss = lm_loss + w_balance * balance + w_z * z
        return MM1Output(loss, out.logits, lm_loss, balance, z, out.cache,
                         expert_load(out.router_logits, self.num_experts, self.llm.config.num_experts_per_tok)
                         if extra else None)

    def set_image_config(self, image_cfg) -> None:
        """Switch how images become views (e.g. high-resolution splitting for continual pre-training)."""
        self.config = dataclasses.replace(self.config, image=image_cfg)
        self.processor = Processor(self.processor.tokenizer, self.config.model, image_cfg)

    # ---- generation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, max_new_tokens: int = 32, temperature: float = 0.0,
                 top_p: float = 1.0, eos_token_id: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None,
                 on_tokens: Callable[[torch.Tensor], bool | None] | None = None) -> torch.Tensor:
        """Batched decoding of left-padded prompts.  Returns (batch, new_tokens), padded after EOS with EOS.

        `use_cache=False` recomputes the whole sequence at every step (the reference the KV cache must match).
        `on_tokens` receives each step's new tokens, for streaming; returning True ends generation there (e.g. when
        every row has met a stop string)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape[1] and (attention_mask[:, -1] == 0).any():
            raise ValueError("generate expects left-padded prompts (the last column of attention_mask must be 1)")
        eos = eos_token_id if eos_token_id is not None else self.processor.tokenizer.eos_token_id
        embeds = self.embed(input_ids, pixel_values)
        mask = attention_mask.clone()
        cache = DynamicCache(config=self.llm.config) if use_cache else None
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new_tokens = []
        step_embeds = embeds
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            if use_cache:
                positions = positions[:, -step_embeds.shape[1]:]
            # Only the last position's logits are needed: skips the output layer over the whole prompt.
            logits = self.llm(inputs_embeds=step_embeds, attention_mask=mask, position_ids=positions,
                              cache=cache, use_cache=use_cache, logits_to_keep=1).logits[:, -1].float()
            token = sample(logits, temperature, top_p, generator)
            token = torch.where(finished, torch.full_like(token, eos), token)
            new_tokens.append(token)
            stop = on_tokens(token) if on_tokens is not None else False
            finished |= token == eos
            if stop or finished.all():
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            token_embeds = self.llm.get_input_embeddings()(token[:, None])
            embeds = torch.cat([embeds, token_embeds], dim=1)
            step_embeds = token_embeds if use_cache else embeds
        return torch.stack(new_tokens, dim=1) if new_tokens else input_ids.new_zeros((input_ids.shape[0], 0))

    def chat(self, messages: list[dict], images=(), **kwargs) -> str:
        """One reply to a conversation (convenience for scripts and the CLI)."""
        enc = self.processor.encode_chat(messages, images, add_generation_prompt=True)
        batch = self.processor.collate([enc], padding_side="left")
        gen = self.config.generation
        settings = dict(max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p) | kwargs
        out = self.generate(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"), **settings)
        return self.processor.decode(out[0].tolist())

    # ---- save / load ---------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        """One directory: weights (safetensors), the mm1 config, the transformers configs, the tokenizer."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_model(self, str(path / WEIGHTS))
        save_config(self.config, path / CONFIG)
        (path / HF_CONFIGS).write_text(json.dumps(self.hf_configs(), indent=1, default=str))
        self.processor.tokenizer.save_pretrained(path)

    def hf_configs(self) -> dict:
        """The `transformers` configs that rebuild encoder and LLM without their source directories."""
        return {"encoder": self.encoder.hf_config.to_dict(), "llm": self.llm.config.to_dict()}

    @classmethod
    def from_pretrained(cls, path: str | Path, connector: ConnectorConfig | None = None) -> "MM1Model":
        """The saved model; with `connector`, that connector in place of the saved one (a stage's connector change):
        the saved weights load by name, and the parameters only the new connector has are drawn from the current
        random state.  A change that drops or reshapes a saved parameter raises."""
        path = Path(path)
        for name in (WEIGHTS, CONFIG, HF_CONFIGS):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} is not an mm1 model directory: {name} is missing")
        config = load_config(path / CONFIG)
        if connector is not None:
            config = dataclasses.replace(config, model=dataclasses.replace(config.model, connector=connector))
        tokenizer = AutoTokenizer.from_pretrained(path)
        hf_configs = json.loads((path / HF_CONFIGS).read_text())
        model = cls(config, tokenizer, hf_configs, load_weights=False)
        with safe_open(str(path / WEIGHTS), "pt") as saved:
            shapes = {name: tuple(saved.get_slice(name).get_shape()) for name in saved.keys()}
        own = model.state_dict()
        reshaped = [f"{name} {shape} -> {tuple(own[name].shape)}" for name, shape in shapes.items()
                    if name in own and shape != tuple(own[name].shape)]
        if reshaped:
            raise ValueError(f"{path / WEIGHTS} does not match the config: {len(reshaped)} parameters have another "
                             f"shape, e.g. {reshaped[:3]}")
        missing, unexpected = load_model(model, str(path / WEIGHTS), strict=False)
        if unexpected or (missing and connector is None):
            raise ValueError(f"{path / WEIGHTS} does not match the config: missing "
                             f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        if "connector.norm.weight" in missing:  # a new output norm starts at the loaded text embeddings' scale
            model.scale_image_tokens()
        return model.eval()


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # always keeps the most likely token
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
