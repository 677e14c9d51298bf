"""Can the LLM learn to read an attribute its image tokens carry?  Single-turn VQA from a trained model directory.

`mm1 probe` found the background colour in the image tokens (0.7-1.0 held out), yet the SFT model of the default
with its encoder trained in every stage answered "What colour is the background?" with one word whatever the image.
This measures how many questions the LLM needs to learn such a reading.  It trains a model (default: the
demo's CPT model, `runs/tiny/cpt/model`) on single-turn questions of new one- to five-object scenes of the
training (colour, shape) pairs, batch 32, AdamW with gradient clipping at 1.0, and scores greedy answers on
scenes of the held-out pairs.  Arms: the background question alone with every module trained; the same with the
encoder and connector frozen (what the LLM alone can learn from the tokens as they are); every question type of
the world (count, colour, shape, existence, position, size, background) with every module trained.
"""

from __future__ import annotations

import random
import time

from common import REPO, Bench, cli, table

ARMS = {  # name -> (question kinds trained, modules trained)
    "background, all modules": (["background"], ["encoder", "connector", "llm"]),
    "background, LLM only": (["background"], ["llm"]),
    "every kind, all modules": (None, ["encoder", "connector", "llm"]),
}


def run_arm(model_dir: str, kinds: list[str] | None, trained: list[str], steps: int, every: int, lr: float,
            test_samples: int) -> list[dict]:
    import torch

    from mm1.data.world.base import HELDOUT, TRAIN
    from mm1.data.world.scenes import questions, render, sample_scene
    from mm1.config import StageConfig
    from mm1.model.mllm import MM1Model
    from mm1.train.optim import set_trainable

    torch.manual_seed(0)
    model = MM1Model.from_pretrained(model_dir)
    set_trainable(model, StageConfig(trainable=trained))
    processor = model.processor

    def samples(split, rng: random.Random, n: int) -> list[tuple]:
        out = []
        while len(out) < n:
            scene = sample_scene(rng, split)
            out += [(render(scene), qa.question, qa.answer, qa.task) for qa in questions(scene, rng, split)
                    if kinds is None or qa.task in kinds]
        return out[:n]

    def encode(image, question: str, answer: str | None):
        messages = [{"role": "user", "content": "<image>\n" + question}]
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return processor.encode_chat(messages, [image], add_generation_prompt=answer is None)

    test = samples(HELDOUT, HELDOUT.rng(0, "answer-reading"), test_samples)
    prompts = [encode(image, question, None) for image, question, _, _ in test]

    def accuracy() -> dict[str, float]:
        model.eval()
        right: dict[str, list[bool]] = {}
        for start in range(0, len(test), 64):
            batch = processor.collate(prompts[start:start + 64], padding_side="left")
            out = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=6)
            for ids, (_, _, answer, task) in zip(out.tolist(), test[start:start + 64]):
                right.setdefault(task, []).append(processor.decode(ids).split("\n")[0].strip() == answer)
        model.train()
        return {k: sum(v) / len(v) for k, v in sorted(right.items())}

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = TRAIN.rng(0, "answer-reading")
    rows, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        batch = processor.collate([encode(image, q, a) for image, q, a, _ in samples(TRAIN, rng, 32)])
        loss = model(batch["input_ids"], batch["pixel_values"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % every == 0:
            scores = accuracy()
            rows.append({"step": step, "train loss": round(loss.item(), 3),
                         **{k: round(v, 2) for k, v in scores.items()}, "s": round(time.perf_counter() - start)})
    return rows


def main() -> None:
    p = cli(__doc__)
    p.add_argument("--model", default=str(REPO / "runs" / "tiny" / "cpt" / "model"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=3e-4)
    args = p.parse_args()
    bench = Bench("answer_reading", args)
    steps = 40 if args.quick else args.steps
    results, text = {}, []
    for name, (kinds, trained) in ARMS.items():
        arm_steps = steps if kinds is None else max(1, steps // 2)  # one kind is learnt in fewer steps or not at all
        rows = run_arm(args.model, kinds, trained, arm_steps, max(1, arm_steps // 4), args.lr,
                       test_samples=32 if args.quick else 400)
        results[name] = rows
        text.append(table(rows, f"{name}: held-out accuracy per question kind ({args.model})"))
    bench.save({"model": args.model, "lr": args.lr, "arms": results}, text)


if __name__ == "__main__":
    main()
