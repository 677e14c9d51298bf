"""Training throughput on this CPU: the tiny recipe model and a ~100M-per-tower model, fp32 and bf16 autocast.

Batches come from the real pipeline (`StageData`: the synthetic world's captions / interleaved documents / text at
45/45/10, encoded by the model's processor, packed by `Packer`), are built before timing (their build time is
reported separately: `mm1 train` builds them inline), and each step is `mm1.train.trainer.optimizer_step` with
AdamW.  FLOPs per sample come from `mm1.plan`'s accounting (model FLOPs: 6 x parameters x tokens for each trained
module, attention scores not counted) at the measured images per sequence; MFU = achieved FLOP/s / the fp32
`torch.mm` peak measured in the same run (and, for bf16 autocast, / the bf16 `torch.mm` peak too).  With --profile,
one step of each model and precision is profiled (torch.profiler) and, in fp32, counted by FlopCounterMode.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import (Bench, World, build_model, cli, make_config, matmul_peak, median, n_params, plan_flops, table,
                    torch_profile, write_profile)

# model -> (tokenizer vocab, seq_len, packed sequences per step, warm-up steps, timed steps, quick timed steps)
SETTINGS = {"tiny": (1024, 512, 4, 2, 10, 5), "100m": (4096, 1024, 1, 1, 2, 1)}


def measure(name: str, world: World, bf16: bool, quick: bool, peak: dict, profile: bool) -> dict:
    from mm1.data.mixture import StageData
    from mm1.train.optim import build_optimizer
    from mm1.train.trainer import optimizer_step

    vocab, seq_len, seqs, warmup, steps, quick_steps = SETTINGS[name]
    if quick and name == "100m":
        seq_len = 256  # --quick: a smoke run of the 100M model on short sequences
    steps = quick_steps if quick else steps
    tokenizer = world.tokenizer(vocab)
    cfg = make_config(name, tokenizer)
    model = build_model(cfg, tokenizer).train()
    stage = world.stage(seq_len=seq_len, batch_size=seqs, bf16=bf16)
    data = StageData(stage, model.processor, seed=0)
    start = time.perf_counter()
    batches = [next(data) for _ in range(warmup + steps)]
    data_s = (time.perf_counter() - start) / len(batches)
    stats = data.packer.stats
    optimizer = build_optimizer(model, stage)
    for batch in batches[:warmup]:
        optimizer_step(model, [batch], optimizer, stage)
    times = []
    for batch in batches[warmup:]:
        t = time.perf_counter()
        optimizer_step(model, [batch], optimizer, stage)
        times.append(time.perf_counter() - t)
    label = f"{name} {'bf16 autocast' if bf16 else 'fp32'}, one optimizer step"
    if profile:
        torch_profile(lambda: optimizer_step(model, [batches[-1]], optimizer, stage), "train_throughput", label)
        if not bf16:  # cross-check of the plan's accounting: every matmul/conv FLOP torch runs, attention included
            with FlopCounterMode(display=False) as counter:
                optimizer_step(model, [batches[-1]], optimizer, stage)
            views = batches[-1]["pixel_values"].shape[0] if "pixel_values" in batches[-1] else 0
            planned = plan_flops(cfg, stage, views / seqs)["total"]
            write_profile("train_throughput", label, f"FlopCounterMode: {counter.get_total_flops() / 1e9:.1f} GFLOP "
                          f"in this step; mm1.plan: {planned / 1e9:.1f} GFLOP")
    step_s = median(times)
    samples_per_step = stats.samples / stats.sequences * seqs
    views_per_sequence = sum(b["pixel_values"].shape[0] for b in batches if "pixel_values" in b) / (len(batches) * seqs)
    flops = plan_flops(cfg, stage, views_per_sequence)
    achieved = flops["total"] / step_s
    return {
        "model": name, "precision": "bf16 autocast" if bf16 else "fp32",
        "params_M": round(n_params(model) / 1e6, 1), "seq_len": seq_len, "seqs/step": seqs,
        "samples/step": round(samples_per_step, 2), "views/seq": round(views_per_sequence, 2),
        "step_s": step_s, "tokens/s (useful)": stats.efficiency(seq_len) * seq_len * seqs / step_s,
        "tokens/s (incl. pad)": seq_len * seqs / step_s, "samples/s": samples_per_step / step_s,
        "GFLOP/sample enc": flops["encoder"] / samples_per_step / 1e9,
        "GFLOP/sample conn": flops["connector"] / samples_per_step / 1e9,
        "GFLOP/sample LLM": flops["llm"] / samples_per_step / 1e9,
        "achieved GFLOP/s": achieved / 1e9, "MFU (fp32 peak)": achieved / peak["fp32"],
        "MFU (bf16 peak)": achieved / peak["bf16"] if bf16 else "",
        "data s/batch": data_s, "step times": times,
    }


def main() -> None:
    p = cli(__doc__)
    p.add_argument("--models", default="tiny,100m")
    args = p.parse_args()
    bench = Bench("train_throughput", args)
    print(f"torch threads: {torch.get_num_threads()}")
    peak = {"fp32": matmul_peak(2048, 5, torch.float32), "bf16": matmul_peak(2048, 5, torch.bfloat16)}
    world = World()
    rows = [measure(name, world, bf16, args.quick, peak, args.profile)
            for name in args.models.split(",") for bf16 in (False, True)]
    for name in args.models.split(","):
        fp32, bf16 = [r for r in rows if r["model"] == name]
        bf16["bf16 / fp32 step time"] = bf16["step_s"] / fp32["step_s"]
    tables = [table([{"dtype": k, "2048^3 torch.mm GFLOP/s (best of 5)": v / 1e9} for k, v in peak.items()],
                    "matmul peak measured in this run"),
              table([{k: v for k, v in r.items() if k != "step times"} for r in rows], "training throughput")]
    bench.save({"peak_flops": peak, "flop_accounting": "mm1.plan (model FLOPs, attention scores not counted)",
                "rows": rows}, tables)


if __name__ == "__main__":
    main()
