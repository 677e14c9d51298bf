"""How many examples does the default's LLM need to learn to look a thing up in its context?  No image.

Every question of the world that names an object ("Where is the red circle?", "What size is the green square?",
a box for a named object) asks the LLM to find, among the image tokens, the one whose content matches a word of
the question, and to read something else from it.  `answer_reading.py` found this is what the default does not
learn (one-object scenes are read, the named object among 2-5 is not).  This asks the same of the LLM alone: a
fresh LLM of the recipe's shape (`recipes/tiny.yaml`'s `model.llm`, a vocabulary of 100 symbols), AdamW without
weight decay, scored every `--every` steps on examples that training never draws.

`--family recall` (the default): sequences of 2-5 (colour, digit) pairs and then a colour; the answer is that
colour's digit (associative recall; chance about 0.4: one of the 2-5 digits, which repeat).  Arms: `pair tokens`,
where each (colour, digit) pair is one token, so the token that matches the colour holds the answer (one lookup, as
an image token that holds both an object's colour and its place); `colour, digit`, where they are two tokens, so
the digit's position must first take in the colour before it and then be found by it (two lookups, an induction
head); each at the default SFT's learning rate (1e-3) and at 3e-4, batch 32 (the two-token arms also at 128).

`--family cells` puts perfect image tokens in place of the image: the world's scenes (`sample_scene`, 1-5 objects)
on the overview's 4 x 4 token grid, each token a learnt embedding of the colour it shows (or the background) plus
one of its cell (what a connector with the grid position embedding could at best give), then the asked object's
colour and shape, 11 fixed tokens (as many as the chat template puts between the question's colour word and the
answer), and the answer: the object's place in thirds ("top left", ...; the position question's answer), trained
on scenes of the training (colour, shape) pairs and scored on 400 of the held-out pairs, where no two objects share
a colour.  Arms: `centre cell`, where only the cell of each object's centre shows its colour (one token to find, as
`recall`'s pair tokens); `covered cells`, where every cell its box overlaps does (a later object's colour where two
boxes share a cell), as an object spreads over the real image tokens; at lr 1e-3 (the SFT's), 3e-4 and 1e-4.

`--family cells-plateau` asks what shortens the plateau before the covered-cells lookup forms (lr 3e-4, batch 32):
AdamW's beta2 at the trainer's 0.95 instead of 0.999; a larger initial std of the LLM's weights and the cell
embeddings (0.05 for both, instead of transformers' 0.02 and PyTorch's 1.0); and a Qwen3 LLM, Llama's layout with an
RMSNorm on each head's queries and keys (QK-norm), which sets the attention logits' scale whatever the weights'
scale.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from collections import Counter, defaultdict

from common import REPO, Bench, add_family_options, box_cells, chosen_arms, cli, table

# `recall`: colour ids 0-7, digits 8-17, then the separator, the query mark and the pair tokens
COLOURS, DIGITS = 8, 10
SEP, QUERY = COLOURS + DIGITS, COLOURS + DIGITS + 1
PAIRS = QUERY + 1  # pair tokens: PAIRS + colour * DIGITS + digit
LONGEST = 2 * 5 + 4  # five pairs as two tokens each, SEP, the colour asked, QUERY, the answer
# `cells`: colour ids 0-7, shape ids 8-12, the nine places 13-21, the template's 11 fixed tokens 22-32
SIDE, TEMPLATE, FIRST_PLACE = 4, 11, 13
PLACES = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
VOCAB = PAIRS + COLOURS * DIGITS  # 100, more than either family uses


@dataclasses.dataclass(frozen=True)
class Arm:
    context: str  # "pair tokens", "colour, digit", "centre cell", "covered cells"
    lr: float
    batch: int
    llm: str = "llama"  # registry type of the fresh LLM (qwen3: Llama's layout with RMSNorm on queries and keys)
    init_std: float | None = None  # initial std of the LLM's weights and the cell embeddings (None: 0.02 and 1.0,
    # transformers' and PyTorch's defaults)
    beta2: float = 0.999  # AdamW's second-moment decay (the trainer's is 0.95)


FAMILIES = {
    "recall": {f"{context}, lr {lr:g}, batch {batch}": Arm(context, lr, batch)
               for context, batches in (("pair tokens", (32,)), ("colour, digit", (32, 128)))
               for batch in batches for lr in (1e-3, 3e-4)},
    "cells": {f"{context}, lr {lr:g}, batch 32": Arm(context, lr, 32)
              for context, lrs in (("centre cell", (3e-4,)), ("covered cells", (1e-3, 3e-4, 1e-4))) for lr in lrs},
    # what shortens the plateau before the lookup forms: `cells`' "covered cells, lr 0.0003, batch 32" changed in one
    # thing each
    "cells-plateau": {
        "beta2 0.95": Arm("covered cells", 3e-4, 32, beta2=0.95),
        "init std 0.05": Arm("covered cells", 3e-4, 32, init_std=0.05),
        "qwen3 (QK-norm)": Arm("covered cells", 3e-4, 32, llm="qwen3"),
    },
}


def sequences(rng: random.Random, n: int, pair_tokens: bool, held_out: frozenset = frozenset()):
    """(n, LONGEST) token ids, left-filled with SEP, the answer digit last; none of them in `held_out`."""
    import torch

    rows = []
    while len(rows) < n:
        colours = rng.sample(range(COLOURS), rng.randint(2, 5))
        digits = [rng.randrange(DIGITS) for _ in colours]
        asked = rng.randrange(len(colours))
        if pair_tokens:
            context = [PAIRS + c * DIGITS + d for c, d in zip(colours, digits)]
        else:
            context = [t for c, d in zip(colours, digits) for t in (c, COLOURS + d)]
        row = context + [SEP, colours[asked], QUERY, COLOURS + digits[asked]]
        row = [SEP] * (LONGEST - len(row)) + row
        if tuple(row) not in held_out:
            rows.append(row)
    return torch.tensor(rows)


def scenes(rng: random.Random, n: int, split, covered: bool):
    """(cells, question and answer ids): (n, SIDE * SIDE) colour ids per cell (COLOURS: the background) and
    (n, 2 + TEMPLATE + 1) ids: the asked object's colour and shape, the template, its place."""
    import torch

    from mm1.data.world.base import COLOURS as NAMES
    from mm1.data.world.base import SHAPES
    from mm1.data.world.scenes import sample_scene
    from mm1.eval.probe import object_cells

    colours, cells, texts = list(NAMES), [], []
    while len(texts) < n:
        scene = sample_scene(rng, split)
        grid, extent = [COLOURS] * SIDE * SIDE, max(scene.size)
        shown = ({cell: obj for obj in scene.objects for cell in box_cells(obj.box, extent, SIDE)} if covered
                 else object_cells(scene, SIDE))  # centres that share a cell are left out: the cell shows neither
        for cell, obj in shown.items():
            grid[cell] = colours.index(obj.colour)
        asked = rng.choice(scene.objects)
        if asked not in shown.values():  # no cell shows it: not asked
            continue
        cells.append(grid)
        texts.append([colours.index(asked.colour), COLOURS + SHAPES.index(asked.shape),
                      *range(FIRST_PLACE + len(PLACES), FIRST_PLACE + len(PLACES) + TEMPLATE),
                      FIRST_PLACE + PLACES.index(scene.where(asked))])
    return torch.tensor(cells), torch.tensor(texts)


def cell_key(grid, ids) -> list[tuple]:
    """(which cells show the asked colour, the answer id) per example of `scenes`."""
    return [(tuple((row == question[0]).tolist()), question[-1].item()) for row, question in zip(grid, ids)]


@functools.cache
def best_places(covered: bool) -> dict[tuple, int]:
    """{the asked object's cells: the place most often right for them}, counted on 20,000 held-out scenes."""
    from mm1.data.world.base import HELDOUT

    answers = defaultdict(Counter)
    for cells, answer in cell_key(*scenes(random.Random(2), 20_000, HELDOUT, covered)):
        answers[cells][answer] += 1
    return {cells: counts.most_common(1)[0][0] for cells, counts in answers.items()}


def perfect_lookup(test: tuple, covered: bool) -> float:
    """What a perfect lookup gives in `cells`: the accuracy of answering each test question with the place most
    often right for the asked object's cells (found by its colour, which no other held-out object has), counted on
    20,000 other held-out scenes (`best_places`, once per setting).  A cell says where an object is only to a quarter
    of the view, so this is well below 1; a model may pass it a little, as the other objects' cells (objects never
    overlap) narrow it down."""
    best = best_places(covered)
    return sum(best.get(cells) == answer for cells, answer in cell_key(*test)) / len(test[1])


def run_arm(arm: Arm, steps: int, every: int, seed: int = 0) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from mm1.config import load_config
    from mm1.data.world.base import HELDOUT, TRAIN
    from mm1.model.llm import build_llm, hf_llm_config

    torch.manual_seed(seed)
    config = dataclasses.replace(load_config(REPO / "recipes" / "tiny.yaml").model.llm, type=arm.llm)
    hf_config = hf_llm_config(config, VOCAB)
    if arm.init_std is not None:
        hf_config.initializer_range = arm.init_std
    llm = build_llm(config, VOCAB, hf_config, load_weights=False)
    cell_colour, cell_place = torch.nn.Embedding(COLOURS + 1, config.hidden_size), torch.nn.Embedding(
        SIDE * SIDE, config.hidden_size)  # the perfect connector's tokens (`cells` only)
    if arm.init_std is not None:
        for embedding in (cell_colour, cell_place):
            torch.nn.init.normal_(embedding.weight, std=arm.init_std)
    parameters = [*llm.parameters(), *cell_colour.parameters(), *cell_place.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=arm.lr, betas=(0.9, arm.beta2), weight_decay=0.0)
    cells, covered = arm.context in ("centre cell", "covered cells"), arm.context == "covered cells"
    if cells:  # (cells or None, ids), the answer the last id
        test, held_out = scenes(random.Random(1), 400, HELDOUT, covered), frozenset()
    else:
        test = None, sequences(random.Random(1), 512, arm.context == "pair tokens")
        # two-pair sequences are few enough (11,200) to recur in training, so the test ones are kept out of it
        held_out = frozenset(map(tuple, test[1].tolist()))

    def train_batch(rng: random.Random) -> tuple:
        if cells:
            return scenes(rng, arm.batch, TRAIN, covered)
        return None, sequences(rng, arm.batch, arm.context == "pair tokens", held_out)

    def logits(grid, ids):
        if grid is None:
            return llm(input_ids=ids[:, :-1], logits_to_keep=1).logits[:, -1]
        tokens = cell_colour(grid) + cell_place.weight
        embeds = torch.cat([tokens, llm.get_input_embeddings()(ids[:, :-1])], 1)
        return llm(inputs_embeds=embeds, logits_to_keep=1).logits[:, -1]

    ceiling = {"perfect lookup": round(perfect_lookup(test, covered), 3)} if cells else {}
    train_rng = random.Random(seed)
    rows, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        grid, ids = train_batch(train_rng)
        loss = F.cross_entropy(logits(grid, ids), ids[:, -1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0:
            with torch.no_grad():
                guess = logits(*test).argmax(-1)
            rows.append({"step": step, "examples": step * arm.batch, "train loss": round(loss.item(), 3),
                         "held-out accuracy": round((guess == test[1][:, -1]).float().mean().item(), 3),
                         **ceiling,
                         "s": round(time.perf_counter() - start)})
    return rows


def main() -> None:
    p = cli(__doc__)
    add_family_options(p, FAMILIES, default="recall")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0, help="the weights' and the training examples' seed (the test set's "
                   "is fixed)")
    args = p.parse_args()
    name, arms = chosen_arms(args, FAMILIES, "recall", "recall")
    bench = Bench(name, args)
    steps, every = (100, 50) if args.quick else (args.steps, args.every)
    results, text = {}, []
    for name, arm in arms.items():
        results[name] = run_arm(arm, steps, every, args.seed)
        text.append(table(results[name], name))
    bench.save({"model": "recipes/tiny.yaml model.llm, fresh", "family": args.family, "seed": args.seed,
                "arms": results}, text)

if __name__ == "__main__":
    main()
