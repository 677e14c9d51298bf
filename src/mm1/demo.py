"""The embedded default: synthesise a shapes world, train a tiny MM1 through its stages, evaluate, save, answer.

Everything is generated here, so it runs on a fresh machine with no downloads.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from mm1.config import MM1Config, save_config
from mm1.data import synth
from mm1.data.processor import Encoded, Processor
from mm1.data.tokenizer import build_tokenizer
from mm1.model.mllm import MM1Model
from mm1.registry import Registry
from mm1.train.loop import train_stage

STREAMS: Registry[Callable[[Processor, random.Random], Encoded]] = Registry("data stream")


@STREAMS.register("synth-captions")
def caption_or_text(processor: Processor, rng: random.Random) -> Encoded:
    """Pre-training documents: captioned images, with 10% text-only documents (MM1's text share)."""
    if rng.random() < 0.1:
        return processor.encode_text(synth.text_document(rng))
    scene = synth.sample_scene(rng, held_out=False)
    return processor.encode_text("<image>" + synth.caption(scene, rng), [scene.image])


@STREAMS.register("synth-vqa")
def vqa(processor: Processor, rng: random.Random) -> Encoded:
    scene = synth.sample_scene(rng, held_out=False)
    prompt, answer = synth.question(scene, rng.choice(list(synth.QUESTIONS)))
    return processor.encode_chat(chat(prompt, answer), [scene.image])


def chat(prompt: str, answer: str | None = None) -> list[dict]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def batches(processor: Processor, stream: str, batch_size: int, seed: int) -> Iterator[dict]:
    rng = random.Random(seed)
    make = STREAMS.get(stream)
    while True:
        yield processor.collate([make(processor, rng) for _ in range(batch_size)])


def corpus(seed: int, n: int = 2000) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(n):
        scene = synth.sample_scene(rng, held_out=rng.random() < 0.3)
        yield synth.caption(scene, rng)
        yield synth.text_document(rng)
    yield from (q for q in synth.QUESTIONS.values())


def evaluate(model: MM1Model, n: int, seed: int, batch_size: int = 16) -> dict[str, float]:
    """Accuracy of greedy answers on held-out (colour, shape) pairs never seen in training."""
    rng = random.Random(seed)
    correct = {kind: 0 for kind in synth.QUESTIONS}
    for kind in synth.QUESTIONS:
        for start in range(0, n, batch_size):
            scenes = [synth.sample_scene(rng, held_out=True) for _ in range(min(batch_size, n - start))]
            encs = [model.processor.encode_chat(chat(synth.question(s, kind)[0]), [s.image], add_generation_prompt=True)
                    for s in scenes]
            batch = model.processor.collate(encs, padding_side="left")
            out = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=6)
            for scene, ids in zip(scenes, out.tolist()):
                correct[kind] += model.processor.decode(ids).strip() == synth.question(scene, kind)[1]
    return {f"{kind}_accuracy": correct[kind] / n for kind in synth.QUESTIONS}


def run_demo(cfg: MM1Config, eval_samples: int = 64, log: Callable[[str], None] = print) -> dict:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(cfg.tokenizer, corpus(cfg.seed))
    model = MM1Model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters; tokenizer: {len(tokenizer)} tokens")
    report: dict = {"parameters": n_params, "stages": {}}
    for i, stage in enumerate(cfg.stages):
        torch.manual_seed(cfg.seed + i)
        result = train_stage(model, stage, batches(model.processor, stage.data, stage.batch_size, cfg.seed + i), log)
        head, tail = result.losses[:10], result.losses[-10:]
        report["stages"][stage.name] = {
            "steps": stage.steps, "seconds": round(result.seconds, 1), "tokens_per_s": round(result.tokens / result.seconds),
            "loss_first10": sum(head) / len(head), "loss_last10": sum(tail) / len(tail),
        }
        log(f"stage {stage.name}: loss {report['stages'][stage.name]['loss_first10']:.3f} -> "
            f"{report['stages'][stage.name]['loss_last10']:.3f} in {result.seconds:.0f}s")
    t0 = time.perf_counter()
    report["held_out"] = evaluate(model, eval_samples, seed=cfg.seed + 10_000)
    log(f"held-out accuracy: {report['held_out']} ({time.perf_counter() - t0:.0f}s)")
    model.save_pretrained(run_dir / "model")
    restored = MM1Model.from_pretrained(run_dir / "model")
    scene = synth.sample_scene(random.Random(cfg.seed + 20_000), held_out=True)
    scene.image.save(run_dir / "question.png")
    prompt = synth.QUESTIONS["colour"]
    answer = restored.chat(chat(prompt), [scene.image])
    report["example"] = {"image": str(run_dir / "question.png"), "question": prompt, "answer": answer,
                         "truth": scene.colour}
    log(f"held-out image {run_dir / 'question.png'} ({scene.colour} {scene.shape}): Q: {prompt} A: {answer}")
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    log(f"saved model to {run_dir / 'model'} and report to {run_dir / 'report.json'}")
    return report
