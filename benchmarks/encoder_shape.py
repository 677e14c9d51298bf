"""Can the default's ViT learn shape at all?  Shape trained with direct labels, the easiest signal there is.

`mm1 probe` finds no shape in the default's encoder after any stage (contrastive, captioning through the LLM). This
separates the objective from the architecture: the recipe's encoder (`recipes/tiny.yaml`, random weights) with a
linear head on its mean patch feature is trained with cross-entropy on the shape of one-object scenes of the
training (colour, shape) pairs (batch 128, AdamW at the encoder stage's lr and weight decay, bf16 autocast), and
scored on scenes of the held-out pairs (compositional: each colour's held-out shape is never seen with it) and on new
scenes of the training pairs.  Arms: patch 8 (the default; 64 tokens per 64-px view) vs patch 4 (256 tokens), in
colour and in greyscale, with CLIP's linear patch embedding; and patch 8 with the convolutional stem
(`model.encoder.stem: conv`), in colour and in greyscale.

`--task letter` asks the same of reading: single white capitals on signs (`mm1 probe`'s letter row; 26 classes)
in the world's sign font at 24 and 28 px, scored at 26 px (held out) and on new signs at the trained sizes (seen),
patch 8, patch 4 and patch 8 with the conv stem.  Results: results/encoder_shape[_TASK][_TAG].json.

`--task attributes` trains shape, colour, size and background together (four linear heads, the loss their sum), the
conv-stem arm: how long shape waits behind the easier attributes.

`--export DIR` trains one arm (`--arm`; default patch 4, or the task's first) and saves it as the encoder of an MM1
model directory (the recipe's model with that arm's patch size and stem, tokenizer from `runs/tiny/tokenizer`): put
it at `RUN/encoder/model` and `mm1 train recipes/tiny.yaml --set run_dir=RUN --set model.encoder.patch_size=4
--stage pretrain` (then cpt, sft; `--set model.encoder.stem=conv` for a conv-stem arm) trains the default's LLM
stages on an encoder that sees shape.  A diagnostic: its labels are the very attributes VQA asks for, so it is not
the recipe's encoder stage.
"""

from __future__ import annotations

import time

from common import REPO, Bench, cli, table


def scene_data(heads: tuple[str, ...]):
    """One-object scenes labelled with `mm1 probe`'s attributes `heads`: data(greyscale) -> (draw(split, rng, n) ->
    images and labels (n, heads), the held-out and seen groups' (split, rng), {head: classes})."""
    def data(greyscale: bool):
        import numpy as np

        from mm1.data.world.base import HELDOUT, TRAIN
        from mm1.data.world.scenes import render, sample_scene
        from mm1.eval.probe import ATTRIBUTES

        def draw(split, rng, n: int):
            scenes = [sample_scene(rng, split, n=1) for _ in range(n)]
            images = [render(s).convert("L").convert("RGB") if greyscale else render(s) for s in scenes]
            return images, np.stack([ATTRIBUTES[head].labels(scenes) for head in heads], 1)

        groups = {"train": (TRAIN, TRAIN.rng(0, "shape-bench")),
                  "held-out": (HELDOUT, HELDOUT.rng(0, "shape-bench")), "seen": (TRAIN, TRAIN.rng(1, "shape-bench"))}
        return draw, groups, {head: len(ATTRIBUTES[head].classes) for head in heads}

    return data


def letter_data(greyscale: bool):
    """Single capitals on signs (`mm1 probe`'s letter row): held out at a font size between the fitted two."""
    import random

    from mm1.eval.probe import LETTER_SIZES, LETTERS, letter_signs

    def draw(sizes, rng, n: int):
        return letter_signs(rng, n, sizes)

    groups = {name: (LETTER_SIZES[key], random.Random(f"letter-bench-{name}"))
              for name, key in (("train", "fit"), ("held-out", ""), ("seen", "_seen"))}
    return draw, groups, {"letter": len(LETTERS)}


# `attributes`: every whole-scene attribute VQA asks of one object, for an encoder to export as a diagnostic (the
# first head's columns are the task's; the others' are named after their attribute).
TASKS = {"shape": scene_data(("shape",)), "attributes": scene_data(("shape", "colour", "size", "background")),
         "letter": letter_data}
HELD_OUT = {"shape": "held-out pairs", "attributes": "held-out pairs", "letter": "held-out size"}  # the columns
SEEN = {"shape": "seen pairs", "attributes": "seen pairs", "letter": "seen sizes"}


def train_arm(task: str, patch: int, greyscale: bool, stem: str, steps: int, every: int,
              export: str | None = None) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from mm1.config import ImageConfig, load_config
    from mm1.data.image import ViewMaker
    from mm1.model.encoder import ImageEncoder

    cfg = load_config(REPO / "recipes" / "tiny.yaml",
                      [f"model.encoder.patch_size={patch}", f"model.encoder.stem={stem}"])
    stage = cfg.stages[0]
    torch.manual_seed(0)
    draw, groups, classes = TASKS[task](greyscale)
    encoder = ImageEncoder(cfg.model.encoder)
    head = torch.nn.Linear(encoder.width, sum(classes.values()))  # one linear head per attribute, side by side
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=stage.lr,
                                  weight_decay=stage.weight_decay)
    views = ViewMaker(ImageConfig(size=cfg.model.encoder.image_size), cfg.model.encoder)

    def batch(group: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = draw(*groups[group], n)
        return torch.cat([views(im, 1).pixels for im in images]), torch.from_numpy(labels).reshape(n, -1)

    def logits(pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return head(encoder(pixels).mean(1)).float().split(list(classes.values()), dim=1)

    def accuracy(test: tuple[torch.Tensor, torch.Tensor]) -> list[float]:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return [(scores.argmax(1) == test[1][:, i]).float().mean().item()
                    for i, scores in enumerate(logits(test[0]))]

    held_out, seen = batch("held-out", 400), batch("seen", 400)
    rows, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        pixels, labels = batch("train", stage.batch_size)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sum(F.cross_entropy(scores, labels[:, i]) for i, scores in enumerate(logits(pixels)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0:
            row = {"task": task, "patch": patch, "stem": stem, "images": "greyscale" if greyscale else "colour",
                   "step": step, "train loss": round(loss.item(), 3)}
            for i, (name, held, known) in enumerate(zip(classes, accuracy(held_out), accuracy(seen))):
                prefix = "" if i == 0 else f"{name}, "  # the first head is the task's own column
                row |= {prefix + HELD_OUT[task]: round(held, 3), prefix + SEEN[task]: round(known, 3)}
            rows.append(row | {"s": round(time.perf_counter() - start)})
    if export:
        from transformers import AutoTokenizer

        from mm1.model.mllm import MM1Model

        model = MM1Model(cfg, AutoTokenizer.from_pretrained(REPO / "runs" / "tiny" / "tokenizer"))
        model.encoder.load_state_dict(encoder.state_dict())
        model.save_pretrained(export)
    return rows


# Greyscale arms only where colour is a shortcut (shape is tied to colour in the training pairs; letters are white
# on any sign colour).  An arm: (patch size, greyscale, stem).
ARMS = {"shape": {"patch 8": (8, False, "patch"), "patch 8, greyscale": (8, True, "patch"),
                  "patch 4": (4, False, "patch"), "patch 4, greyscale": (4, True, "patch"),
                  "patch 8, conv stem": (8, False, "conv"), "patch 8, conv stem, greyscale": (8, True, "conv")},
        "attributes": {"patch 8, conv stem": (8, False, "conv")},
        "letter": {"patch 8": (8, False, "patch"), "patch 4": (4, False, "patch"),
                   "patch 8, conv stem": (8, False, "conv")}}


def main() -> None:
    p = cli(__doc__)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--task", choices=sorted(TASKS), default="shape",
                   help="shape of one-object scenes; attributes: shape, colour, size and background together; "
                        "letter: single capitals on signs (what reading needs)")
    p.add_argument("--arm", action="append", help="only this arm (repeatable; default: every arm of the task)")
    p.add_argument("--tag", help="appended to the results' name, to keep a run of some arms apart")
    p.add_argument("--export", help="train one arm (--arm; default patch 4, or the task's first) and save it as an "
                        "MM1 model directory here")
    args = p.parse_args()
    unknown = sorted(set(args.arm or []) - set(ARMS[args.task]))
    if unknown:
        raise SystemExit(f"--arm {unknown}: not an arm of {args.task}; its arms: {sorted(ARMS[args.task])}")
    bench = Bench("encoder_shape" + ("" if args.task == "shape" else f"_{args.task}")
                  + (f"_{args.tag}" if args.tag else "") + ("-export" if args.export else ""), args)
    steps = 60 if args.quick else args.steps
    if args.export and len(args.arm or []) > 1:
        raise SystemExit("--export saves one arm's encoder: name at most one --arm")
    one = "patch 4" if args.export and "patch 4" in ARMS[args.task] else next(iter(ARMS[args.task]))
    chosen = args.arm or ([one] if args.export or args.quick else list(ARMS[args.task]))
    rows = [row for arm in chosen
            for row in train_arm(args.task, *ARMS[args.task][arm], steps, max(1, steps // 3), args.export)]
    title = {"shape": "shape of one-object scenes, learnt with labels (chance 0.20; 5 shapes)",
             "attributes": "shape, colour, size and background of one-object scenes, learnt with labels together",
             "letter": "capital letters on signs, learnt with labels (chance 0.04; 26 letters; held out: font size 26)"}
    bench.save({"rows": rows}, [table(rows, title[args.task])])


if __name__ == "__main__":
    main()
