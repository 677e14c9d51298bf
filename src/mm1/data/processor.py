"""The processor owns all token arithmetic: images -> views -> image placeholders, chat -> ids and labels.

The number of placeholders an image gets comes from the connector's own rule (`output_tokens`), the same the
model checks at forward time, so the two cannot drift apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase
from transformers.utils.chat_template_utils import render_jinja_template

from mm1.config import ImageConfig, ModelConfig
from mm1.data.image import ImageSource, ImageViews, ViewMaker, load_image
from mm1.data.tokenizer import IMAGE_TOKEN
from mm1.model.connector import output_tokens

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None  # (views, 3, S, S) for all images of the sample, in order
    num_images: int = 0
    origin: str = ""  # "file:record" it was read from, so a sample dropped later is named


def flatten_content(content: str | list[dict]) -> str:
    """OpenAI-style content parts -> one string with an <image> marker per image part, so templates stay simple."""
    if isinstance(content, str):
        return content
    return "".join(IMAGE_TOKEN if part["type"] in ("image", "image_url") else part["text"] for part in content)


class Processor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, model_cfg: ModelConfig, image_cfg: ImageConfig):
        self.tokenizer = tokenizer
        self.image_cfg = image_cfg
        self.views = ViewMaker(image_cfg, model_cfg.encoder)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.tokens_per_view = output_tokens(model_cfg.connector, self.views.size // model_cfg.encoder.patch_size)

    def image_token_count(self, width: int, height: int, images_in_sample: int = 1) -> int:
        """Image tokens an image of this size gets in a sample with this many images."""
        return self.views.num_views(width, height, images_in_sample) * self.tokens_per_view

    def load_image(self, source: ImageSource):
        return load_image(source, self.image_cfg.max_pixels)

    def _expand(self, text: str, target_chars: np.ndarray, images: Sequence[ImageSource]):
        """Replace each <image> marker by its views' placeholders; returns new text, its target mask, pixels."""
        pieces = text.split(IMAGE_TOKEN)
        if len(pieces) - 1 != len(images):
            raise ValueError(f"text has {len(pieces) - 1} {IMAGE_TOKEN} markers but {len(images)} images were given")
        out_text, out_mask, pixels = [], [], []
        pos = 0
        for i, piece in enumerate(pieces):
            out_text.append(piece)
            out_mask.append(target_chars[pos:pos + len(piece)])
            pos += len(piece) + len(IMAGE_TOKEN)
            if i < len(images):
                views: ImageViews = self.views(self.load_image(images[i]), len(images), i)
                placeholder = "".join(marker + IMAGE_TOKEN * self.tokens_per_view for marker in views.layout)
                out_text.append(placeholder)
                out_mask.append(np.zeros(len(placeholder), dtype=bool))
                pixels.append(views.pixels)
        pixel_values = torch.cat(pixels) if pixels else None
        return "".join(out_text), np.concatenate(out_mask) if out_mask else np.zeros(0, bool), pixel_values

    def _tokenize(self, text: str, target_chars: np.ndarray, images: Sequence[ImageSource]) -> Encoded:
        text, target_chars, pixel_values = self._expand(text, target_chars, images)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        labels = [tok if (end > start and target_chars[start]) else IGNORE_INDEX
                  for tok, (start, end) in zip(ids, enc["offset_mapping"])]
        expected = 0 if pixel_values is None else pixel_values.shape[0] * self.tokens_per_view
        found = sum(tok == self.image_token_id for tok in ids)
        if found != expected:
            raise ValueError(f"tokenised text holds {found} image tokens but its images need {expected}")
        return Encoded(ids, labels, pixel_values, len(images))

    def encode_chat(self, messages: list[dict[str, Any]], images: Sequence[ImageSource] = (),
                    add_generation_prompt: bool = False) -> Encoded:
        """Chat messages -> ids with labels on exactly the assistant turns (from the template's generation spans)."""
        if not messages:
            raise ValueError("a conversation needs at least one message")
        rendered, spans = render_jinja_template(
            [[{"role": m["role"], "content": flatten_content(m["content"])} for m in messages]], chat_template=self.tokenizer.chat_template, return_assistant_tokens_mask=True,
            add_generation_prompt=add_generation_prompt, **self.tokenizer.special_tokens_map,
        )
        text = rendered[0]
        target = np.zeros(len(text), dtype=bool)
        for start, end in spans[0]:
            target[start:end] = True
        return self._tokenize(text, target, images)

    def encode_text(self, text: str, images: Sequence[ImageSource] = ()) -> Encoded:
        """A pre-training document (caption, interleaved or text-only): loss on every text token, ends with EOS."""
        text = text + self.tokenizer.eos_token
        return self._tokenize(text, np.ones(len(text), dtype=bool), images)

    def collate(self, batch: Sequence[Encoded], padding_side: str = "right") -> dict[str, torch.Tensor]:
        length = max(len(e.input_ids) for e in batch)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(batch), length), pad, dtype=torch.long)
        labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, e in enumerate(batch):
            n = len(e.input_ids)
            cols = slice(length - n, length) if padding_side == "left" else slice(0, n)
            ids[row, cols] = torch.tensor(e.input_ids)
            labels[row, cols] = torch.tensor(e.labels)
            mask[row, cols] = 1
        pixels = [e.pixel_values for e in batch if e.pixel_values is not None]
        out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        if pixels:
            out["pixel_values"] = torch.cat(pixels)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
