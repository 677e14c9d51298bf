"""PyTorch's own distributed stack: torchrun environment, process group, DDP or FSDP2 (`fully_shard`)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from mm1.config import DistributedConfig


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def init_world(cfg: DistributedConfig) -> World:
    """A process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(cfg.backend or ("nccl" if device.type == "cuda" else "gloo"))
    return World(dist.get_rank(), dist.get_world_size(), device)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of encoder and LLM: FSDP2's sharding units (an MoE block keeps its experts).  A
    contrastive stage's module has an encoder and no LLM."""
    llm = getattr(model, "llm", None)
    return list(model.encoder.vision.encoder.layers) + (list(llm.model.layers) if llm is not None else [])


def wrap(model: nn.Module, cfg: DistributedConfig, world: World, bf16: bool) -> nn.Module:
    """DDP, or FSDP2 with one unit per transformer block plus the root.  Returns the module to call."""
    if not world.active:
        return model
    if cfg.strategy == "ddp":
        return DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in decoder_layers(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def all_reduce_sum(value: torch.Tensor, world: World) -> torch.Tensor:
    if world.active:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()
