"""Packed vs padded batches on a realistic length mix: useful (non-padding) token fraction and useful tokens/s.

Samples: the synthetic world (`mm1.data.world`, small) mixed as in MM1 pre-training (45% captions of one image,
45% interleaved documents with 2-4 images and several hundred tokens, 10% text), encoded by the model's processor.
Each step takes `--seqs` sequences from `Packer` (seq_len 1024); the padded step holds exactly the same samples,
right-padded to the longest (`Processor.collate`).  They are timed alternately with `optimizer_step`; the packed
batch twice, with the LLM's default per-sample attention and with transformers' sdpa (a dense block-diagonal mask
over the whole row), `llm.attention: sdpa` in a recipe.
Targets (issue #9): packed >= 95% useful tokens and >= 1.5x the padded useful tokens/s.
"""

from __future__ import annotations

import time

from common import Bench, World, build_model, cli, make_config, median, python_profile, table, torch_profile


def fitted(world: World, processor, seq_len: int):
    from mm1.data.mixture import Mixture, encode_record
    from mm1.data.packing import fit
    from mm1.data.readers import SkipStats

    stats = SkipStats()
    mixture = Mixture(world.sources(), seed=0, encode=lambda r: encode_record(processor, r), stats=stats)
    return (s for s in map(lambda s: fit(s, seq_len, processor.image_token_id, stats), mixture) if s is not None)


def steps(packer, samples, seqs: int):
    """(packed sequences, their samples) per step, forever."""
    while True:
        sequences = [packer.next_sequence(samples) for _ in range(seqs)]
        yield sequences, [s for seq in sequences for s in seq]


def main() -> None:
    p = cli(__doc__)
    p.add_argument("--model", default="small", choices=["tiny", "small", "100m"],
                   help="the model whose processor makes the samples and whose steps are timed (common.CONFIGS)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--seqs", type=int, default=2, help="packed sequences per step")
    args = p.parse_args()
    if args.quick:
        args.seqs = 1
    bench = Bench("packing" if args.model == "small" else f"packing-{args.model}", args)
    from mm1.data.packing import Packer
    from mm1.model.llm import PER_SAMPLE_SDPA
    from mm1.train.optim import build_optimizer
    from mm1.train.trainer import optimizer_step

    world = World()
    tokenizer = world.tokenizer(4096)
    cfg = make_config(args.model, tokenizer)
    model = build_model(cfg, tokenizer).train()
    processor = model.processor
    packer = Packer(args.seq_len, 16, processor)
    stream = steps(packer, fitted(world, processor, args.seq_len), args.seqs)

    # 1. Token efficiency over many steps (data only).
    n_eff = 10 if args.quick else 50
    start = time.perf_counter()
    groups = [next(stream) for _ in range(n_eff)]
    data_s = (time.perf_counter() - start) / n_eff
    lengths = [[len(s.input_ids) for s in samples] for _, samples in groups]
    useful = sum(map(sum, lengths))
    padded_slots = sum(len(ls) * max(ls) for ls in lengths)
    efficiency = {"packed": useful / (n_eff * args.seqs * args.seq_len), "padded": useful / padded_slots}
    all_lengths = sorted(x for ls in lengths for x in ls)

    # 2. Training steps on the same samples, packed and padded, alternately.
    stage = world.stage(seq_len=args.seq_len, batch_size=args.seqs)
    optimizer = build_optimizer(model, stage)
    n_timed, warmup = (1, 1) if args.quick else (3, 1)
    # arm -> (batching, the LLM's attention); padded batches carry a mask, which sends either attention to sdpa
    arms = {"packed": ("packed", PER_SAMPLE_SDPA), "packed, dense mask": ("packed", "sdpa"),
            "padded": ("padded", PER_SAMPLE_SDPA)}
    times = {arm: [] for arm in arms}
    useful_per_step = []
    for i, (sequences, samples) in enumerate(stream):
        if i == warmup + n_timed:
            break
        batches = {"packed": packer.collate(sequences), "padded": processor.collate(samples)}
        for arm, (batching, attention) in arms.items():
            model.llm.set_attn_implementation(attention)
            t = time.perf_counter()
            optimizer_step(model, [batches[batching]], optimizer, stage)
            if i >= warmup:
                times[arm].append(time.perf_counter() - t)
        if i >= warmup:
            useful_per_step.append(sum(len(s.input_ids) for s in samples))
    if args.profile:
        for arm, (batching, attention) in arms.items():
            model.llm.set_attn_implementation(attention)
            torch_profile(lambda: optimizer_step(model, [batches[batching]], optimizer, stage), bench.name,
                          f"{args.model} {arm} step ({len(samples)} samples)")
        python_profile(lambda: [next(stream) for _ in range(10)], bench.name, "packing 10 steps of samples (data)")

    by_arm = {arm: {"batching": arm, "useful token fraction": efficiency[batching], "median step s": median(times[arm]),
                  "useful tokens/s": sum(useful_per_step) / sum(times[arm])}
            for arm, (batching, _) in arms.items()}
    speedup = by_arm["packed"]["useful tokens/s"] / by_arm["padded"]["useful tokens/s"]
    rows = list(by_arm.values())
    targets = {"packed useful fraction >= 0.95": efficiency["packed"] >= 0.95, "speedup >= 1.5": speedup >= 1.5}
    mix = {"samples": len(all_lengths), "samples/step": len(all_lengths) / n_eff,
           "min len": all_lengths[0], "median len": median(all_lengths), "max len": all_lengths[-1],
           "data s/step (encode+pack)": data_s}
    tables = [table([mix], f"length mix over {n_eff} steps ({args.seqs} x {args.seq_len}-token sequences)"),
              table(rows, f"{args.model} model; packed / padded useful tokens/s = {speedup:.2f}x; targets: {targets}")]
    bench.save({"model": args.model, "seq_len": args.seq_len, "seqs_per_step": args.seqs, "mix": mix, "rows": rows,
                "speedup": speedup, "targets_met": targets, "step_times": times}, tables)


if __name__ == "__main__":
    main()
