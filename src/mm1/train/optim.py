"""Per-stage trainability, per-module learning rates, and MM1's schedule (linear warm-up, cosine to a floor)."""

from __future__ import annotations

import math

import torch
from torch import nn

from mm1.config import StageConfig

MODULES = ("encoder", "connector", "llm")


def set_trainable(model: nn.Module, stage: StageConfig) -> list[tuple[str, str, int]]:
    """Freeze the modules the stage does not train; returns (module, state, parameters) rows for the log."""
    rows = []
    for name in MODULES:
        module = getattr(model, name)
        train = name in stage.trainable
        module.requires_grad_(train)
        rows.append((name, "TRAINABLE" if train else "FROZEN", sum(p.numel() for p in module.parameters())))
    return rows


def format_trainable(rows: list[tuple[str, str, int]]) -> str:
    return "\n".join(f"  [{state:9}] {name:9} {count:>12,} parameters" for name, state, count in rows)


OPTIMIZERS = {
    "adamw": lambda groups: torch.optim.AdamW(groups, betas=(0.9, 0.95)),
    # MM1.5's choice; PyTorch's own implementation (factored second moments, decoupled weight decay).
    "adafactor": lambda groups: torch.optim.Adafactor(groups),
}


def build_optimizer(model: nn.Module, stage: StageConfig, beside: nn.Module | None = None) -> torch.optim.Optimizer:
    """One parameter group per (module, decay) pair; norms, biases and other 1-D params skip weight decay.
    `beside`: parameters trained with the model's modules at the stage's lr (a contrastive stage's text tower)."""
    groups = []
    named = [(name, getattr(model, name)) for name in stage.trainable] + ([("beside", beside)] if beside else [])
    for name, module in named:
        params = [p for p in module.parameters() if p.requires_grad]
        lr = stage.lr * stage.lr_multipliers.get(name, 1.0)
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups += [{"params": decay, "lr": lr, "weight_decay": stage.weight_decay, "module": name},
                   {"params": no_decay, "lr": lr, "weight_decay": 0.0, "module": name}]
    return OPTIMIZERS[stage.optimizer]([g for g in groups if g["params"]])


def lr_factor(step: int, stage: StageConfig) -> float:
    """Multiplier of the peak LR at `step`: linear warm-up, then cosine decay to `min_lr_ratio`."""
    if step < stage.warmup_steps:
        return (step + 1) / stage.warmup_steps
    progress = (step - stage.warmup_steps) / max(1, stage.steps - stage.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, stage))
