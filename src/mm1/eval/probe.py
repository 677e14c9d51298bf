"""Linear probes: which scene attributes a saved model's image tokens carry, before the LLM reads them.

When a task fails ("What shape is the red object?" answered at chance), the fault is either on the vision side
(the encoder never wrote the attribute into its features) or on the LLM side (it is there but not read).  A ridge
classifier on the features tells the two apart.  It is fitted on one-object scenes of the world's training
colour-shape pairs and scored on scenes of the held-out pairs, as the VQA benchmark is: features that tie shape to
colour (a shortcut the training pairs allow) score at or below chance there.

Grounding needs more than an attribute somewhere in the view: "the red circle" has to be found in the token that
holds it.  The token rows (TOKEN_ATTRIBUTES) ask that of each encoder patch and each image token on their own, in
scenes of one to five objects: the colour of the object centred in the token's cell, and, as the control, the colour
of another object of the scene.  Local features score high on the first and low on the second; features that spread
the scene over every token score alike on both.

Reading a sign needs its letters told apart first: the `letter` row fits single capitals on signs, in the world's
sign font at its two sizes, and scores them at a size between the two (and, as `_seen`, on new signs at the fitted
sizes).
"""

from __future__ import annotations

import math
import random
import string
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw

from mm1.config import ImageConfig
from mm1.data.image import ViewMaker
from mm1.data.world.base import COLOURS, HELDOUT, SHAPES, TRAIN, Split
from mm1.data.world.scenes import BACKGROUNDS, SIZES, Obj, Scene, render, sample_scene
from mm1.data.world.text_rich import font
from mm1.eval.harness import inference
from mm1.model.mllm import MM1Model


def _third(value: float, extent: int) -> int:
    return min(2, int(3 * value / extent))


@dataclass(frozen=True)
class Attribute:
    classes: tuple[str, ...]
    label: Callable[[Scene], str]

    def labels(self, group: list[Scene]) -> np.ndarray:
        return np.array([self.classes.index(self.label(s)) for s in group])

    def rows(self, grids: Reduced, group: list[Scene], kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of the group's views."""
        return grids.pooled[kind], self.labels(group)


ATTRIBUTES = {
    "shape": Attribute(SHAPES, lambda s: s.objects[0].shape),
    "colour": Attribute(tuple(COLOURS), lambda s: s.objects[0].colour),
    "size": Attribute(tuple(SIZES), lambda s: s.objects[0].size),
    "column": Attribute(("left", "centre", "right"), lambda s: ("left", "centre", "right")[
        _third(s.objects[0].centre[0], s.width)]),
    "row": Attribute(("top", "middle", "bottom"), lambda s: ("top", "middle", "bottom")[
        _third(s.objects[0].centre[1], s.height)]),
    "background": Attribute(tuple(BACKGROUNDS), lambda s: s.background),
}


@dataclass(frozen=True)
class TokenAttribute:
    """A label of one patch or image token, from the object centred in its cell (None: the token is not scored)."""
    classes: tuple[str, ...]
    label: Callable[[Scene, Obj], str | None]

    def rows(self, grids: Reduced, group: list[Scene], kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of every scored patch or token of the group's views."""
        rows, labels = [], []
        for scene, cells in zip(group, grids.cells[kind]):
            for obj, feature in cells.values():
                label = self.label(scene, obj)
                if label is not None:
                    rows.append(feature)
                    labels.append(self.classes.index(label))
        if not rows:
            raise ValueError(f"no patch or token of {len(group)} scenes holds exactly one object's centre "
                             f"(a grid of {grids.sides[kind]}x{grids.sides[kind]} tokens per view)")
        return np.array(rows), np.array(labels)


TOKEN_ATTRIBUTES = {
    "colour at its token": TokenAttribute(tuple(COLOURS), lambda scene, obj: obj.colour),
    "colour of another object": TokenAttribute(tuple(COLOURS), lambda scene, obj: next(
        (o.colour for o in scene.objects if o.colour != obj.colour), None)),
}
# The grids are the view's encoder patches and its image tokens (row-major).  Whole-scene attributes read the
# patches' mean ("encoder": what the view holds anywhere) and the tokens side by side ("connector": in the order the
# LLM reads them, so place can be read from which token holds what); token attributes read one patch or token.
POOLED: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "encoder": lambda grid: grid.mean(1), "connector": lambda grid: grid.reshape(len(grid), -1)}
FEATURES = tuple(POOLED)


@dataclass
class Reduced:
    """What the probes read of a group's grids, kept instead of the grids (a real encoder's are hundreds of
    patches of a thousand channels per view): each kind's pooled row per view, and per view {cell: (object, its
    patch or token)} for the cells that hold exactly one object's centre."""
    pooled: dict[str, np.ndarray]
    cells: dict[str, list[dict[int, tuple[Obj, np.ndarray]]]]
    sides: dict[str, int]


def reduce_grids(batches: Iterable[dict[str, np.ndarray]], group: list[Scene] | None = None) -> Reduced:
    """The Reduced form of a group's grids, given a batch of (views, tokens, channels) grids per kind at a time;
    without scenes (images that are not scenes) only the pooled rows."""
    pooled, cells, sides, done = {k: [] for k in FEATURES}, {k: [] for k in FEATURES}, {}, 0
    for batch in batches:
        for kind in FEATURES:
            grid = batch[kind]
            sides[kind] = side = math.isqrt(grid.shape[1])
            if side * side != grid.shape[1]:
                raise ValueError(f"{kind} grid of {grid.shape[1]} tokens per view is not square")
            pooled[kind].append(POOLED[kind](grid))
            if group is not None:  # copies, not views that would keep the whole batch alive
                cells[kind] += [{cell: (obj, grid[i, cell].copy()) for cell, obj in object_cells(scene, side).items()}
                                for i, scene in enumerate(group[done:done + len(grid)])]
        done += len(next(iter(batch.values())))
    if group is not None and done != len(group):
        raise ValueError(f"features of {done} views for a group of {len(group)} scenes")
    return Reduced({k: np.concatenate(v) for k, v in pooled.items()}, cells, sides)


def object_cells(scene: Scene, side: int) -> dict[int, Obj]:
    """{cell: object} for the cells of a side x side grid over the view (the image resized onto a square, anchored
    top-left) that hold exactly one object's centre."""
    extent, held = max(scene.size), {}
    for obj in scene.objects:
        x, y = obj.centre
        held.setdefault(int(y * side / extent) * side + int(x * side / extent), []).append(obj)
    return {cell: objs[0] for cell, objs in held.items() if len(objs) == 1}


def ridge_accuracy(fit_x: np.ndarray, fit_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, classes: int,
                   alpha: float = 10.0) -> float:
    """Accuracy on the test rows of a one-vs-rest ridge classifier fitted on the fit rows (features standardised
    with the fit rows' statistics)."""
    mean, std = fit_x.mean(0), fit_x.std(0) + 1e-6
    fit_x, test_x = (fit_x - mean) / std, (test_x - mean) / std
    weights = ridge_weights(fit_x, np.eye(classes)[fit_y], alpha)
    return float((np.argmax(test_x @ weights, axis=1) == test_y).mean())


def ridge_weights(x: np.ndarray, targets: np.ndarray, alpha: float) -> np.ndarray:
    """argmin |x w - targets|^2 + alpha |w|^2.  With more features than rows (a real model's image tokens side by
    side: 144 x 4096 per view) the same solution comes from the rows' Gram matrix, a rows x rows solve, since
    (x'x + aI)^-1 x' = x'(xx' + aI)^-1."""
    rows, columns = x.shape
    if columns <= rows:
        return np.linalg.solve(x.T @ x + alpha * np.eye(columns), x.T @ targets)
    return x.T @ np.linalg.solve(x @ x.T + alpha * np.eye(rows), targets)


def scenes(split: Split, seed: int, n: int, objects: int | None = 1) -> list[Scene]:
    rng = split.rng(seed, "probe" if objects == 1 else "probe-tokens")
    return [sample_scene(rng, split, n=objects) for _ in range(n)]


def features(model: MM1Model, images: list, batch_size: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """Encoder patches and image tokens, (views, tokens, channels) each, of one static view per image at the model's
    view size, a batch of views at a time."""
    views = ViewMaker(ImageConfig(size=model.config.image.size), model.config.model.encoder)
    device = next(model.parameters()).device
    with inference(model):
        for start in range(0, len(images), batch_size):
            pixels = torch.cat([views(im, 1).pixels for im in images[start:start + batch_size]]).to(device)
            patches = model.encoder(pixels)
            tokens = model.connector(patches)
            yield {"encoder": patches.float().cpu().numpy(), "connector": tokens.float().cpu().numpy()}


# Reading starts from telling letters apart where a split tile shows them: one white capital on a sign, in the
# signs' font at their sizes (24 and 28 px, fitted and `_seen`) and, held out, at a size between them.
LETTERS = string.ascii_uppercase
LETTER_SIZES = {"fit": (24, 28), "": (26,), "_seen": (24, 28)}


def letter_signs(rng: random.Random, n: int, sizes: tuple[int, ...]) -> tuple[list[Image.Image], np.ndarray]:
    """n signs of one letter each and the letters' indices.  A sign is 64 px square, about what one tile of a split
    world sign covers, and the letter is off centre by up to 8 px."""
    images, labels = [], []
    for _ in range(n):
        label = rng.randrange(len(LETTERS))
        image = Image.new("RGB", (64, 64), COLOURS[rng.choice(list(COLOURS))])
        centre = (32 + rng.randint(-8, 8), 32 + rng.randint(-8, 8))
        ImageDraw.Draw(image).text(centre, LETTERS[label], font=font(rng.choice(sizes)), fill=(255, 255, 255),
                                   anchor="mm")
        images.append(image)
        labels.append(label)
    return images, np.array(labels)


def probe(model: MM1Model, n_fit: int = 600, n_test: int = 300, seed: int = 0) -> dict:
    """{attribute: {"encoder": acc, "connector": acc, "encoder_seen": acc, "connector_seen": acc, "majority": the
    held-out test labels' most common class share (of the image tokens' labels for a token attribute)}}.  The plain
    keys score held-out pairs; the `_seen` keys score new scenes of the fitted (training) pairs, which tells features
    without the attribute (low on both) from features that hold it only tied to the colours seen with it (high on
    seen pairs, low on held-out ones).  Whole-scene attributes use one-object scenes, token attributes 1-5 objects."""
    result = {}
    for objects, attributes in ((1, ATTRIBUTES), (None, TOKEN_ATTRIBUTES)):
        groups = {"fit": scenes(TRAIN, seed, n_fit, objects), "": scenes(HELDOUT, seed, n_test, objects),
                  "_seen": scenes(TRAIN, seed + 1, n_test, objects)}
        grids = {name: reduce_grids(features(model, [render(s) for s in group]), group)
                 for name, group in groups.items()}
        for name, attribute in attributes.items():
            rows = {(group, kind): attribute.rows(grids[group], groups[group], kind)
                    for group in groups for kind in FEATURES}
            result[name] = accuracies(rows, len(attribute.classes))
    result["letter"] = letter_probe(model, n_fit, n_test, seed)
    return result


def letter_probe(model: MM1Model, n_fit: int, n_test: int, seed: int) -> dict[str, float]:
    """The `letter` row of `probe`: capitals fitted at the signs' sizes, scored at a size between them."""
    signs = {group: letter_signs(random.Random(f"probe-letters-{seed}{group}"), n_fit if group == "fit" else n_test,
                                 sizes)
             for group, sizes in LETTER_SIZES.items()}
    pooled = {group: reduce_grids(features(model, images)).pooled for group, (images, _) in signs.items()}
    return accuracies({(group, kind): (pooled[group][kind], signs[group][1]) for group in signs for kind in FEATURES},
                      len(LETTERS))


def accuracies(rows: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], classes: int) -> dict[str, float]:
    """A probe's row from {(group, kind): (features, labels)}: fitted on "fit", scored on the held-out ("") and
    `_seen` groups, and the held-out labels' most common class share."""
    row = {kind + suffix: ridge_accuracy(*rows["fit", kind], *rows[suffix, kind], classes)
           for suffix in ("", "_seen") for kind in FEATURES}
    held_out = rows["", "connector"][1]
    return row | {"majority": float(np.bincount(held_out).max() / len(held_out))}


def format_probe(result: dict) -> str:
    lines = ["| attribute | encoder | connector | encoder, seen pairs | connector, seen pairs | majority class |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {row['encoder']:.2f} | {row['connector']:.2f} | {row['encoder_seen']:.2f} | "
              f"{row['connector_seen']:.2f} | {row['majority']:.2f} |" for name, row in result.items()]
    return "\n".join(lines)
