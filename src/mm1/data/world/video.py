"""Short videos: one shape moving in a direction, or shapes appearing one after another.

Each question has multiple-choice options (answer among them), as in NExT-QA / VideoMME (spec 7.1); the answer
needs more than one frame: a direction or an order of events is invisible in any single frame.
"""

from __future__ import annotations

import random
from dataclasses import replace

from PIL import Image, ImageDraw

from mm1.data.world.base import QA, Split, multiple_choice
from mm1.data.world.scenes import BACKGROUNDS, Obj, Scene, place, render, sample_scene

FRAMES = 8
CANVAS = (112, 84)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
BAR = 4  # px of progress bar under each frame


def frame(scene: Scene, t: int) -> Image.Image:
    """The scene with a progress bar below it, as video players show; it makes consecutive frames differ, so a
    GIF keeps all of them (Pillow merges identical frames) and sampling frames by index stays uniform in time."""
    image = Image.new("RGB", (scene.width, scene.height + BAR), (60, 60, 60))
    image.paste(render(scene))
    done = round((t + 1) * scene.width / FRAMES)
    ImageDraw.Draw(image).rectangle((0, scene.height + 1, done - 1, scene.height + BAR - 1), fill=(250, 250, 250))
    return image


def _choice(rng: random.Random, question: str, answer: str, task: str, wrong: list[str]) -> QA:
    return multiple_choice(rng, question, answer, task, "video", wrong)


def _others(rng: random.Random, split: Split, scene: Scene) -> list[str]:
    """Names of shapes not in the video, as distractors (from the split, so none leaks across)."""
    present = {(o.colour, o.shape) for o in scene.objects}
    return [f"the {c} {s}" for c, s in rng.sample([p for p in split.pairs if p not in present], 3)]


def moving(rng: random.Random, split: Split) -> tuple[list[Image.Image], list[QA]]:
    width, height = CANVAS
    direction = rng.choice(list(DIRECTIONS))
    dx, dy = DIRECTIONS[direction]
    extent = int(0.25 * height)
    travel = int(0.45 * (width if dx else height))
    # Start so that the whole path stays inside the frame.
    x0 = rng.randint(travel if dx < 0 else 0, width - extent - (travel if dx > 0 else 0))
    y0 = rng.randint(travel if dy < 0 else 0, height - extent - (travel if dy > 0 else 0))
    colour, shape = rng.choice(split.pairs)
    start = (x0, y0, x0 + extent, y0 + extent)
    end = (x0 + dx * travel, y0 + dy * travel, x0 + dx * travel + extent, y0 + dy * travel + extent)
    path = Obj(colour, shape, "medium", (min(start[0], end[0]), min(start[1], end[1]), max(start[2], end[2]),
                                          max(start[3], end[3])))
    base = Scene(width, height, rng.choice(list(BACKGROUNDS)), ())
    others = ()
    if rng.random() < 0.6:  # a still distractor off the path: "which shape moves?" then needs motion
        still = [p for p in split.pairs if p != (colour, shape)]
        obj = place(rng, replace(base, objects=(path,)), *rng.choice(still), "small")
        others = (obj,) if obj else ()
    frames = []
    for t in range(FRAMES):
        step = round(travel * t / (FRAMES - 1))
        box = (x0 + dx * step, y0 + dy * step, x0 + dx * step + extent, y0 + dy * step + extent)
        frames.append(frame(replace(base, objects=others + (Obj(colour, shape, "medium", box),)), t))
    scene = replace(base, objects=others + (path,))
    name = f"the {colour} {shape}"
    qa = [_choice(rng, f"In which direction does {name} move?", direction, "direction", list(DIRECTIONS)),
          _choice(rng, "Which shape moves?", name, "which-moves",
                  [f"the {o.name}" for o in others] + _others(rng, split, scene))]
    return frames, qa


def appearing(rng: random.Random, split: Split) -> tuple[list[Image.Image], list[QA]]:
    scene = sample_scene(rng, split, n=rng.randint(2, 3), canvas=CANVAS)
    objs = scene.objects
    times = sorted(rng.sample(range(FRAMES - 1), len(objs)))  # the last frame shows every shape
    frames = [frame(replace(scene, objects=tuple(o for o, at in zip(objs, times) if at <= t)), t)
              for t in range(FRAMES)]
    names = [f"the {o.name}" for o in objs]
    wrong = names + _others(rng, split, scene)
    qa = [_choice(rng, "Which shape appears first?", names[0], "order-first", wrong),
          _choice(rng, "How many shapes are there at the end of the video?", str(len(objs)), "count",
                  [str(n) for n in range(1, 6)])]
    if len(objs) > 1:  # the scene may have had no room for a second shape
        qa += [_choice(rng, "Which shape appears last?", names[-1], "order-last", wrong),
               _choice(rng, f"Which shape appears right after {names[0]}?", names[1], "order-next", wrong)]
    return frames, qa


def clip(rng: random.Random, split: Split) -> tuple[list[Image.Image], list[QA]]:
    frames, qa = rng.choice([moving, appearing])(rng, split)
    rng.shuffle(qa)
    return frames, qa
