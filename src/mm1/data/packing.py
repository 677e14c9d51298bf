"""Sequence packing: several samples per fixed-length sequence, attention kept within each sample.

A packed row carries no attention mask; its `position_ids` restart at 0 for every sample, and `transformers`
turns such position ids into a block-diagonal causal mask.  The first token of every sample is never a target,
so the loss of a packed batch equals the loss of the same samples unpacked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import torch

from mm1.data.processor import IGNORE_INDEX, Encoded, Processor
from mm1.data.readers import SkipStats


def fit(sample: Encoded, seq_len: int, image_token_id: int, stats: SkipStats) -> Encoded | None:
    """Truncate trailing text to `seq_len`; drop (and count) a sample whose image tokens reach past it."""
    n = len(sample.input_ids)
    if n <= seq_len:
        return sample
    where = f"{sample.origin or 'sample'} ({n} tokens)"
    last_image = max((i for i, t in enumerate(sample.input_ids) if t == image_token_id), default=-1)
    if last_image >= seq_len:
        stats.skip(f"image tokens reach past seq_len={seq_len}", where)
        return None
    labels = sample.labels[:seq_len]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        stats.skip(f"no target tokens left within seq_len={seq_len}", where)
        return None
    stats.truncated += 1
    return dataclasses.replace(sample, input_ids=sample.input_ids[:seq_len], labels=labels)


@dataclass
class PackStats:
    sequences: int = 0
    tokens: int = 0  # sample tokens placed
    samples: int = 0

    def efficiency(self, seq_len: int) -> float:
        return self.tokens / max(1, self.sequences * seq_len)


class Packer:
    """Online first-fit over a few open sequences; the fullest one is emitted when a sample fits nowhere."""

    def __init__(self, seq_len: int, max_images: int, processor: Processor, open_sequences: int = 8):
        self.seq_len, self.max_images = seq_len, max_images
        self.processor = processor
        self.open_sequences = open_sequences
        self.bins: list[list[Encoded]] = []
        self.stats = PackStats()

    def _fits(self, bin_: list[Encoded], sample: Encoded) -> bool:
        tokens = sum(len(s.input_ids) for s in bin_) + len(sample.input_ids)
        images = sum(s.num_images for s in bin_) + sample.num_images
        return tokens <= self.seq_len and images <= self.max_images

    def _emit(self, index: int) -> list[Encoded]:
        bin_ = self.bins.pop(index)
        self.stats.sequences += 1
        self.stats.tokens += sum(len(s.input_ids) for s in bin_)
        self.stats.samples += len(bin_)
        return bin_

    def next_sequence(self, samples: Iterator[Encoded]) -> list[Encoded]:
        while True:
            sample = next(samples)
            target = next((i for i, b in enumerate(self.bins) if self._fits(b, sample)), None)
            if target is not None:
                self.bins[target].append(sample)
                if sum(len(s.input_ids) for s in self.bins[target]) == self.seq_len:
                    return self._emit(target)
                continue
            self.bins.append([sample])
            if len(self.bins) > self.open_sequences:
                fullest = max(range(len(self.bins) - 1), key=lambda i: sum(len(s.input_ids) for s in self.bins[i]))
                return self._emit(fullest)

    def collate(self, sequences: list[list[Encoded]]) -> dict[str, torch.Tensor]:
        pad = self.processor.tokenizer.pad_token_id
        ids = torch.full((len(sequences), self.seq_len), pad, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        positions = torch.zeros_like(ids)
        pixels = []
        for row, sequence in enumerate(sequences):
            start = 0
            for sample in sequence:
                n = len(sample.input_ids)
                ids[row, start:start + n] = torch.tensor(sample.input_ids)
                labels[row, start + 1:start + n] = torch.tensor(sample.labels[1:])
                positions[row, start:start + n] = torch.arange(n)
                start += n
                if sample.pixel_values is not None:
                    pixels.append(sample.pixel_values)
            positions[row, start:] = torch.arange(self.seq_len - start)  # padding: one more "sample"
        batch = {"input_ids": ids, "labels": labels, "position_ids": positions}
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
        return batch

    def state_dict(self) -> dict:
        return {"bins": [[{"input_ids": s.input_ids, "labels": s.labels, "pixel_values": s.pixel_values,
                          "num_images": s.num_images} for s in b]
                         for b in self.bins],
                "stats": [self.stats.sequences, self.stats.tokens, self.stats.samples]}

    def load_state_dict(self, state: dict) -> None:
        self.bins = [[Encoded(**s) for s in b] for b in state["bins"]]
        self.stats = PackStats(*state["stats"])
