"""Inference: ours (`MM1Model.generate`) vs transformers' `LlavaForConditionalGeneration.generate` holding the same
weights, and image preprocessing with dynamic splitting.

1. Generation.  A random-init MLP-connector model (`--model`: 100m, i.e. ViT 12x768 at 224/16 -> 2-layer MLP (196
   tokens per image) -> Llama 12x768, vocab 32k; `--quick`: the small config) is saved, exported with
   `mm1.export.export_llava` and loaded back by both libraries.  Both get the same left-padded input ids, attention
   mask and pixel values (our processor's), greedy decoding, `max_new_tokens`, EOS disabled so every row runs the
   full length.  A third row runs ours with the LLM's logits limited to the last position (`logits_to_keep=1`,
   patched onto the instance here, src/ unchanged): the proposed fix, measured.  Time to first token (TTFT: call ->
   first new token, i.e. encoder + prefill) and decode tokens/s (tokens after the first / time after the first) at
   batch 1 and 8, the three alternately, median of `--repeats` after a warm-up; the greedy tokens must be equal.
2. Preprocessing.  scikit-image's sample images (page, astronaut, chelsea, coffee, text) decoded and made into views
   (MM1.5 dynamic splitting, 4..9 tiles + overview) at 378 and 672 px; images/s for the views alone and for the
   whole `Processor.encode_chat` (views + placeholder expansion + tokenisation).
"""

from __future__ import annotations

import functools
import random
import tempfile
import time
from pathlib import Path

import torch

from common import (Bench, World, build_model, cli, make_config, median, python_profile, synthetic_image, table,
                    timed, torch_profile)

QUESTIONS = ["What colour is the circle?", "Describe the image.", "How many shapes are there, and which one is the "
             "largest?", "Is there a square on the left?", "What is written here?", "Which shape is above the "
             "others, and what colour is the background?", "Count the red shapes.", "Caption this picture briefly."]
IMAGES = ["page.png", "astronaut.png", "chelsea.png", "coffee.png", "text.png"]


class FirstToken:
    """A transformers streamer (its first `put` is the prompt) and our `on_tokens`: when the first new token came."""

    def __init__(self):
        self.start, self.first, self.puts = time.perf_counter(), None, 0

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass

    def __call__(self, tokens) -> bool:  # ours
        if self.first is None:
            self.first = time.perf_counter()
        return False


def prompts(model, batch: int) -> dict:
    rng = random.Random(batch)
    encoded = [model.processor.encode_chat(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n" + QUESTIONS[i % 8]}]}],
        [synthetic_image(rng, rng.randint(160, 400), rng.randint(160, 400))], add_generation_prompt=True)
        for i in range(batch)]
    return model.processor.collate(encoded, padding_side="left")


def run_ours(model, batch: dict, new: int, keep_last_logits: bool = False):
    """`keep_last_logits`: the LLM computes logits for the last position only (`logits_to_keep=1`, what
    transformers' generate asks for), patched onto this instance for the call: the proposed fix, measured."""
    if keep_last_logits:
        model.llm.forward = functools.partial(type(model.llm).forward, model.llm, logits_to_keep=1)
    try:
        timer = FirstToken()
        out = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=new,
                             temperature=0.0, eos_token_id=-1, on_tokens=timer)
    finally:
        model.llm.__dict__.pop("forward", None)
    return out, timer.first - timer.start, time.perf_counter() - timer.start


@torch.no_grad()
def run_theirs(llava, batch: dict, new: int):
    timer = FirstToken()
    out = llava.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         pixel_values=batch["pixel_values"], max_new_tokens=new, do_sample=False, streamer=timer)
    return out[:, batch["input_ids"].shape[1]:], timer.first - timer.start, time.perf_counter() - timer.start


def generation(args, bench: Bench) -> tuple[list[dict], dict]:
    from transformers import LlavaForConditionalGeneration

    from mm1.export import export_llava
    from mm1.model.mllm import MM1Model

    world = World()
    tokenizer = world.tokenizer(4096)
    cfg = make_config(args.model, tokenizer, overrides=["model.connector.type=mlp", "model.connector.mlp_depth=2"])
    with tempfile.TemporaryDirectory() as tmp:
        build_model(cfg, tokenizer).save_pretrained(Path(tmp) / "mm1")
        export_llava(Path(tmp) / "mm1", Path(tmp) / "llava")
        ours = MM1Model.from_pretrained(Path(tmp) / "mm1")
        llava = LlavaForConditionalGeneration.from_pretrained(Path(tmp) / "llava").eval()
    llava.generation_config.eos_token_id = None  # as eos_token_id=-1 for ours: every row runs max_new_tokens
    llava.generation_config.pad_token_id = tokenizer.pad_token_id
    rows, equal = [], {}
    for batch_size in (1, 8):
        batch = prompts(ours, batch_size)
        runs = {"ours": lambda: run_ours(ours, batch, args.new_tokens),
                "transformers": lambda: run_theirs(llava, batch, args.new_tokens),
                "ours + logits_to_keep=1 (proposed fix)": lambda: run_ours(ours, batch, args.new_tokens, True)}
        results = {k: [] for k in runs}
        tokens = {k: fn()[0] for k, fn in runs.items()}  # warm-up, and the tokens to compare
        equal[batch_size] = {"equal": all(torch.equal(tokens["ours"], t) for t in tokens.values()),
                             "matching tokens": int((tokens["ours"] == tokens["transformers"]).sum()),
                             "tokens": tokens["ours"].numel()}
        for _ in range(args.repeats):  # alternately, so both see the same machine
            for name, fn in runs.items():
                results[name].append(fn()[1:])
        for name, res in results.items():
            ttft, total = median([r[0] for r in res]), median([r[1] for r in res])
            rows.append({"batch": batch_size, "impl": name, "prompt tokens": batch["input_ids"].shape[1],
                         "TTFT s": ttft, "total s": total,
                         "decode tokens/s": batch_size * (args.new_tokens - 1) / (total - ttft),
                         "end-to-end tokens/s": batch_size * args.new_tokens / total})
        ours_rows, theirs_row = (rows[-3], rows[-1]), rows[-2]
        for row in ours_rows:
            for key in ("TTFT s", "decode tokens/s", "end-to-end tokens/s"):
                row[f"ratio {key}"] = row[key] / theirs_row[key]
        if args.profile:
            for name, fn in runs.items():
                torch_profile(fn, bench.name, f"generate {name}, batch {batch_size}, {args.new_tokens} new tokens")
    return rows, equal


def preprocessing(args, bench: Bench) -> list[dict]:
    import skimage

    from mm1.config import ImageConfig, ModelConfig, SplitConfig, TokenizerConfig
    from mm1.data.image import ViewMaker, load_image
    from mm1.data.processor import Processor
    from mm1.data.tokenizer import build_tokenizer

    folder = Path(skimage.__file__).parent / "data"
    files = [(folder / name).read_bytes() for name in IMAGES]
    tokenizer = build_tokenizer(TokenizerConfig(vocab_size=300), QUESTIONS * 10)
    rows = []
    for size in (378, 672):
        image_cfg = ImageConfig(size=size, split=SplitConfig(enabled=True, min_tiles=4, max_tiles=9))
        model_cfg = ModelConfig()  # ViT-H/14 at 378 px, C-Abstractor 144 tokens (the MM1 recipes)
        views = ViewMaker(image_cfg, model_cfg.encoder)
        processor = Processor(tokenizer, model_cfg, image_cfg)
        n_views = [views(load_image(data, image_cfg.max_pixels), 1).pixels.shape[0] for data in files]
        message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nRead it."}]}]
        paths = {"decode + views": lambda: [views(load_image(data, image_cfg.max_pixels), 1) for data in files],
                 "Processor.encode_chat": lambda: [processor.encode_chat(message, [data]) for data in files]}
        repeats = 1 if args.quick else 3
        for name, fn in paths.items():
            best = min(timed(fn, repeats, warmup=1))
            rows.append({"view px": size, "path": name, "views per image (5 images)": "/".join(map(str, n_views)),
                         "ms per image": best / len(files) * 1e3, "images/s": len(files) / best})
            if args.profile:
                python_profile(fn, bench.name, f"preprocessing {name} at {size} px, 5 images")
    return rows


def main() -> None:
    p = cli(__doc__)
    p.add_argument("--model", default="100m", choices=["small", "100m"])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.quick:
        args.model, args.new_tokens, args.repeats = "small", 16, 1
    bench = Bench("inference", args)
    gen_rows, equal = generation(args, bench)
    pre_rows = preprocessing(args, bench)
    tables = [table(gen_rows, f"generation, {args.model} MLP-connector model, greedy, {args.new_tokens} new tokens; "
                              f"ratio = row / transformers; greedy tokens equal: {equal}"),
              table(pre_rows, "image preprocessing with dynamic splitting (4..9 tiles + overview)")]
    b1, b8 = ([r for r in gen_rows if r["batch"] == b and r["impl"] == "ours"][0] for b in (1, 8))
    targets = {"batch 1 no slower (end-to-end)": b1["ratio end-to-end tokens/s"] >= 1.0,
               "batch 8 faster (end-to-end)": b8["ratio end-to-end tokens/s"] > 1.0,
               "greedy tokens equal": all(v["equal"] for v in equal.values())}
    print(f"targets: {targets}")
    bench.save({"model": args.model, "new_tokens": args.new_tokens, "generation": gen_rows, "tokens_equal": equal,
                "preprocessing": pre_rows, "targets_met": targets}, tables)


if __name__ == "__main__":
    main()
