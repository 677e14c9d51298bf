"""How many examples does the default's LLM need to learn to look a thing up in its context?  Text only.

Every question of the world that names an object ("Where is the red circle?", "What size is the green square?",
a box for a named object) asks the LLM to find, among the image tokens, the one whose content matches a word of
the question, and to read something else from it.  `answer_reading.py` found this is what the default does not
learn (one-object scenes are read, the named object among 2-5 is not).  This asks the same of the LLM alone, with
no image: a fresh LLM of the recipe's shape (`recipes/tiny.yaml`'s `model.llm`, a vocabulary of 100 symbols) on
sequences of 2-5 (colour, digit) pairs and then a colour; the answer is that colour's digit (associative recall).

Arms: `pair tokens`, where each (colour, digit) pair is one token, so the token that matches the colour holds the
answer (one lookup, as an image token that holds both an object's colour and its place); `colour, digit`, where
they are two tokens, so the digit's position must first take in the colour before it and then be found by it (two
lookups, an induction head); each at the default SFT's learning rate (1e-3) and at 3e-4, batch 32 (the two-token
arms also at 128), AdamW without weight decay.  Scored every `--every` steps on 512 sequences that training never
draws (chance about 0.4: one of the 2-5 digits, which repeat).
"""

from __future__ import annotations

import dataclasses
import random
import time

from common import REPO, Bench, cli, table

COLOURS, DIGITS = 8, 10
SEP, QUERY = COLOURS + DIGITS, COLOURS + DIGITS + 1  # colour ids 0-7, digits 8-17
PAIRS = QUERY + 1  # pair tokens: PAIRS + colour * DIGITS + digit
VOCAB = PAIRS + COLOURS * DIGITS
LONGEST = 2 * 5 + 4  # five pairs as two tokens each, SEP, the colour asked, QUERY, the answer


@dataclasses.dataclass(frozen=True)
class Arm:
    pair_tokens: bool
    lr: float
    batch: int


ARMS = {f"{'pair tokens' if pair else 'colour, digit'}, lr {lr:g}, batch {batch}": Arm(pair, lr, batch)
        for pair, batches in ((True, (32,)), (False, (32, 128))) for batch in batches for lr in (1e-3, 3e-4)}


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


def run_arm(arm: Arm, steps: int, every: int) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from mm1.config import load_config
    from mm1.model.llm import build_llm

    torch.manual_seed(0)
    llm = build_llm(load_config(REPO / "recipes" / "tiny.yaml").model.llm, VOCAB, None, load_weights=False)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=arm.lr, weight_decay=0.0)
    test = sequences(random.Random(1), 512, arm.pair_tokens)
    # two-pair sequences are few enough (11,200) to recur in training, so the test ones are kept out of it
    train_rng, held_out = random.Random(0), frozenset(map(tuple, test.tolist()))
    rows, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        batch = sequences(train_rng, arm.batch, arm.pair_tokens, held_out)
        loss = F.cross_entropy(llm(input_ids=batch[:, :-1], logits_to_keep=1).logits[:, -1], batch[:, -1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0:
            with torch.no_grad():
                guess = llm(input_ids=test[:, :-1], logits_to_keep=1).logits[:, -1].argmax(-1)
            rows.append({"step": step, "examples": step * arm.batch, "train loss": round(loss.item(), 3),
                         "held-out accuracy": round((guess == test[:, -1]).float().mean().item(), 3),
                         "s": round(time.perf_counter() - start)})
    return rows


def main() -> None:
    p = cli(__doc__)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--arm", action="append", help="only this arm (repeatable; default: every arm)")
    args = p.parse_args()
    unknown = sorted(set(args.arm or []) - set(ARMS))
    if unknown:
        raise SystemExit(f"--arm {unknown}: not an arm; the arms: {sorted(ARMS)}")
    bench = Bench("recall", args)
    steps, every = (100, 50) if args.quick else (args.steps, args.every)
    results, text = {}, []
    for name, arm in ARMS.items():
        if args.arm and name not in args.arm:
            continue
        results[name] = run_arm(arm, steps, every)
        text.append(table(results[name], name))
    bench.save({"model": "recipes/tiny.yaml model.llm, fresh", "arms": results}, text)


if __name__ == "__main__":
    main()
