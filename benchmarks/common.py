"""Shared by the benchmark scripts: command line, machine facts, the load-average gate, timing, tables, JSON,
profiles, and the models and data every script builds (so no script copies another).

Every script: `python benchmarks/NAME.py [--quick] [--profile]` prints a markdown table and writes
`benchmarks/results/NAME.json` (machine, date, command, load average, numbers).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
HOST = "127.0.0.1"  # servers and process groups the benchmarks start listen on loopback only
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


# ---- command line, machine, load ------------------------------------------------------------------------------------
def cli(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (about a minute at most)")
    p.add_argument("--profile", action="store_true",
                   help="also profile the measured path into results/NAME-profile.txt")
    p.add_argument("--max-load", type=float, default=1.5, help="wait until the 1-minute load average is at most this")
    p.add_argument("--max-wait", type=float, default=600, help="seconds to wait for that at most (then run anyway)")
    return p


def machine() -> dict:
    lscpu = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout
                 .splitlines() if ":" in line)
    lscpu = {k.strip(): v.strip() for k, v in lscpu.items()}
    flags = set(lscpu.get("Flags", "").split())
    import transformers

    return {"cpu": lscpu.get("Model name"), "cpus": int(lscpu.get("CPU(s)", os.cpu_count() or 0)),
            "flags": {f: f in flags for f in FLAGS}, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_quiet(max_load: float, max_wait: float, poll: float = 60) -> dict:
    """Wait (polling every `poll` s, at most `max_wait` s) for the 1-minute load average to reach `max_load`."""
    start = time.monotonic()
    while (load := os.getloadavg()[0]) > max_load and time.monotonic() - start < max_wait:
        print(f"[bench] 1-min load average {load:.2f} > {max_load}: waiting", file=sys.stderr, flush=True)
        time.sleep(min(poll, max(1.0, max_wait - (time.monotonic() - start))))
    return {"load_1min_at_start": round(load, 2), "waited_s": round(time.monotonic() - start, 1),
            "quiet_at_start": load <= max_load}


class LoadSampler:
    """Samples the 1-minute load average every few seconds while a benchmark runs (our own threads count too)."""

    def __init__(self, every: float = 5.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._stop.set()
        s = self.samples or [os.getloadavg()[0]]
        return {"load_1min_during_mean": round(sum(s) / len(s), 2), "load_1min_during_max": round(max(s), 2)}


class Bench:
    """One benchmark run: waits for a quiet machine, samples the load, writes results/NAME.json."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        if getattr(args, "profile", False):
            (RESULTS / f"{name}-profile.txt").unlink(missing_ok=True)
        self.load = wait_for_quiet(args.max_load, args.max_wait)
        print(f"[bench] {name}: 1-min load average {self.load['load_1min_at_start']} at start", file=sys.stderr)
        self.started = time.time()
        self.sampler = LoadSampler()

    def save(self, results: dict, tables: list[str]) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": self.name,
            "command": "python " + " ".join([os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "quick": self.args.quick, "machine": machine(), "load": self.load | self.sampler.stop(),
            "wall_s": round(time.time() - self.started, 1), "results": results, "tables": tables,
        }
        path = RESULTS / f"{self.name}{'-quick' if self.args.quick else ''}.json"
        path.write_text(json.dumps(payload, indent=1, default=float))
        print(f"\nload average: {payload['load']}\nwrote {os.path.relpath(path, REPO)}")
        return path


# ---- families of arms (the scripts that compare training set-ups) --------------------------------------------------
def add_family_options(p: argparse.ArgumentParser, families: dict, default: str) -> None:
    p.add_argument("--family", choices=sorted(families), default=default)
    p.add_argument("--arm", action="append", help="only this arm of the family (repeatable; default: every arm)")
    p.add_argument("--tag", help="appended to the results' name, to keep a run of other arms, steps, seed or model "
                   "apart")


def chosen_arms(args: argparse.Namespace, families: dict, default: str, benchmark: str) -> tuple[str, dict]:
    """The results' name (`benchmark`, then `_FAMILY` unless the default family, then `_TAG`) and the family's arms
    that `--arm` names (all by default); an unknown arm name is an error that lists the family's arms."""
    arms = families[args.family]
    unknown = sorted(set(args.arm or []) - set(arms))
    if unknown:
        raise SystemExit(f"--arm {unknown}: not an arm of {args.family}; its arms: {sorted(arms)}")
    name = benchmark + ("" if args.family == default else f"_{args.family}") + (f"_{args.tag}" if args.tag else "")
    return name, {key: arm for key, arm in arms.items() if not args.arm or key in args.arm}


# ---- the world's scenes on a token grid ------------------------------------------------------------------------------
def box_cells(box: tuple[int, int, int, int], extent: int, side: int) -> set[int]:
    """Cells of a side x side token grid over a view (the image resized onto a square of its longer side `extent`,
    anchored top-left, as `mm1 probe` maps them) that a pixel box overlaps."""
    first = [int(v * side / extent) for v in box[:2]]
    last = [min(side - 1, int((v - 1e-6) * side / extent)) for v in box[2:]]
    return {r * side + c for r in range(first[1], last[1] + 1) for c in range(first[0], last[0] + 1)}


# ---- timing, tables, profiles ---------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def matmul_peak(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """This machine's matmul FLOP/s now: best of `repeats` n x n x n torch.mm."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / min(timed(lambda: torch.mm(a, b), repeats, warmup=1))


def fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def table(rows: list[dict], title: str | None = None) -> str:
    """Markdown table over the union of the rows' keys (in first-seen order); prints and returns it."""
    cols = list(dict.fromkeys(k for row in rows for k in row))
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in cols) + " |" for row in rows]
    text = "\n".join(lines)
    print("\n" + text)
    return text


def torch_profile(fn: Callable[[], object], name: str, label: str, rows: int = 25) -> str:
    """torch.profiler (CPU) of one call of `fn`: operators by self CPU time, appended to results/NAME-profile.txt."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    text = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return write_profile(name, f"{label}: torch.profiler, operators by self CPU time", text)


def python_profile(fn: Callable[[], object], name: str, label: str, rows: int = 30) -> str:
    """cProfile of one call of `fn` (Python-level costs: data processing, tokenisation), by own time."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime").print_stats(rows)
    return write_profile(name, f"{label}: cProfile, functions by own time", out.getvalue())


def write_profile(name: str, label: str, text: str) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-profile.txt"
    with open(path, "a") as f:
        f.write(f"=== {label}\n{text}\n\n")
    print(f"profile ({label}) appended to {os.path.relpath(path, REPO)}")
    return text


# ---- models and data ------------------------------------------------------------------------------------------------
def tiny_recipe_model_section() -> dict:
    """The `model:` and `tokenizer:` sections of recipes/tiny.yaml (the embedded default)."""
    import yaml

    tree = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    return {"model": tree["model"], "tokenizer": tree["tokenizer"]}


def config_100m(connector: dict | None = None) -> dict:
    """ViT 12x768 at 224/16 -> C-Abstractor 144 tokens -> Llama 12x768 (FFN 2048), vocab 32k."""
    return {"model": {
        "encoder": {"type": "clip", "image_size": 224, "patch_size": 16, "hidden_size": 768, "layers": 12,
                    "heads": 12, "intermediate_size": 3072},
        "connector": connector or {"type": "c-abstractor", "tokens": 144, "depth": 1},
        "llm": {"type": "llama", "hidden_size": 768, "layers": 12, "heads": 12, "intermediate_size": 2048,
                "vocab_size": 32000, "max_positions": 2048}},
        "tokenizer": {"vocab_size": 4096}}


def config_small() -> dict:
    """The 100m config's token arithmetic (224/16 views, 144 tokens per image, 32k vocabulary) at a third of its
    depth and half its width: ViT 6x384 -> C-Abstractor 144 -> Llama 6x384; steps about 8x cheaper."""
    tree = config_100m()
    tree["model"]["encoder"] |= {"hidden_size": 384, "layers": 6, "heads": 6, "intermediate_size": 1536}
    tree["model"]["llm"] |= {"hidden_size": 384, "layers": 6, "heads": 6, "intermediate_size": 1024}
    return tree


def config_1b() -> dict:
    """recipes/mm1.5/1b.yaml's shapes: ViT-H/14 at 378 px -> C-Abstractor 144 (depth 3) -> Llama 22x2048, 32k vocab."""
    from mm1.config import load_config, to_dict

    tree = to_dict(load_config(REPO / "recipes" / "mm1.5" / "1b.yaml"))
    return {"model": tree["model"], "tokenizer": tree["tokenizer"]}


CONFIGS = {"tiny": tiny_recipe_model_section, "small": config_small, "100m": config_100m, "1b": config_1b}


def plan_flops(cfg, stage, images_per_sequence: float) -> dict:
    """FLOPs of one step (stage.batch_size sequences of stage.seq_len tokens) by `mm1.plan`'s accounting (model
    FLOPs: 6 x parameters x tokens per trained module, attention scores not counted), at the measured images per
    sequence (one view each: no splitting)."""
    from mm1.plan import model_counts, plan_stage

    result = plan_stage(cfg, model_counts(cfg), stage, gpus=1, gpu_memory_gb=1e9, mfu=1.0, peak=1.0,
                        images_per_sequence=images_per_sequence, views_per_image=1)
    return result["flops_per_step"]


def make_config(name: str, tokenizer, overrides: list[str] = ()):
    """A config by name; the LLM vocabulary is the config's `model.llm.vocab_size` if it sets one (32k for 100m),
    else the tokenizer's size, so `mm1.plan` counts the parameters `build_model` builds."""
    import copy

    from mm1.config import config_from_dict

    tree = copy.deepcopy(CONFIGS[name]())
    tree["model"]["llm"].setdefault("vocab_size", len(tokenizer))
    return config_from_dict(tree, name, overrides)


def build_model(cfg, tokenizer, seed: int = 0):
    """Random-init MM1Model whose LLM vocabulary is `model.llm.vocab_size` (may exceed the small benchmark
    tokenizer's, so embedding and LM-head costs are those of a real vocabulary)."""
    from mm1.model.mllm import MM1Model

    torch.manual_seed(seed)
    model = MM1Model(cfg, tokenizer)
    if cfg.model.llm.vocab_size > len(tokenizer):
        model.llm.resize_token_embeddings(cfg.model.llm.vocab_size, mean_resizing=False)
    return model


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class World:
    """The synthetic world (`mm1.data.world`, size small) in a temporary folder, its texts and a tokenizer."""

    def __init__(self, seed: int = 0):
        from mm1.data.world import generate

        self._tmp = tempfile.TemporaryDirectory(prefix="mm1-bench-world-")
        self.path = Path(self._tmp.name)
        generate(self.path, seed, "small")

    def sources(self, weights=(45, 45, 10)) -> list:
        """MM1 pre-training's mixture: captions / interleaved documents / text-only."""
        from mm1.config import SourceConfig

        paths = [("captions", "webdataset", "captions"), ("interleaved", "interleaved", "interleaved/train.parquet"),
                 ("text", "text", "text/train.jsonl")]
        return [SourceConfig(name=n, format=f, path=str(self.path / p), weight=w)
                for (n, f, p), w in zip(paths, weights)]

    def tokenizer(self, vocab_size: int):
        from mm1.config import TokenizerConfig
        from mm1.data.readers import open_reader
        from mm1.data.tokenizer import build_tokenizer

        texts = [r.text for s in self.sources() for r in open_reader(s.format, s.path, sharded=False)]
        return build_tokenizer(TokenizerConfig(vocab_size=vocab_size), texts)

    def stage(self, seq_len: int = 1024, batch_size: int = 1, packing: bool = True, bf16: bool = False, **kw):
        from mm1.config import StageConfig

        return StageConfig(name="bench", data=self.sources(), seq_len=seq_len, batch_size=batch_size,
                           packing=packing, bf16=bf16, warmup_steps=0, steps=10**6, **kw)


def synthetic_image(rng: random.Random, width: int, height: int):
    """A PIL image of a few coloured shapes on a coloured background."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 6)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        box = (x0, y0, x0 + rng.randint(4, max(5, width // 2)), y0 + rng.randint(4, max(5, height // 2)))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    return img
