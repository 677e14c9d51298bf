"""Linear probes: which scene attributes a saved model's image tokens carry, before the LLM reads them.

When a task fails ("What shape is the red object?" answered at chance), the fault is either on the vision side
(the encoder never wrote the attribute into its features) or on the LLM side (it is there but not read).  A ridge
classifier on the features tells the two apart.  It is fitted on one-object scenes of the world's training
colour-shape pairs and scored on scenes of the held-out pairs, as the VQA benchmark is: features that tie shape to
colour (a shortcut the training pairs allow) score at or below chance there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from mm1.config import ImageConfig
from mm1.data.image import ViewMaker
from mm1.data.world.base import COLOURS, HELDOUT, SHAPES, TRAIN, Split
from mm1.data.world.scenes import BACKGROUNDS, SIZES, Scene, render, sample_scene
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
# "encoder": the mean of the view's patch features (what it holds anywhere in the view); "connector": its image
# tokens side by side, in the order the LLM reads them (so place can be read from which token holds what).
FEATURES = ("encoder", "connector")


def ridge_accuracy(fit_x: np.ndarray, fit_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, classes: int,
                   alpha: float = 10.0) -> float:
    """Accuracy on the test rows of a one-vs-rest ridge classifier fitted on the fit rows (features standardised
    with the fit rows' statistics)."""
    mean, std = fit_x.mean(0), fit_x.std(0) + 1e-6
    fit_x, test_x = (fit_x - mean) / std, (test_x - mean) / std
    weights = np.linalg.solve(fit_x.T @ fit_x + alpha * np.eye(fit_x.shape[1]), fit_x.T @ np.eye(classes)[fit_y])
    return float((np.argmax(test_x @ weights, axis=1) == test_y).mean())


def scenes(split: Split, seed: int, n: int) -> list[Scene]:
    rng = split.rng(seed, "probe")
    return [sample_scene(rng, split, n=1) for _ in range(n)]


def features(model: MM1Model, images: list, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Encoder and connector features (see FEATURES) of one static view per image at the model's view size."""
    views = ViewMaker(ImageConfig(size=model.config.image.size), model.config.model.encoder)
    device = next(model.parameters()).device
    out = {name: [] for name in FEATURES}
    with inference(model):
        for start in range(0, len(images), batch_size):
            pixels = torch.cat([views(im, 1).pixels for im in images[start:start + batch_size]]).to(device)
            patches = model.encoder(pixels)
            out["encoder"].append(patches.float().mean(1).cpu().numpy())
            out["connector"].append(model.connector(patches).float().flatten(1).cpu().numpy())
    return {name: np.concatenate(rows) for name, rows in out.items()}


def probe(model: MM1Model, n_fit: int = 600, n_test: int = 300, seed: int = 0) -> dict:
    """{attribute: {"encoder": acc, "connector": acc, "encoder_seen": acc, "connector_seen": acc, "majority": the
    held-out test set's most common class share}}.  The plain keys score held-out pairs; the `_seen` keys score
    new scenes of the fitted (training) pairs, which tells features without the attribute (low on both) from
    features that hold it only tied to the colours seen with it (high on seen pairs, low on held-out ones)."""
    fit_scenes = scenes(TRAIN, seed, n_fit)
    tests = {"": scenes(HELDOUT, seed, n_test), "_seen": scenes(TRAIN, seed + 1, n_test)}
    fit_x = features(model, [render(s) for s in fit_scenes])
    test_x = {suffix: features(model, [render(s) for s in group]) for suffix, group in tests.items()}
    result = {}
    for name, attribute in ATTRIBUTES.items():
        fit_y = attribute.labels(fit_scenes)
        test_y = {suffix: attribute.labels(group) for suffix, group in tests.items()}
        row = {kind + suffix: ridge_accuracy(fit_x[kind], fit_y, test_x[suffix][kind], test_y[suffix],
                                             len(attribute.classes))
               for suffix in tests for kind in FEATURES}
        row["majority"] = float(np.bincount(test_y[""]).max() / n_test)
        result[name] = row
    return result


def format_probe(result: dict) -> str:
    lines = ["| attribute | encoder | connector | encoder, seen pairs | connector, seen pairs | majority class |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {row['encoder']:.2f} | {row['connector']:.2f} | {row['encoder_seen']:.2f} | "
              f"{row['connector_seen']:.2f} | {row['majority']:.2f} |" for name, row in result.items()]
    return "\n".join(lines)
