"""A small synthetic world of coloured shapes: captions, questions and text, with held-out combinations.

Held-out (colour, shape) pairs never appear in training images, so evaluation measures generalisation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40),
           "purple": (140, 60, 190), "orange": (245, 140, 30)}
SHAPES = ("circle", "square", "triangle")
HELD_OUT = {("red", "triangle"), ("blue", "circle"), ("yellow", "square"), ("purple", "circle")}


@dataclass
class Scene:
    image: Image.Image
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # pixels: x1, y1, x2, y2


def draw_scene(rng: random.Random, colour: str, shape: str, size: int = 64) -> Scene:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    extent = rng.randint(size // 4, size // 2)
    x, y = rng.randint(0, size - extent), rng.randint(0, size - extent)
    box = (x, y, x + extent, y + extent)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x + extent // 2, y), (x, y + extent), (x + extent, y + extent)], fill=fill)
    return Scene(image, colour, shape, box)


def sample_scene(rng: random.Random, held_out: bool, size: int = 64) -> Scene:
    pairs = [(c, s) for c in COLOURS for s in SHAPES if ((c, s) in HELD_OUT) == held_out]
    return draw_scene(rng, *rng.choice(pairs), size=size)


def caption(scene: Scene, rng: random.Random) -> str:
    return rng.choice(["a {c} {s}.", "a picture of a {c} {s}.", "there is a {c} {s}."]).format(
        c=scene.colour, s=scene.shape)


QUESTIONS = {"colour": "What colour is the shape?", "shape": "What shape is it?"}


def question(scene: Scene, kind: str) -> tuple[str, str]:
    return QUESTIONS[kind], scene.colour if kind == "colour" else scene.shape


def text_document(rng: random.Random) -> str:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return rng.choice([f"{a} plus {b} is {a + b}.", f"a {rng.choice(list(COLOURS))} {rng.choice(SHAPES)} is a shape."])
