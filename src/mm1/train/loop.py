"""The training loop of one stage: forward, backward, clip, step, schedule; a non-finite loss stops the run."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from mm1.config import StageConfig
from mm1.model.mllm import MM1Model
from mm1.train.optim import build_optimizer, build_scheduler, format_trainable, set_trainable


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class StageResult:
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0


def train_step(model: MM1Model, batch: dict, optimizer, stage: StageConfig) -> tuple[float, int]:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if stage.bf16 else nullcontext()
    with autocast:
        out = model(**batch)
    loss = out.loss
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"stage {stage.name}: loss is {loss.item()}; stopping before the update")
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, stage.grad_clip)
    if not torch.isfinite(grad_norm):
        raise NonFiniteLossError(f"stage {stage.name}: gradient norm is {grad_norm.item()}; stopping")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    # Padded batches count their real tokens; packed ones count every slot (their efficiency is logged apart).
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
    return loss.item(), tokens


def train_stage(model: MM1Model, stage: StageConfig, batches: Iterator[dict],
                log: Callable[[str], None] = print, progress: bool = True) -> StageResult:
    log(f"stage {stage.name}: {stage.steps} steps, batch {stage.batch_size}, peak lr {stage.lr:g}\n"
        + format_trainable(set_trainable(model, stage)))
    model.train()
    optimizer = build_optimizer(model, stage)
    scheduler = build_scheduler(optimizer, stage)
    result = StageResult()
    start = time.perf_counter()
    bar = tqdm(range(stage.steps), desc=stage.name, disable=not progress, dynamic_ncols=True)
    for _ in bar:
        loss, tokens = train_step(model, next(batches), optimizer, stage)
        scheduler.step()
        result.losses.append(loss)
        result.tokens += tokens
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{result.tokens / max(elapsed, 1e-9):.0f}")
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
