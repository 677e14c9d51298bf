"""GPU: bf16 FSDP2 training MFU of a 1B-class model and inference tokens/s (for a session with an H100/H200).

NOT RUN YET: no GPU was lent to the session that wrote it; it exits with an error without CUDA.  `--cpu-smoke`
runs the same code path on this CPU with the tiny recipe model (gloo, one step, no timing, nothing written), to
check the script, not to measure anything.

Training: recipes/mm1.5/1b.yaml's shapes (ViT-H/14 at 378 px -> C-Abstractor 144 tokens, depth 3 -> Llama 22x2048,
32k vocabulary; 1.85B parameters, random init), its pre-training stage's settings (packed 4096-token sequences,
batch 2 per GPU, bf16, activation checkpointing, AdamW) on the synthetic world's 45/45/10 mixture; one process with
a one-rank process group, `fully_shard` per transformer block plus the root (as `mm1.train.distributed.wrap`) with
`MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)`.  MFU = `mm1.plan` FLOPs / step time / peak, for
the datasheet dense bf16 peak (`mm1.plan.H100_BF16_DENSE`) and for a bf16 8192^3 matmul measured in the run.
Inference: the same model in bf16, `MM1Model.generate` greedy at batch 1 and 8 (prompts as inference.py), TTFT and
decode tokens/s.

    python benchmarks/gpu.py [--quick]            # on a machine with a CUDA GPU
"""

from __future__ import annotations

import os
import sys
import time

import torch

from common import (HOST, Bench, World, build_model, cli, free_port, make_config, matmul_peak, median, n_params,
                    plan_flops, table)


def init_single_process_group(backend: str) -> None:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", HOST)
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=0, world_size=1)


def shard(model, bf16: bool) -> None:
    """What `mm1.train.distributed.wrap` does for fsdp2 (it leaves a single process unwrapped, so it is spelled out)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from mm1.train.distributed import decoder_layers

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for block in decoder_layers(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def train(args, world: World, device: torch.device, name: str) -> dict:
    from mm1.data.mixture import StageData
    from mm1.plan import H100_BF16_DENSE
    from mm1.train.distributed import World as Ranks
    from mm1.train.optim import build_optimizer
    from mm1.train.trainer import optimizer_step

    tokenizer = world.tokenizer(4096)
    cfg = make_config(name, tokenizer)
    model = build_model(cfg, tokenizer).train()
    seq_len, batch = (4096, 2) if name == "1b" else (512, 2)
    stage = world.stage(seq_len=seq_len, batch_size=batch, bf16=True, activation_checkpointing=True)
    model.encoder.vision.activation_checkpointing_enable()  # as mm1 train does for activation_checkpointing: true
    model.llm.activation_checkpointing_enable()
    model.to(device)
    shard(model, bf16=True)
    optimizer = build_optimizer(model, stage)
    data = StageData(stage, model.processor, seed=0)
    warmup, steps = (1, 1) if args.cpu_smoke else (2, 3) if args.quick else (3, 10)
    batches = [next(data) for _ in range(warmup + steps)]
    ranks = Ranks(device=device)
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i, b in enumerate(batches):
        sync(device)
        start = time.perf_counter()
        optimizer_step(model, [b], optimizer, stage, ranks)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    views = sum(b["pixel_values"].shape[0] for b in batches if "pixel_values" in b) / (len(batches) * batch)
    flops = plan_flops(cfg, stage, views)
    step_s = median(times)
    peak = matmul_peak(8192, 10, torch.bfloat16) if device.type == "cuda" else matmul_peak(1024, 2, torch.bfloat16)
    return {"model": name, "params_B": n_params(model) / 1e9, "seq_len": seq_len, "seqs/step": batch,
            "views/seq": views, "step s": step_s, "tokens/s": seq_len * batch / step_s,
            "TFLOP/step (mm1.plan)": flops["total"] / 1e12, "achieved TFLOP/s": flops["total"] / step_s / 1e12,
            "MFU vs 989 TFLOP/s": flops["total"] / step_s / H100_BF16_DENSE,
            "measured bf16 mm TFLOP/s": peak / 1e12, "MFU vs measured mm": flops["total"] / step_s / peak,
            "peak memory GB": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None}


def inference(args, world: World, device: torch.device, name: str) -> list[dict]:
    from inference import prompts

    tokenizer = world.tokenizer(4096)
    model = build_model(make_config(name, tokenizer), tokenizer).eval().to(device, torch.bfloat16)
    new = 8 if args.cpu_smoke else 64
    rows = []
    for batch_size in (1, 8):
        batch = {k: v.to(device) for k, v in prompts(model, batch_size).items()}
        batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
        results = []
        for _ in range(1 + (1 if args.cpu_smoke else 3)):
            first = []

            def on_tokens(tokens):
                if not first:
                    tokens.cpu()  # waits for the device
                    first.append(time.perf_counter())

            sync(device)
            start = time.perf_counter()
            model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=new,
                           eos_token_id=-1, on_tokens=on_tokens)
            sync(device)
            results.append((first[0] - start, time.perf_counter() - start))
        ttft, total = median([r[0] for r in results[1:]]), median([r[1] for r in results[1:]])
        rows.append({"batch": batch_size, "prompt tokens": batch["input_ids"].shape[1], "TTFT s": ttft,
                     "decode tokens/s": batch_size * (new - 1) / (total - ttft), "end-to-end tokens/s":
                     batch_size * new / total})
    return rows


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = cli(__doc__)
    p.add_argument("--cpu-smoke", action="store_true", help="check the code path on CPU with the tiny model")
    args = p.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        sys.exit("gpu.py needs a CUDA GPU (torch.cuda.is_available() is False on this machine); nothing measured. "
                 "Run it in a session with a lent H100/H200, or use --cpu-smoke to check the code path here.")
    device = torch.device("cuda" if not args.cpu_smoke else "cpu")
    name = "tiny" if args.cpu_smoke else "1b"
    init_single_process_group("nccl" if device.type == "cuda" else "gloo")
    bench = Bench("gpu", args) if not args.cpu_smoke else None
    world = World()
    train_row = train(args, world, device, name)
    infer_rows = inference(args, world, device, name)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke only, not a measurement)"
    tables = [table([train_row], f"FSDP2 bf16 training, one {device_name}"),
              table(infer_rows, f"generate, bf16, {device_name}")]
    if bench is not None:
        bench.save({"device": device_name, "train": train_row, "inference": infer_rows}, tables)
    import torch.distributed as dist

    dist.destroy_process_group()


if __name__ == "__main__":
    main()
