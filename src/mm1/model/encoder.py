"""Image encoder: a CLIP-style ViT from `transformers`, random-initialised from config or loaded from a local directory.

The encoder returns patch features on a (grid x grid) layout.  Views larger or smaller than the native
resolution run through position-embedding interpolation (MM1.5 runs a 378-px encoder on 672-px tiles).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, PretrainedConfig, SiglipVisionConfig, SiglipVisionModel

from mm1.config import EncoderConfig
from mm1.registry import Registry


@dataclass(frozen=True)
class EncoderFamily:
    config_class: type[PretrainedConfig]
    model_class: type[nn.Module]
    has_class_token: bool  # CLIP prepends a CLS token that the connector does not use


ENCODERS: Registry[EncoderFamily] = Registry("image encoder")
ENCODERS.register("clip")(EncoderFamily(CLIPVisionConfig, CLIPVisionModel, has_class_token=True))
ENCODERS.register("siglip")(EncoderFamily(SiglipVisionConfig, SiglipVisionModel, has_class_token=False))


def hf_encoder_config(cfg: EncoderConfig) -> PretrainedConfig:
    family = ENCODERS.get(cfg.type)
    if cfg.path:
        return family.config_class.from_pretrained(cfg.path)
    return family.config_class(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
    )


class ConvStem(nn.Sequential):
    """Stride-2 3x3 convolutions from pixels to one feature vector per patch (channels doubling up to the width),
    then a 1x1 projection: what `stem: conv` puts in place of the linear patch embedding."""

    def __init__(self, width: int, patch_size: int):
        layers, channels = [], 3
        halvings = patch_size.bit_length() - 1
        for i in range(halvings):
            out = max(width >> (halvings - 1 - i), 8)
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GELU()]
            channels = out
        super().__init__(*layers, nn.Conv2d(channels, width, 1))

    @property
    def weight(self) -> torch.Tensor:  # transformers' embeddings read the input dtype from patch_embedding.weight
        return self[-1].weight


class ImageEncoder(nn.Module):
    """Patch features of one hidden layer, without the class token, shaped (views, grid*grid, width)."""

    def __init__(self, cfg: EncoderConfig, hf_config: PretrainedConfig | None = None, load_weights: bool = True):
        super().__init__()
        family = ENCODERS.get(cfg.type)
        self.family = family
        hf_config = hf_config or hf_encoder_config(cfg)
        if cfg.path and load_weights:
            vision = family.model_class.from_pretrained(cfg.path, config=hf_config)
        else:
            vision = family.model_class(hf_config)
        if cfg.stem == "conv":
            vision.embeddings.patch_embedding = ConvStem(hf_config.hidden_size, hf_config.patch_size)
        self.vision = vision
        self.hf_config = hf_config
        self.patch_size = hf_config.patch_size
        self.native_size = hf_config.image_size
        self.width = hf_config.hidden_size
        # Keep exactly the layers whose output is used: the rest would be wasted compute and, under DDP,
        # parameters without gradients.  hidden_states[k] in transformers is the output of layer k.
        n_layers = hf_config.num_hidden_layers
        keep = cfg.feature_layer if cfg.feature_layer > 0 else n_layers + 1 + cfg.feature_layer
        if not 1 <= keep <= n_layers:
            raise ValueError(f"feature_layer {cfg.feature_layer} is outside an encoder of {n_layers} layers")
        self.vision.encoder.layers = self.vision.encoder.layers[:keep]
        for unused in ("post_layernorm", "head"):
            if hasattr(self.vision, unused):
                delattr(self.vision, unused)

    def grid(self, view_size: int) -> int:
        if view_size % self.patch_size:
            raise ValueError(f"view size {view_size} is not a multiple of the patch size {self.patch_size}")
        return view_size // self.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        interpolate = (height, width) != (self.native_size, self.native_size)
        hidden = self.vision.embeddings(pixel_values, interpolate_pos_encoding=interpolate)
        if hasattr(self.vision, "pre_layrnorm"):  # CLIP normalises embeddings before the first layer
            hidden = self.vision.pre_layrnorm(hidden)
        hidden = self.vision.encoder(inputs_embeds=hidden).last_hidden_state
        if self.family.has_class_token:
            hidden = hidden[:, 1:]
        return hidden

    def hf_config_dict(self) -> dict[str, Any]:
        return self.hf_config.to_dict()
