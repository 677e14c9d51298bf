"""Full training state with `torch.distributed.checkpoint`: atomic, keep-last-N, resumable, reshardable.

Layout: `<stage dir>/checkpoints/step-00000042/` holds the DCP shards of model and optimizer, one
`extra-rank<r>.pt` per rank (scheduler, data position, RNG, step; plain tensors and containers, loaded with
`weights_only=True`) and `meta.json`.  A checkpoint is written under `step-N.tmp/` and renamed only when complete,
so a crash mid-save leaves the previous checkpoint as the latest loadable one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from mm1.train.distributed import World, barrier

STEP_DIR = re.compile(r"^step-(\d{8})$")


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if STEP_DIR.match(p.name) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: p.name)


def save(folder: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict,
         world: World, keep: int) -> Path:
    final = folder / f"step-{step:08d}"
    tmp = folder / f"step-{step:08d}.tmp"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    model_state, optim_state = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # DCP warns that a single process saves alone, which is what we want
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    torch.save(extra, tmp / f"extra-rank{world.rank}.pt")
    barrier(world)
    if world.is_main:
        meta = {"step": step, "world_size": world.size}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, final)  # atomic: readers see either no checkpoint or a complete one
        for old in checkpoints(folder)[:-keep]:
            shutil.rmtree(old)
    barrier(world)
    return final


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, world: World) -> tuple[dict, bool]:
    """Restore model and optimizer; returns (extra state, whether the data position is exact).

    DCP reshards model and optimizer when the number of processes changed; each rank's data position cannot be
    carried over then (records are split by rank), so the data streams restart and that is reported."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    same_world = json.loads((path / "meta.json").read_text())["world_size"] == world.size
    extra = torch.load(path / f"extra-rank{world.rank if same_world else 0}.pt", weights_only=True)
    return extra, same_world
