"""Questions over several images (NLVR2 / Mantis style): compare counts, find the image with an object, spot the
change between a scene and its edited copy.  Images are named "Image 1", "Image 2"... in prompts and answers.
"""

from __future__ import annotations

import random

from PIL import Image

from mm1.data.world.base import QA, SHAPES, Split, multiple_choice
from mm1.data.world.scenes import edit, render, sample_scene


def _unique_max(values: list[int]) -> int | None:
    best = max(values)
    return values.index(best) if values.count(best) == 1 and best > 0 else None


def change(rng: random.Random, split: Split) -> tuple[list[Image.Image], list[QA]]:
    before = sample_scene(rng, split, n=rng.randint(2, 4))
    after, what = edit(before, rng, split)
    wrong = [edit(before, rng, split)[1] for _ in range(6)]  # other changes that could have happened
    qa = [multiple_choice(rng, "What changed between the two images?", what, "change", "multi-image", wrong)]
    return [render(before), render(after)], qa


def compare(rng: random.Random, split: Split) -> tuple[list[Image.Image], list[QA]]:
    scenes = [sample_scene(rng, split) for _ in range(rng.randint(2, 3))]
    labels = [f"Image {i + 1}" for i in range(len(scenes))]
    most = "more" if len(scenes) == 2 else "the most"
    total = sum(len(s.objects) for s in scenes)
    qa = [QA("How many shapes are there in all the images together?", str(total), "count-all", "multi-image",
             answer_type="number")]
    best = _unique_max([len(s.objects) for s in scenes])
    if best is not None:
        qa.append(QA(f"Which image has {most} shapes?", labels[best], "compare-count", "multi-image",
                     tuple(labels)))
    shape = rng.choice(SHAPES)
    best = _unique_max([sum(o.shape == shape for o in s.objects) for s in scenes])
    if best is not None:
        qa.append(QA(f"Which image has {most} {shape}s?", labels[best], "compare-shape", "multi-image",
                     tuple(labels)))
    obj = rng.choice(rng.choice(scenes).objects)
    holders = [label for label, s in zip(labels, scenes) if obj.name in {o.name for o in s.objects}]
    if len(holders) == 1:
        qa.append(QA(f"Which image contains the {obj.name}?", holders[0], "find-image", "multi-image", tuple(labels)))
    return [render(s) for s in scenes], qa


def sample(rng: random.Random, split: Split) -> tuple[list[Image.Image], list[QA]]:
    images, qa = (change if rng.random() < 0.4 else compare)(rng, split)
    rng.shuffle(qa)
    return images, qa
