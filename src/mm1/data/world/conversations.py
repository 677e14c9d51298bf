"""SFT conversations (LLaVA JSON) over everything in the world, one category per record (spec 6.2).

Each category has a source that draws media and every question it can answer; a record opens with a question of
its own category and may go on with other questions about the same media (multi-turn).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from mm1.data.world import multi_image, text_rich, ui, video
from mm1.data.world.base import QA, Split
from mm1.data.world.documents import facts
from mm1.data.world.scenes import (arithmetic, box_question, dense_caption, grounding, questions,
                                  referring_expressions, render, sample_scene, short_captions)
from mm1.data.world.writers import Media, write_json

# Shares of the SFT records, close to MM1.5's final mixture (spec 6.2) but with room for video and UI, which
# MM1.5 trains in separate stages; the SFT reader re-weights categories anyway.
CATEGORIES = {"general": 0.15, "text-rich": 0.2, "refer-ground": 0.2, "math": 0.06, "code": 0.03,
              "multi-image": 0.1, "video": 0.08, "ui": 0.08, "text-only": 0.1}
Content = dict[str, object]  # {"image": Image} | {"images": [Image]} | {"video": [Image]} | {} for text only


def _scene(rng: random.Random, split: Split) -> tuple[Content, list[QA]]:
    scene = sample_scene(rng, split)
    captions = [QA(rng.choice(["Describe the image briefly.", "Write a short caption for this image."]),
                   short_captions(scene, rng)[0], "caption", "general"),
                QA(rng.choice(["Describe the image in detail.", "Give a detailed description of the image."]),
                   dense_caption(scene, rng), "detailed-caption", "general")]
    qa = captions + questions(scene, rng, split) + grounding(scene, rng) + [arithmetic(scene, rng)]
    return {"image": render(scene)}, qa


def _text_image(rng: random.Random, split: Split) -> tuple[Content, list[QA]]:
    doc = text_rich.sample(rng, split)
    return {"image": doc.image}, doc.qa


def _refer_ground(rng: random.Random, split: Split) -> tuple[Content, list[QA]]:
    """Mostly objects in scenes; sometimes lines of small text (reading a region, finding a line)."""
    if rng.random() < 0.7:
        return _scene(rng, split)
    doc = rng.choice([text_rich.receipt, text_rich.page])(rng, split)
    return {"image": doc.image}, doc.qa


def _math(rng: random.Random, split: Split) -> tuple[Content, list[QA]]:
    if rng.random() < 0.5:
        return _scene(rng, split)
    doc = text_rich.equation(rng)
    return {"image": doc.image}, doc.qa


def _screen(rng: random.Random, split: Split) -> tuple[Content, list[QA]]:
    image, qa = ui.screen(rng, split)
    return {"image": image}, qa


def _multi(rng: random.Random, split: Split) -> tuple[Content, list[QA]]:
    images, qa = multi_image.sample(rng, split)
    return {"images": images}, qa


def _video(rng: random.Random, split: Split) -> tuple[Content, list[QA]]:
    frames, qa = video.clip(rng, split)
    return {"video": frames}, qa


def _text_only(rng: random.Random, split: Split) -> tuple[Content, list[QA]]:
    return {}, [qa for _, qa in facts(rng, split, 4)]


SOURCES: dict[str, Callable[[random.Random, Split], tuple[Content, list[QA]]]] = {
    "general": _scene, "text-rich": _text_image, "refer-ground": _refer_ground, "math": _math, "code": _screen,
    "multi-image": _multi, "video": _video, "ui": _screen, "text-only": _text_only}


def prompt(media: Content) -> str:
    """The image markers that open the first human turn: one `<image>` per image, one `<video>` per video."""
    if "images" in media:
        return "".join(f"Image {i + 1}: <image>\n" for i in range(len(media["images"])))
    return "<video>\n" if "video" in media else "<image>\n" if "image" in media else ""


def ask(qa: QA, rng: random.Random) -> tuple[str, str]:
    """The question as asked and the expected reply; multiple-choice questions list lettered options half the time
    and are then answered with the letter (as MM1.5-Video answers)."""
    if not qa.options or rng.random() < 0.5:
        return qa.question, qa.answer
    letters = "ABCD"
    listed = "\n".join(f"{letters[i]}. {option}" for i, option in enumerate(qa.options))
    return (f"{qa.question}\n{listed}\nAnswer with the option's letter.",
            letters[qa.options.index(qa.answer)])


def record(rng: random.Random, split: Split, category: str) -> tuple[Content, list[dict]]:
    media, qa = SOURCES[category](rng, split)
    first = rng.choice([q for q in qa if q.category == category])
    rest = [q for q in qa if q is not first]
    # Several questions about the same media, as in LLaVA's conversations: each image encoded once supervises
    # several answers, which is most of what the tiny default learns from per second.
    turns = [first] + rng.sample(rest, min(len(rest), rng.randint(0, 5)))
    conversation = []
    for i, q in enumerate(turns):
        question, answer = ask(q, rng)
        conversation += [{"from": "human", "value": (prompt(media) if i == 0 else "") + question},
                         {"from": "gpt", "value": answer}]
    return media, conversation


# The tasks of questions about one scene (`questions` and `grounding`), for `single_question`'s `kinds`.
SCENE_KINDS = ("count", "colour", "shape", "exists", "position", "size", "background",
               "ground-box", "ground-point", "refer-box", "refer-point", "grounded-caption")


def single_question(rng: random.Random, split: Split,
                    kinds: tuple[str, ...] = SCENE_KINDS) -> tuple[Content, list[dict]]:
    """One question about a new scene, of a kind drawn uniformly from `kinds`.  The LLM learns to find the object
    a question names only after some 150,000 such questions, one per image; asked several to a conversation, as
    `record` does, it did not within 290,000 (README, "the lookup")."""
    unknown = sorted(set(kinds) - set(SCENE_KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown question kinds {unknown or 'none given'}; "
                         f"the world's scene questions: {SCENE_KINDS}")
    kind = rng.choice(kinds)
    while True:  # some kinds are asked only of some scenes ("What colour is the circle?" needs one circle)
        scene = sample_scene(rng, split)
        if kind == "ground-box":  # named in each way a RefCOCO-style record names it, not only "the red circle"
            obj = rng.choice(scene.objects)
            asked = [box_question(scene, obj, rng.choice(referring_expressions(scene, obj)))]
        else:
            asked = [qa for qa in questions(scene, rng, split) + grounding(scene, rng) if qa.task == kind]
        if asked:
            media = {"image": render(scene)}
            return media, [{"from": "human", "value": prompt(media) + asked[0].question},
                           {"from": "gpt", "value": asked[0].answer}]


def sign_reading(rng: random.Random, split: Split,
                 letters: tuple[int, int] | None = None) -> tuple[Content, list[dict]]:
    """One sign and "What does the sign say?": reading alone, one answer per image.  With `letters`, the sign shows
    a made-up string of that many letters, so a stage can go from single letters to words."""
    doc = text_rich.sign(rng, split, letters)
    media, qa = {"image": doc.image}, doc.qa[0]
    return media, [{"from": "human", "value": prompt(media) + qa.question}, {"from": "gpt", "value": qa.answer}]


def cite(media: Content, store: Media, stem: str, rng: random.Random) -> dict:
    """Write the media of one record and return its LLaVA keys (`image`, `images` or `video`)."""
    if "image" in media:
        return {"image": store.image(media["image"], f"images/{stem}.png")}
    if "images" in media:
        return {"images": [store.image(im, f"images/{stem}_{i}.png") for i, im in enumerate(media["images"])]}
    if "video" in media:  # both video forms readers accept: a GIF or a folder of frames
        return {"video": store.video(media["video"], f"videos/{stem}", gif=rng.random() < 0.5)}
    return {}


def plan(n: int, rng: random.Random) -> list[str]:
    """Categories of n records in their shares (each at least once), in random order."""
    cats = [c for c, share in CATEGORIES.items() for _ in range(max(1, round(n * share)))]
    rng.shuffle(cats)
    return cats


def write_sft(folder: Path, split: Split, seed: int, n: int) -> dict[str, int]:
    rng, store = split.rng(seed, "sft"), Media(folder)
    records = []
    for i, category in enumerate(plan(n, rng)):
        media, conversation = record(rng, split, category)
        records.append({"id": f"{split.name}-{i:06d}", "category": category,
                        **cite(media, store, f"{split.name}/{i:06d}", rng), "conversations": conversation})
    write_json(folder / f"{split.name}.json", records)
    return {c: sum(r["category"] == c for r in records) for c in CATEGORIES}
