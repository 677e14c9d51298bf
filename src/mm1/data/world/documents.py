"""Documents: interleaved image-text documents (OBELICS-like) and text-only documents built from world facts.

A fact is a statement and the question it answers: text documents state facts, text-only SFT asks them, so the
two teach the same knowledge in the two forms MM1 mixes (pre-training text, instruction data).
"""

from __future__ import annotations

import random
from dataclasses import replace

from PIL import Image

from mm1.data.world import text_rich
from mm1.data.world.base import QA, SHAPES, Split, article
from mm1.data.world.scenes import (SIDES, Scene, count_word, dense_caption, edit, listing, plural, questions,
                                   render, sample_scene)

MIXES = {("red", "yellow"): "orange", ("blue", "yellow"): "green", ("red", "blue"): "purple",
         ("red", "white"): "pink"}


# ---- facts -----------------------------------------------------------------------------------------------------
def _sides(rng: random.Random, split: Split) -> tuple[str, QA]:
    shape = rng.choice(SHAPES)
    sides = SIDES[shape]
    statement = "A circle is round and has no sides." if sides == 0 else f"A {shape} has {count_word(sides)} sides."
    return statement, QA(f"How many sides does a {shape} have?", str(sides), "fact-sides", "text-only",
                         answer_type="number")


def _mix(rng: random.Random, split: Split) -> tuple[str, QA]:
    (a, b), c = rng.choice(list(MIXES.items()))
    return (f"Mixing {a} and {b} paint gives {c}.",
            QA(f"What colour do you get by mixing {a} and {b} paint?", c, "fact-mix", "text-only"))


def _arithmetic(rng: random.Random, split: Split) -> tuple[str, QA]:
    a, b = sorted((rng.randint(0, 20), rng.randint(0, 20)), reverse=True)
    op, value = rng.choice([("plus", a + b), ("minus", a - b), ("times", a * b)])
    return f"{a} {op} {b} is {value}.", QA(f"What is {a} {op} {b}?", str(value), "arithmetic", "text-only",
                                           answer_type="number")


def _counting(rng: random.Random, split: Split) -> tuple[str, QA]:
    items = [rng.choice(SHAPES) for _ in range(rng.randint(3, 7))]
    shape = rng.choice(items)
    n, listed = items.count(shape), ", ".join(items)
    return (f"In the list {listed} there {'is' if n == 1 else 'are'} {count_word(n)} {plural(shape, n)}.",
            QA(f"How many times does the word {shape} appear in this list: {listed}?", str(n), "count-words",
               "text-only", answer_type="number"))


def _pair(rng: random.Random, split: Split) -> tuple[str, QA]:
    colour, shape = rng.choice(split.pairs)
    return (f"{article(f'{colour} {shape}', capital=True)} is a {shape} painted {colour}.",
            QA(f"What colour is {article(f'{colour} {shape}')}?", colour, "fact-colour", "text-only"))


def facts(rng: random.Random, split: Split, n: int) -> list[tuple[str, QA]]:
    """Up to n facts, none repeated (a document or a conversation saying the same thing twice is noise)."""
    drawn = {}
    for _ in range(n):
        statement, qa = rng.choice([_sides, _mix, _arithmetic, _counting, _pair])(rng, split)
        drawn.setdefault(statement, qa)
    return list(drawn.items())


def text_document(rng: random.Random, split: Split) -> str:
    """A few facts, sometimes with a scene told in words only (language about the world, no image)."""
    sentences = [s for s, _ in facts(rng, split, rng.randint(3, 6))]
    if rng.random() < 0.3:
        sentences.append("Imagine a picture. " + dense_caption(sample_scene(rng, split), rng))
    return " ".join(sentences)


# ---- interleaved documents --------------------------------------------------------------------------------------
Doc = list[str | Image.Image]  # in reading order


def _things(scene: Scene) -> str:
    return listing([article(o.name) for o in scene.objects])


def story(rng: random.Random, split: Split) -> Doc:
    """A scene changing over time: each change is told in the text between the before and after images."""
    scene = sample_scene(rng, split, n=rng.randint(1, 3))
    opening = rng.choice(["Here is a small scene.", "This is how the picture starts.", "Look at this picture."])
    doc = [f"{opening} It shows {_things(scene)}.", render(scene)]
    for _ in range(rng.randint(1, 3)):
        scene, what = edit(scene, rng, split)
        doc += [f"Then {what}.", render(scene)]
    n = len(scene.objects)
    return doc + [f"In the end there {'is' if n == 1 else 'are'} {count_word(n)} {plural('shape', n)}."]


def comparison(rng: random.Random, split: Split) -> Doc:
    a, b = sample_scene(rng, split), sample_scene(rng, split)
    na, nb = len(a.objects), len(b.objects)
    verdict = ("Both pictures have the same number of shapes." if na == nb else
               f"The {'first' if na > nb else 'second'} picture has more shapes.")
    return ["Picture one:", render(a), f"It shows {_things(a)}.", "Picture two:", render(b),
            f"It shows {_things(b)}.", verdict]


def steps(rng: random.Random, split: Split) -> Doc:
    """A drawing built one object at a time, each step followed by the picture so far."""
    scene = sample_scene(rng, split, n=rng.randint(2, 4))
    doc = ["How to draw this picture, step by step."]
    for k, obj in enumerate(scene.objects, 1):
        doc += [f"Step {k}: draw a {obj.size} {obj.name} {scene.at(obj)}.",
                render(replace(scene, objects=scene.objects[:k]))]
    n = len(scene.objects)
    return doc + [f"Done: the picture has {count_word(n)} {plural('shape', n)}."]


# What a writer says about a text-rich image it shows: (intro, the question whose answer the text repeats, phrase).
READING = {"sign": ("We saw this sign on our walk.", "ocr-sign", 'It says "{}".'),
           "receipt": ("Here is the receipt from today's shopping.", "receipt-total", "The total was {}."),
           "page": ("This is the page we found.", "doc-title", 'Its title is "{}".')}


def reading(rng: random.Random, split: Split) -> Doc:
    doc = text_rich.sample(rng, split)
    intro, task, phrase = READING[doc.kind]
    return [intro, doc.image, phrase.format(next(q.answer for q in doc.qa if q.task == task))]


# How a worksheet writes its answers: one style per document, as web pages differ, and mostly in sentences.  A
# benchmark wants the bare answer, which a 0-shot prompt ("Question: ... Answer:") does not ask for and a few-shot
# prompt's examples show: the format-following that MM1's base models get from in-context examples.
QUIZ_ANSWER_STYLES = ("{}", "The answer is {}.", "I think it is {}.")
QUIZ_TITLES = ("A picture quiz.", "Worksheet: look at each picture and answer.", "Practice questions.")
QUIZ_LENGTH = (2, 9)  # pictures per worksheet: an 8-shot prompt (9 images) is as long as the longest


def quiz(rng: random.Random, split: Split) -> Doc:
    """A picture worksheet: images each followed by a question and its answer.  Web documents like it are where a
    base model meets the question-answer pattern that few-shot prompts rely on."""
    doc: Doc = []
    if rng.random() < 0.5:  # half start with a title, half with the first picture, as a 0-shot prompt does
        doc.append(rng.choice(QUIZ_TITLES))
    style = rng.choice(QUIZ_ANSWER_STYLES)
    for _ in range(rng.randint(*QUIZ_LENGTH)):
        scene = sample_scene(rng, split)
        qa = rng.choice(questions(scene, rng, split))
        doc += [render(scene), f"Question: {qa.question} Answer: {style.format(qa.answer)}"]
    return doc


def interleaved(rng: random.Random, split: Split) -> Doc:
    return rng.choice([story, comparison, steps, reading, quiz])(rng, split)
