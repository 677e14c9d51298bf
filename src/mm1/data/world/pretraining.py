"""The pre-training corpora (spec 2.1, 3): captioned images, OCR images, interleaved documents, text documents."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

from mm1.data.world import text_rich
from mm1.data.world.base import Split
from mm1.data.world.documents import interleaved, text_document
from mm1.data.world.scenes import dense_caption, render, sample_scene, short_captions
from mm1.data.world.writers import Media, Shards, png, write_jsonl, write_parquet

DENSE = 0.3  # share of synthetic dense captions: more than VeCap's 7% so that the style is well represented


def captioned_scene(rng: random.Random, split: Split, objects: int | None = None) -> tuple[Image.Image, str, dict]:
    """A new scene of `objects` objects (default 1-5), its caption and the caption's metadata."""
    scene = sample_scene(rng, split, n=objects)
    style = "dense" if rng.random() < DENSE else "short"
    text = dense_caption(scene, rng) if style == "dense" else short_captions(scene, rng)[0]
    return render(scene), text, {"style": style, **scene.meta()}


def write_captions(folder: Path, split: Split, seed: int, n: int, per_shard: int) -> int:
    rng = split.rng(seed, "captions")
    shards = Shards(folder, split.name, per_shard)
    for _ in range(n):
        shards.add(*captioned_scene(rng, split))
    shards.close()
    return n


def write_ocr(folder: Path, split: Split, seed: int, n: int, per_shard: int) -> int:
    rng = split.rng(seed, "ocr")
    shards = Shards(folder, split.name, per_shard)
    for _ in range(n):
        doc = text_rich.sample(rng, split)
        shards.add(doc.image, doc.transcription, {"style": "transcription", **doc.meta()})
    shards.close()
    return n


def write_interleaved(folder: Path, split: Split, seed: int, n: int) -> int:
    rng = split.rng(seed, "interleaved")
    docs = [interleaved(rng, split) for _ in range(n)]
    write_parquet(folder / f"{split.name}.parquet", [[x if isinstance(x, str) else png(x) for x in d] for d in docs])
    return n


def write_interleaved_paths(folder: Path, split: Split, seed: int, n: int) -> int:
    """The same rows as JSONL with images as paths relative to the JSONL file (readers must resolve both)."""
    rng, media = split.rng(seed, "interleaved-paths"), Media(folder)
    rows = []
    for i in range(n):
        doc = interleaved(rng, split)
        rows.append({"texts": [x if isinstance(x, str) else None for x in doc],
                     "images": [None if isinstance(x, str) else media.image(x, f"images/{i:06d}_{j}.png")
                                for j, x in enumerate(doc)]})
    write_jsonl(folder / f"{split.name}-paths.jsonl", rows)
    return n


def write_text(folder: Path, split: Split, seed: int, n: int) -> int:
    rng = split.rng(seed, "text")
    write_jsonl(folder / f"{split.name}.jsonl", [{"text": text_document(rng, split)} for _ in range(n)])
    return n
