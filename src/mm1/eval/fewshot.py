"""Prompts: zero-/few-shot documents for base models, instruction turns for fine-tuned (chat) models.

`base`: pre-trained models have seen images only inside plain documents, so k support examples are one interleaved
document, each written with the task's `fewshot_format` and its answer, joined by `separator`, followed by the query
written the same way with an empty answer.  Trailing whitespace of the query is dropped, so the model writes the
space before its answer itself, as in the examples.  It is encoded as plain text (no chat template), without the
EOS that ends a training document.
`chat`: the support examples become earlier user/assistant turns, then the query's user turn (`instruction`, or
`choice_instruction` for a sample with options).

Mode rule (`resolve_mode`, `--mode auto`): few-shot -> base; zero-shot -> chat when the tokenizer has a chat
template, else base.  Every mm1 tokenizer has one, so evaluate a pre-trained checkpoint with `--mode base`.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Literal, Sequence

from mm1.config import ConfigError
from mm1.data.annotations import LETTERS, Sample
from mm1.data.image import sample_frames
from mm1.data.processor import Encoded, Processor
from mm1.data.tokenizer import IMAGE_TOKEN
from mm1.eval.tasks import TaskConfig

Mode = Literal["base", "chat"]


@dataclass
class Prompt:
    samples: list[Sample]  # support examples then the query: the order of the images in the prompt
    text: str = ""  # base mode
    messages: list[dict] = dataclasses.field(default_factory=list)  # chat mode


def resolve_mode(mode: str, shots: int, tokenizer) -> Mode:
    if mode != "auto":
        return mode
    return "chat" if shots == 0 and tokenizer.chat_template else "base"


def draw_support(query: Sample, pool: Sequence[Sample], k: int, seed: int) -> list[Sample]:
    """k distinct examples drawn with a seed per query; never the query, nor a sample showing any of its images (that
    one could give its answer away).  Rejection sampling, so a large pool costs nothing per query."""
    if k == 0:
        return []
    own = {*query.images, query.video} - {None}
    rng = random.Random(f"{seed}:{query.id}")  # the same support for a query whatever the sample order or limit
    chosen: list[Sample] = []
    seen: set[int] = set()
    while len(chosen) < k:
        if len(seen) == len(pool):
            raise ConfigError(f"the few-shot support pool has fewer than {k} usable examples for sample {query.id}")
        index = rng.randrange(len(pool))
        if index in seen:
            continue
        seen.add(index)
        candidate = pool[index]
        if candidate.id != query.id and not ({*candidate.images, candidate.video} & own):
            chosen.append(candidate)
    return chosen


def fill(template: str, sample: Sample, answer: str, frames: int) -> str:
    images = len(sample.images) + (frames if sample.video else 0)
    options = "\n".join(f"{letter}. {option}" for letter, option in zip(LETTERS, sample.options))
    numbered = "".join(f"Image {i + 1}: {IMAGE_TOKEN}\n" for i in range(images))
    return template.format(images=IMAGE_TOKEN * images, numbered_images=numbered, question=sample.question,
                           options=options, answer=answer)


def build_prompt(task: TaskConfig, query: Sample, support: Sequence[Sample], mode: Mode) -> Prompt:
    if mode == "chat":
        messages = []
        for example in support:
            messages += [{"role": "user", "content": fill(task.user_turn(example), example, "", task.frames)},
                         {"role": "assistant", "content": example.target}]
        messages.append({"role": "user", "content": fill(task.user_turn(query), query, "", task.frames)})
        return Prompt([*support, query], messages=messages)
    query_format = task.zero_shot_prompt if not support and task.zero_shot_prompt is not None else task.fewshot_format
    parts = [fill(task.fewshot_format, example, example.target, task.frames) for example in support]
    parts.append(fill(query_format, query, "", task.frames).rstrip())
    return Prompt([*support, query], text=task.separator.join(parts))


def encode(processor: Processor, prompt: Prompt, frames: int) -> Encoded:
    images = [image for sample in prompt.samples
              for image in (sample_frames(sample.video, frames) if sample.video else sample.images)]
    if prompt.messages:
        return processor.encode_chat(prompt.messages, images, add_generation_prompt=True)
    encoded = processor.encode_text(prompt.text, images)
    # encode_text ends a training document with EOS; before it, the model would be asked to start a new document.
    return dataclasses.replace(encoded, input_ids=encoded.input_ids[:-1], labels=encoded.labels[:-1])
