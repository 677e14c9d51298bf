"""`evaluate`: tasks x shot counts, in-process, batched greedy generation; the same call for `mm1 eval` and training.

Per task: read the samples (bad records skipped and named), keep the first `limit`, and for each shot count build
the prompts (`fewshot.py`), generate greedily in batches of similar length, clean the answers (base mode: the first
line, since a base model goes on with the next example) and score them with the task's metric.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import torch

from mm1.config import ConfigError
from mm1.data.annotations import Sample, Skip
from mm1.data.processor import Encoded
from mm1.eval.fewshot import build_prompt, draw_support, encode, resolve_mode
from mm1.eval.metrics import METRICS
from mm1.eval.tasks import FILTERS, Task, TaskConfig, load_task
from mm1.model.mllm import MM1Model


@contextmanager
def inference(model: MM1Model):
    """Eval mode without gradients, then the model's own mode again (a training loop calls evaluation mid-run)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def generate_texts(model: MM1Model, encoded: Sequence[Encoded], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions, batched over left-padded prompts sorted by length (less padding per batch)."""
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    texts = [""] * len(encoded)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = model.processor.collate([encoded[i] for i in rows], padding_side="left")
        pixels = batch.get("pixel_values")
        out = model.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                             None if pixels is None else pixels.to(device), max_new_tokens=max_new_tokens,
                             temperature=0.0)
        for i, ids in zip(rows, out.tolist()):
            texts[i] = model.processor.decode(ids)
    return texts


def same_answer_shares(samples: Sequence[Sample], answers: Sequence[str]) -> dict[str, float]:
    """How much the answers depend on the image.  Over the questions asked of several images, the share of samples
    answered with that question's commonest answer, for the model (`same_answer`) and for the targets
    (`same_answer_refs`): a model that answers from the question alone scores 1.0, the targets show what the
    images call for.  Empty when no question repeats."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for sample, answer in zip(samples, answers):
        groups.setdefault(sample.question, []).append((answer, sample.target))
    repeated = [pairs for pairs in groups.values() if len(pairs) > 1]
    if not repeated:
        return {}
    n = sum(len(pairs) for pairs in repeated)

    def share(side: int) -> float:
        return sum(Counter(pair[side] for pair in pairs).most_common(1)[0][1] for pairs in repeated) / n

    return {"same_answer": share(0), "same_answer_refs": share(1)}


def run_task(model: MM1Model, task: Task, samples: Sequence[Sample], pool: Sequence[Sample], shots: int, mode: str,
             batch_size: int, seed: int) -> tuple[dict, list[dict], list[Skip]]:
    """One task at one shot count -> (result row, per-sample records, samples that could not be encoded)."""
    cfg, processor = task.config, model.processor
    mode = resolve_mode(mode, shots, processor.tokenizer)
    context = model.llm.config.max_position_embeddings
    kept, prompts, encoded, failed = [], [], [], []
    for sample in samples:
        prompt = build_prompt(cfg, sample, draw_support(sample, pool, shots, seed), mode)
        try:
            enc = encode(processor, prompt, cfg.frames)
        except ValueError as err:  # an image that does not decode, text that holds an <image> marker
            failed.append(Skip(cfg.data.annotations, f"sample {sample.id}", "cannot encode", str(err)))
            continue
        if len(enc.input_ids) + cfg.max_new_tokens > context:
            failed.append(Skip(cfg.data.annotations, f"sample {sample.id}", "prompt too long",
                               f"{len(enc.input_ids)} tokens + {cfg.max_new_tokens} new > context {context}"))
            continue
        kept.append(sample)
        prompts.append(prompt)
        encoded.append(enc)
    if not kept:
        raise ConfigError(f"task {task.name} ({shots}-shot): no sample could be evaluated; first problem: "
                          f"{failed[0].detail if failed else 'no samples'}")
    raw = generate_texts(model, encoded, cfg.max_new_tokens, batch_size)
    # A base model continues the document after its answer (the next example), so its answer is the first line.
    answers = [cfg.clean(FILTERS.get("first-line")(text) if mode == "base" else text.strip()) for text in raw]
    result = METRICS.get(cfg.metric)(answers, kept)
    row = {"task": task.name, "shots": shots, "mode": mode, "metric": cfg.metric, "score": result.score,
           "n": len(kept), "details": result.details | same_answer_shares(kept, answers)}
    records = [{"id": s.id, "question": s.question, "prediction": a, "raw": r, "answers": s.answers,
                "score": score, "support": [e.id for e in p.samples[:-1]], "prompt": p.text or p.messages}
               for s, p, a, r, score in zip(kept, prompts, answers, raw, result.per_sample)]
    return row, records, failed


def evaluate(model: MM1Model, tasks: Sequence[str | Path | TaskConfig], shots: Sequence[int] = (0,), *,
             mode: str = "auto", limit: int | None = None, batch_size: int = 8, seed: int = 0,
             data_root: str | Path | None = None, out_dir: str | Path | None = None, model_name: str | None = None,
             log: Callable[[str], None] | None = print) -> dict:
    """Score `model` on each task (built-in name, YAML path or TaskConfig) at each shot count.

    mode: auto | base | chat (see `mm1.eval.fewshot`).  limit: the first N samples of each task.  Returns the summary
    {"scores": {"vqav2/0-shot": 0.52, ...}, "results": [one row per task and shot count with details],
    "skipped": [every record left out, named], ...}; with `out_dir` also writes predictions (JSONL), summary.json,
    report.md and a plot.  The model's train/eval mode is restored, so a training loop can call this directly."""
    if mode not in ("auto", "base", "chat") or any(k < 0 for k in shots) or (limit is not None and limit < 1):
        raise ConfigError(f"need mode auto|base|chat, shots >= 0 and limit >= 1; got mode={mode!r}, "
                          f"shots={list(shots)}, limit={limit}")
    start = time.time()
    rows, skipped, predictions = [], [], {}
    with inference(model):
        for spec in tasks:
            task = load_task(spec, data_root)
            data = task.config.data.read(task.root)
            samples = data.samples[:limit] if limit else data.samples
            support = task.config.support.read(task.root) if task.config.support and any(shots) else None
            task_skips = data.skipped + (support.skipped if support else [])
            for k in shots:
                t0 = time.time()
                pool = support.samples if support else data.samples
                row, records, failed = run_task(model, task, samples, pool, k, mode, batch_size, seed)
                row["skipped"] = dict(Counter(s.reason for s in task_skips + failed))
                row["seconds"] = round(time.time() - t0, 2)
                rows.append(row)
                predictions[f"{task.name}_{k}shot"] = records
                skipped += [{"task": task.name, "shots": k, **asdict(s)} for s in failed]
                if log:
                    log(f"{task.name} {k}-shot ({row['mode']}): {row['metric']} {row['score']:.4f} on {row['n']} "
                        f"samples in {row['seconds']}s" + (f"; skipped {row['skipped']}" if row["skipped"] else ""))
            skipped += [{"task": task.name, "shots": None, **asdict(s)} for s in task_skips]
    settings = {"shots": list(shots), "mode": mode, "limit": limit, "seed": seed, "batch_size": batch_size}
    summary = {"model": model_name or type(model).__name__, "settings": settings,
               "scores": {f"{r['task']}/{r['shots']}-shot": r["score"] for r in rows},
               "results": rows, "skipped": skipped, "seconds": round(time.time() - start, 2)}
    if out_dir is not None:
        from mm1.eval.report import write_report  # here: matplotlib is needed for reports only, not in training

        write_report(summary, predictions, out_dir)
    return summary

