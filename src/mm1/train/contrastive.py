"""A CLIP-style stage for an image encoder trained from scratch (`objective: contrastive` in a recipe stage).

MM1's encoder is a CLIP model: it arrives already knowing which words go with which image regions.  A model built
from random weights has no such encoder, and an LLM trained on captions then spends hundreds of steps on the
language prior before it starts to read the image (measured on the synthetic world: with a random encoder the loss
with shuffled images equals the loss with the right ones for the first ~250 caption steps; after a contrastive stage
the gap opens within 50).  This stage gives the encoder those features first: each image's pooled patch features and
its caption, encoded by a small text tower, are pulled together and pushed away from the other pairs of the batch
(symmetric InfoNCE with a learnt temperature).  The text tower and projections are discarded afterwards; the stage's
exported model is the full MM1 model with the trained encoder.  Negatives are the local batch (no all-gather across
ranks), so under DDP each rank contrasts its own `batch_size` pairs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mm1.config import ContrastiveConfig
from mm1.data.processor import IGNORE_INDEX


class TextTower(nn.Module):
    """Token and position embeddings, a pre-norm transformer, mean over the caption's tokens."""

    def __init__(self, cfg: ContrastiveConfig, vocab_size: int, max_len: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, cfg.width)
        self.positions = nn.Embedding(max_len, cfg.width)
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.tokens(input_ids) + self.positions.weight[: input_ids.shape[1]]
        hidden = self.norm(self.blocks(hidden, src_key_padding_mask=~mask))
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)


class ContrastiveHead(nn.Module):
    """What CLIP trains beside the image encoder: the text tower, both projections and the temperature."""

    def __init__(self, cfg: ContrastiveConfig, image_width: int, vocab_size: int, max_len: int):
        super().__init__()
        self.text = TextTower(cfg, vocab_size, max_len)
        self.image_projection = nn.Linear(image_width, cfg.width, bias=False)
        self.text_projection = nn.Linear(cfg.width, cfg.width, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.temperature)))


def swap_groups(tokenizer, groups: list[list[str]]) -> list[list[int]]:
    """The token ids of each group of `swap_words` (" word" must be one token, as captions have it mid-sentence)."""
    ids = []
    for group in groups:
        if len(group) < 2:
            raise ValueError(f"contrastive.swap_words group {group} needs at least two words to swap")
        ids.append([])
        for word in group:
            pieces = tokenizer.tokenize(" " + word)
            if len(pieces) != 1:
                raise ValueError(f"contrastive.swap_words: {word!r} is {len(pieces)} tokens {pieces} for this "
                                 f"tokenizer; only single-token words can be swapped")
            ids[-1].append(tokenizer.convert_tokens_to_ids(pieces[0]))
    return ids


def swapped(input_ids: torch.Tensor, caption: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """`input_ids` with every caption token of a group replaced by another word of that group, chosen at random
    per occurrence (so "a red circle and a blue square" may become "a red square and a blue hexagon")."""
    out = input_ids.clone()
    for group in groups:
        index = (input_ids.unsqueeze(-1) == group).int().argmax(-1)
        hit = caption & torch.isin(input_ids, group)
        shift = torch.randint(1, len(group), input_ids.shape, device=input_ids.device)
        out = torch.where(hit, group[(index + shift) % len(group)], out)
    return out


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's convert("L")


def greyscale(pixels: torch.Tensor, share: float, mean: tuple, std: tuple) -> torch.Tensor:
    """A random `share` of the normalised views (views, 3, H, W) turned grey, in the same normalisation."""
    shape = (1, 3, 1, 1)
    mean, std = (torch.tensor(v, dtype=pixels.dtype, device=pixels.device).view(shape) for v in (mean, std))
    luma = torch.tensor(LUMA, dtype=pixels.dtype, device=pixels.device).view(shape)
    grey = (((pixels * std + mean) * luma).sum(1, keepdim=True) - mean) / std
    chosen = torch.rand(len(pixels), device=pixels.device) < share
    return torch.where(chosen.view(-1, 1, 1, 1), grey, pixels)


class ContrastiveModel(nn.Module):
    """The encoder under training (shared with the MM1 model, so the stage's export carries it) and its head."""

    def __init__(self, encoder: nn.Module, cfg: ContrastiveConfig, vocab_size: int, max_len: int,
                 normalisation: tuple[tuple, tuple], swap_ids: list[list[int]] = ()):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.normalisation = normalisation  # the views' (mean, std), to turn them grey
        self.head = ContrastiveHead(cfg, encoder.width, vocab_size, max_len)
        self.swap_ids = [torch.tensor(group) for group in swap_ids]

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, pixel_values: torch.Tensor,
                **_) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, image->caption retrieval accuracy within the batch) for one batch of image-caption samples."""
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"a contrastive stage needs exactly one image view per caption: got "
                             f"{pixel_values.shape[0]} views for {input_ids.shape[0]} captions (turn image "
                             f"splitting off for this stage and use sources with one image per record)")
        head = self.head
        caption = labels != IGNORE_INDEX  # the caption's tokens: image markers and padding are never targets
        if self.training and self.cfg.greyscale:
            pixel_values = greyscale(pixel_values, self.cfg.greyscale, *self.normalisation)
        images = F.normalize(head.image_projection(self.encoder(pixel_values).mean(1)), dim=-1)
        texts = F.normalize(head.text_projection(head.text(input_ids, caption)), dim=-1)
        scale = head.logit_scale.exp().clamp(max=100.0)  # CLIP caps the scale at 100
        logits = images @ texts.T * scale
        pairs = torch.arange(len(logits), device=logits.device)
        image_to_text = logits
        if self.swap_ids:
            # Hard negatives join the captions each image is contrasted with (not the other direction: a swapped
            # caption has no image of its own).  Captions without a swappable word add none.
            groups = [group.to(input_ids.device) for group in self.swap_ids]
            negative_ids = swapped(input_ids, caption, groups)
            has = (negative_ids != input_ids).any(1)
            negatives = F.normalize(head.text_projection(head.text(negative_ids[has], caption[has])), dim=-1)
            image_to_text = torch.cat([logits, images @ negatives.T * scale], 1)
        loss = (F.cross_entropy(image_to_text, pairs) + F.cross_entropy(logits.T, pairs)) / 2
        return loss, (logits.argmax(1) == pairs).float().mean()
