"""The synthetic world: the project's embedded default data, every MM1/MM1.5 data type in its real format.

`generate(out_dir, seed, size)` (CLI: `mm1 data synth --out DIR --seed S --size small|default`) writes coloured
shapes scenes, text-rich images, interleaved and text documents, mobile-UI screens, short videos, SFT
conversations and evaluation sets.  The same seed gives byte-identical files.  The `heldout` split and `eval/`
use only held-out (colour, shape) pairs and held-out OCR words (listed in `world.json`), never seen in training.

FORMATS (paths relative to DIR; KEY = 9-digit zero-padded running index within a split)

- `world.json`: manifest: seed, size, counts (as returned by `generate`), SFT counts per category, the train and
  held-out (colour, shape) pairs and OCR words, how each part's random stream is seeded.
- `captions/{train,heldout}-NNNNNN.tar`: WebDataset shards (img2dataset layout), per sample `KEY.png`,
  `KEY.txt` (the caption) and `KEY.json` = {"key", "style": "short"|"dense", "width", "height", "background",
  "objects": [{"colour", "shape", "size", "box": [x1, y1, x2, y2] pixels, "position"}]}.
- `ocr/{train,heldout}-NNNNNN.tar`: the same layout for text-rich images; `KEY.txt` is the transcription (lines
  joined by "\\n"), `KEY.json` = {"key", "style": "transcription", "kind": "sign"|"receipt"|"page", "width",
  "height", "lines": [{"text", "box": [x1, y1, x2, y2] pixels}]}.
- `interleaved/{train,heldout}.parquet`: OBELICS-style rows, columns `texts: list<string>` and
  `images: list<binary>` (PNG bytes) of equal length, exactly one of the two non-null at each position.
  `interleaved/train-paths.jsonl`: {"texts": [...], "images": [...]} with images as paths relative to the JSONL
  file (under `interleaved/images/`).
- `text/{train,heldout}.jsonl`: {"text": ...} per line.
- `sft/{train,heldout}.json`: a LLaVA JSON list of {"id", "category", media, "conversations": [{"from": "human",
  "value"}, {"from": "gpt", "value"}, ...]}; media is "image": path, "images": [paths], "video": path or absent
  (text only); paths are relative to `sft/` (images under `sft/images/`, videos under `sft/videos/`).  The first
  human turn starts with one `<image>\\n` marker per image (several images: "Image 1: <image>\\nImage 2: ...");
  a video record has one `<video>\\n` marker instead, which the reader expands to one `<image>` per sampled frame.
  A video is an animated GIF (`videos/.../NNNNNN.gif`) or a folder of `frame_NNN.png` files.  Categories:
  general, text-rich, refer-ground, math, code, multi-image, video, ui, text-only.  Coordinates in questions
  and answers use `mm1.data.coords` (boxes `[x1, y1, x2, y2]`, points `[x, y]`, integers 0-999 of the original
  image); multiple-choice questions sometimes list lettered options and are answered with the letter.
- `eval/` (held-out) and `eval/support/` (few-shot examples from the training distribution), paths relative to
  the folder holding the file, images under `images/`, videos under `videos/`:
  `coco_captions.json` {"images": [{"id", "file_name", "width", "height"}], "annotations": [{"id", "image_id",
  "caption"}]} with 5 references per image; `vqa_questions.json` {"images": (as in coco_captions.json),
  "questions": [{"question_id", "image_id", "question"}]} and `vqa_annotations.json` {"annotations":
  [{"question_id", "image_id", "question_type", "answer_type", "multiple_choice_answer", "answers": 10 x
  {"answer", "answer_confidence", "answer_id"}}]} over the same images; `refcoco.json` [{"ref_id", "image",
  "width", "height", "bbox": [x, y, w, h] pixels, "category", "sentences": [str], "split"}];
  `ocr.jsonl`, `multi_image.jsonl`, `video.jsonl`, `ui.jsonl`: {"id", "image" | "images" | "video",
  "question", "answer", "task", "options"?: [...]} (when there are options the answer is one of them).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from mm1.data.world.base import (COLOURS, HELD_OUT_PAIRS, HELD_OUT_WORDS, HELDOUT, SHAPES, SUPPORT, TRAIN,
                                 TRAIN_PAIRS, TRAIN_WORDS)
from mm1.data.world.conversations import write_sft
from mm1.data.world.evaluation import write_eval
from mm1.data.world.pretraining import (write_captions, write_interleaved, write_interleaved_paths, write_ocr,
                                        write_text)
from mm1.data.world.writers import write_json

__all__ = ["SIZES", "Size", "VERSION", "ensure", "generate"]

VERSION = 3  # of the generator: raised whenever the same seed and size would write different data


@dataclass(frozen=True)
class Size:
    """Training-split counts; the held-out split gets `heldout` times as many of each."""

    captions: int
    ocr: int
    interleaved: int
    text: int
    sft: int
    paths: int  # interleaved documents in the JSONL-with-paths variant
    eval: int  # items per evaluation task (held out)
    support: int  # items per task in the few-shot support set
    shard: int  # samples per WebDataset shard
    heldout: float = 0.1


PARTS = ("captions", "ocr", "interleaved", "text", "sft")  # the parts with a train and a held-out split

SIZES = {"small": Size(captions=48, ocr=24, interleaved=8, text=40, sft=120, paths=3, eval=8, support=3, shard=16,
                       heldout=0.25),
         "default": Size(captions=10000, ocr=2400, interleaved=2000, text=5000, sft=12000, paths=64, eval=200,
                         support=16, shard=1000)}


def generate(out_dir: str | Path, seed: int = 0, size: str = "default", shard_size: int | None = None) -> dict:
    """Write the world under `out_dir` (which must be empty or new) and return the number of items of each part."""
    if size not in SIZES:
        raise ValueError(f"unknown world size {size!r}; choose one of {', '.join(SIZES)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: the world is written to a new or empty folder")
    plan = SIZES[size]
    per_shard = shard_size or plan.shard
    counts, categories = {}, {}
    for split, scale in ((TRAIN, 1.0), (HELDOUT, plan.heldout)):
        n = {part: max(1, round(getattr(plan, part) * scale)) for part in PARTS}
        counts[f"captions/{split.name}"] = write_captions(out / "captions", split, seed, n["captions"], per_shard)
        counts[f"ocr/{split.name}"] = write_ocr(out / "ocr", split, seed, n["ocr"], per_shard)
        counts[f"interleaved/{split.name}"] = write_interleaved(out / "interleaved", split, seed, n["interleaved"])
        counts[f"text/{split.name}"] = write_text(out / "text", split, seed, n["text"])
        categories[split.name] = write_sft(out / "sft", split, seed, n["sft"])
        counts[f"sft/{split.name}"] = sum(categories[split.name].values())
    counts["interleaved/train-paths"] = write_interleaved_paths(out / "interleaved", TRAIN, seed, plan.paths)
    for folder, split, items in (("eval", HELDOUT, plan.eval), ("eval/support", SUPPORT, plan.support)):
        counts |= {f"{folder}/{task}": k for task, k in write_eval(out / folder, split, seed, items).items()}
    write_json(out / "world.json", {
        "seed": seed, "size": size, "version": VERSION, "size_plan": asdict(plan), "shard_size": per_shard,
        "counts": counts,
        "sft_categories": categories, "colours": list(COLOURS), "shapes": list(SHAPES),
        "train": {"colour_shape": [list(p) for p in TRAIN_PAIRS], "words": list(TRAIN_WORDS)},
        "held_out": {"colour_shape": [list(p) for p in HELD_OUT_PAIRS], "words": list(HELD_OUT_WORDS)},
        "seed_streams": "each part draws from random.Random('mm1-world:{seed}:{split}:{part}'), split one of "
                        "train, heldout (held-out data and eval/), support (eval/support/)",
    }, indent=1)
    return counts


def ensure(out_dir: str | Path, seed: int = 0, size: str = "default", log: Callable[[str], None] = print) -> Path:
    """The world in `out_dir`, written when missing.  One already there must match the seed, size and generator
    version asked for: training on another silently would give other numbers than the ones reported."""
    out = Path(out_dir)
    manifest = out / "world.json"
    if not manifest.is_file():
        log(f"writing the synthetic world ({size}, seed {seed}) to {out} ...")
        log(f"  {sum(generate(out, seed, size).values())} items")
        return out
    found = json.loads(manifest.read_text())
    wanted = {"seed": seed, "size": size, "version": VERSION}
    differ = [f"{key} {found.get(key)!r} (wanted {value!r})" for key, value in wanted.items()
              if found.get(key) != value]
    if differ:
        raise ValueError(f"{out} holds another world: {', '.join(differ)}; remove the folder and it is written again")
    return out
