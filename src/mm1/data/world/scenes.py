"""Scenes of coloured shapes: sampling, rendering, captions, questions, grounding and edits between two scenes.

Boxes are pixel edges `(x1, y1, x2, y2)` with x2, y2 exclusive, so `x2 - x1` is the width; every shape contains
its box centre and objects never overlap, so the pixel at a box centre is always the object's colour.  Drawing is
not anti-aliased: an object's pixels are exactly its colour.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

from mm1.data.coords import box_to_text, point_to_text
from mm1.data.world.base import COLOURS, NUMBER_WORDS, QA, SHAPES, Split, article

SIZES = {"small": (0.14, 0.2), "medium": (0.22, 0.3), "large": (0.32, 0.4)}  # extent / shorter image side
BACKGROUNDS = {"white": (250, 250, 250), "grey": (210, 210, 210), "beige": (238, 228, 200)}
CANVASES = ((128, 128), (160, 120), (120, 160), (192, 128), (128, 96))
SIDES = {"circle": 0, "square": 4, "triangle": 3, "diamond": 4, "hexagon": 6}
GAP = 3  # pixels kept free between objects, so boxes never touch
MAX_OBJECTS = 5  # a scene holds 1 to MAX_OBJECTS objects


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    size: str
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: str
    objects: tuple[Obj, ...]

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def where(self, obj: Obj) -> str:
        """Position in thirds of the image: "top left", "left", "centre", "bottom"..."""
        cx, cy = obj.centre
        row = ("top", "", "bottom")[min(2, int(3 * cy / self.height))]
        col = ("left", "", "right")[min(2, int(3 * cx / self.width))]
        return " ".join(p for p in (row, col) if p) or "centre"

    def at(self, obj: Obj) -> str:
        where = self.where(obj)
        return {"centre": "in the centre", "left": "on the left", "right": "on the right"}.get(where, f"at the {where}")

    def meta(self) -> dict:
        return {"width": self.width, "height": self.height, "background": self.background,
                "objects": [{"colour": o.colour, "shape": o.shape, "size": o.size, "box": list(o.box),
                             "position": self.where(o)} for o in self.objects]}


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x1, y1, x2, y2 = box[0], box[1], box[2] - 1, box[3] - 1  # PIL includes the last pixel
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if shape == "circle":
        draw.ellipse((x1, y1, x2, y2), fill=fill)
    elif shape == "square":
        draw.rectangle((x1, y1, x2, y2), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y1), (x2, y2), (x1, y2)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=fill)
    else:  # hexagon, flat left and right corners
        qx = (x2 - x1) / 4
        draw.polygon([(x1, cy), (x1 + qx, y1), (x2 - qx, y1), (x2, cy), (x2 - qx, y2), (x1 + qx, y2)], fill=fill)


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", scene.size, BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_shape(draw, obj.shape, obj.box, COLOURS[obj.colour])
    return image


def _free(box, others: tuple[Obj, ...]) -> bool:
    return all(box[2] + GAP <= o.box[0] or o.box[2] + GAP <= box[0] or box[3] + GAP <= o.box[1]
               or o.box[3] + GAP <= box[1] for o in others)


def place(rng: random.Random, scene: Scene, colour: str, shape: str, size: str, extent: int | None = None,
          tries: int = 30) -> Obj | None:
    """A new object at a random free spot of `scene`, or None when there is no room."""
    extent = extent or max(6, int(rng.uniform(*SIZES[size]) * min(scene.size)))
    for _ in range(tries):
        x, y = rng.randint(0, scene.width - extent), rng.randint(0, scene.height - extent)
        box = (x, y, x + extent, y + extent)
        if _free(box, scene.objects):
            return Obj(colour, shape, size, box)
    return None


def sample_scene(rng: random.Random, split: Split, n: int | None = None,
                 canvas: tuple[int, int] | None = None) -> Scene:
    """A scene of n (default 1 to MAX_OBJECTS) objects with distinct (colour, shape) pairs, so "the red circle" is
    unique."""
    width, height = canvas or rng.choice(CANVASES)
    scene = Scene(width, height, rng.choice(list(BACKGROUNDS)), ())
    for colour, shape in rng.sample(split.pairs, n or rng.randint(1, MAX_OBJECTS)):
        obj = place(rng, scene, colour, shape, rng.choice(list(SIZES)))
        if obj is not None:  # the first always fits (the canvas is empty); later ones may not
            scene = replace(scene, objects=scene.objects + (obj,))
    return scene


# ---- language --------------------------------------------------------------------------------------------------
def count_word(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def listing(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def relation(a: Obj, b: Obj) -> str:
    """Where a is relative to b, along the axis where they are further apart."""
    dx, dy = a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def short_captions(scene: Scene, rng: random.Random) -> list[str]:
    """Every short (alt-text-like) caption template applied to the scene, in a random order."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    things = listing([article(o.name) for o in objs])
    sized = listing([f"a {o.size} {o.name}" for o in objs])
    n = len(objs)
    captions = [f"{things}.", f"a picture of {things}.", f"{sized} on a {scene.background} background.",
                f"{count_word(n)} {plural('shape', n)}: {things}.", f"a {scene.background} image with {sized}."]
    rng.shuffle(captions)
    return captions


def dense_caption(scene: Scene, rng: random.Random) -> str:
    """A paragraph in the style of synthetic (VeCap-like) captions: every object, its size, place and a relation."""
    n = len(scene.objects)
    parts = [f"The image shows {count_word(n)} {plural('shape', n)} on a plain {scene.background} background."]
    for obj in scene.objects:
        parts.append(rng.choice([f"There is a {obj.size} {obj.name} {scene.at(obj)}.",
                                 f"{scene.at(obj).capitalize()} is a {obj.size} {obj.name}.",
                                 f"{article(obj.name, capital=True)} of {obj.size} size sits {scene.at(obj)}."]))
    if n > 1:
        a, b = rng.sample(scene.objects, 2)
        parts.append(f"The {a.name} is {relation(a, b)} the {b.name}.")
    counts = {s: sum(o.shape == s for o in scene.objects) for s in SHAPES}
    repeated = [f"{count_word(c)} are {s}s" for s, c in counts.items() if c > 1]
    if repeated:
        parts.append(f"Of the shapes, {listing(repeated)}.")
    return " ".join(parts)


def referring_expressions(scene: Scene, obj: Obj) -> list[str]:
    """The ways a RefCOCO-style record names one object: by name, by name and place, by size and name."""
    return [f"the {obj.name}", f"{obj.name} {scene.at(obj)}", f"the {obj.size} {obj.name}"]


def describe(obj: Obj) -> str:
    return f"a {obj.size} {obj.name}"


def questions(scene: Scene, rng: random.Random, split: Split) -> list[QA]:
    """VQA-style questions with one unambiguous answer: attributes, counts, yes/no, position, size."""
    objs = scene.objects
    shapes = [o.shape for o in objs]
    colours = [o.colour for o in objs]
    qa = [QA("How many shapes are there?", str(len(objs)), "count", "general", answer_type="number")]
    shape = rng.choice(SHAPES)
    qa.append(QA(f"How many {shape}s are there?", str(shapes.count(shape)), "count", "general",
                 answer_type="number"))
    obj = rng.choice(objs)
    if shapes.count(obj.shape) == 1:
        qa.append(QA(f"What colour is the {obj.shape}?", obj.colour, "colour", "general"))
    if colours.count(obj.colour) == 1:
        qa.append(QA(f"What shape is the {obj.colour} object?", obj.shape, "shape", "general"))
    asked = rng.choice(split.pairs)  # drawn from the split, so a "no" never names a held-out pair in training
    present = asked in {(o.colour, o.shape) for o in objs}
    qa.append(QA(f"Is there {article(' '.join(asked))}?", "yes" if present else "no", "exists", "general",
                 answer_type="yes/no"))
    qa.append(QA(f"Where is the {obj.name}?", scene.where(obj), "position", "general"))
    qa.append(QA(f"What size is the {obj.name}?", obj.size, "size", "general"))
    qa.append(QA("What colour is the background?", scene.background, "background", "general"))
    rng.shuffle(qa)
    return qa


def box_question(scene: Scene, obj: Obj, expression: str) -> QA:
    """Grounding: the box of the object `expression` names (one of its `referring_expressions`)."""
    return QA(f"Where is {expression}? Answer with a bounding box.", box_to_text(obj.box, scene.size), "ground-box",
              "refer-ground")


def grounding(scene: Scene, rng: random.Random) -> list[QA]:
    """Referring (region in the question) and grounding (region in the answer), coordinates in the coords format."""
    obj = rng.choice(scene.objects)
    box, point = box_to_text(obj.box, scene.size), point_to_text(obj.centre, scene.size)
    qa = [box_question(scene, obj, f"the {obj.name}"),
          QA(f"Point to the {obj.name}.", point, "ground-point", "refer-ground"),
          QA(f"What is the object in the region {box}?", describe(obj), "refer-box", "refer-ground"),
          QA(f"What colour is the shape at {point}?", obj.colour, "refer-point", "refer-ground"),
          QA("Describe the image, giving a bounding box for each shape.",
             listing([f"{article(o.name)} {box_to_text(o.box, scene.size)}" for o in scene.objects]) + ".",
             "grounded-caption", "refer-ground")]
    rng.shuffle(qa)
    return qa


def arithmetic(scene: Scene, rng: random.Random) -> QA:
    """A counting word problem over the scene (the "math" SFT category)."""
    shape = rng.choice(sorted({o.shape for o in scene.objects}))
    have, more = sum(o.shape == shape for o in scene.objects), rng.randint(1, 4)
    return QA(f"If {count_word(more)} more {plural(shape, more)} were added, how many {shape}s would there be?",
              str(have + more), "count-add", "math", answer_type="number")


# ---- two scenes: what changed ----------------------------------------------------------------------------------
def edit(scene: Scene, rng: random.Random, split: Split) -> tuple[Scene, str]:
    """The scene after one change (an object removed, added or moved), and the change in words."""
    kinds = ["move"] + ["remove"] * (len(scene.objects) > 1) + ["add"] * (len(scene.objects) < len(split.pairs))
    kind = rng.choice(kinds)
    if kind == "add":
        used = {(o.colour, o.shape) for o in scene.objects}
        colour, shape = rng.choice([p for p in split.pairs if p not in used])
        obj = place(rng, scene, colour, shape, "small")
        if obj is not None:
            return replace(scene, objects=scene.objects + (obj,)), f"{article(obj.name)} was added"
        kind = "move"  # no room left: a move always succeeds below or falls through to a removal
    index = rng.randrange(len(scene.objects))
    obj = scene.objects[index]
    rest = scene.objects[:index] + scene.objects[index + 1:]
    if kind == "move":
        moved = place(rng, replace(scene, objects=rest), obj.colour, obj.shape, obj.size, obj.box[2] - obj.box[0])
        if moved is not None and scene.where(moved) != scene.where(obj):
            new = replace(scene, objects=rest + (moved,))
            return new, f"the {obj.name} moved from the {scene.where(obj)} to the {scene.where(moved)}"
        if not rest:  # a lone object that found no new region: add instead of removing the only object
            return edit(scene, rng, split)
    return replace(scene, objects=rest), f"the {obj.name} was removed"
