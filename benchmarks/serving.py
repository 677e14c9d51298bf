"""`mm1 serve` under load: requests/s and p50/p95 latency at 1, 4 and 16 concurrent clients, dynamic batching on
(the server's defaults: --max-batch 8, 20 ms window) and off (--no-batching), with PyTorch's default OpenMP settings,
with OMP_NUM_THREADS=1 and with OMP_WAIT_POLICY=PASSIVE (threads sleep instead of spinning between parallel regions).

The server runs as a subprocess of this script on 127.0.0.1 only, serving a random-init model of the tiny recipe's
shape; every request is one image (a base64 PNG) and a question, greedy, max_tokens 16.  Clients are threads
sending requests back to back; each level stops after a fixed number of requests or a time limit, whichever comes
first.  With --profile (and py-spy on PATH or in $PYSPY), the server of the batched default-threads run is sampled
by py-spy during the 16-client level.  Target (issue #9): batched >= 2x unbatched requests/s at 16 clients.
"""

from __future__ import annotations

import base64
import collections
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import (HOST, REPO, Bench, World, build_model, cli, free_port, make_config, median, percentile,
                    synthetic_image, table, write_profile)

NAME = "bench"


def png(seed: int) -> str:
    buf = io.BytesIO()
    rng = random.Random(seed)
    synthetic_image(rng, rng.randint(48, 160), rng.randint(48, 160)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request(port: int, seed: int, max_tokens: int) -> tuple[float, int]:
    body = {"model": NAME, "max_tokens": max_tokens, "temperature": 0, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png(seed)}},
        {"type": "text", "text": f"\nWhat colour is shape number {seed % 7}?"}]}]}
    req = urllib.request.Request(f"http://{HOST}:{port}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as response:
        reply = json.loads(response.read())
    return time.perf_counter() - start, reply["usage"]["completion_tokens"]


def load_level(port: int, clients: int, n_requests: int, time_limit: float, max_tokens: int) -> dict:
    """`clients` threads sending back to back until `n_requests` are done or `time_limit` s have passed."""
    lock, issued, results = threading.Lock(), [0], []
    deadline = time.perf_counter() + time_limit

    def client():
        while time.perf_counter() < deadline:
            with lock:
                if issued[0] >= n_requests:
                    return
                issued[0] += 1
                seed = issued[0]
            results.append(request(port, seed, max_tokens))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies = [r[0] for r in results]
    return {"clients": clients, "requests": len(results), "requests/s": len(results) / wall,
            "completion tokens/s": sum(r[1] for r in results) / wall, "p50 s": median(latencies),
            "p95 s": percentile(latencies, 95)}


class Server:
    """`mm1 serve MODEL --host 127.0.0.1` in a subprocess, stopped (its own pid) on exit."""

    def __init__(self, model_dir: Path, batching: bool, env: dict):
        self.port = free_port()
        cmd = [sys.executable, "-m", "mm1.cli", "serve", str(model_dir), "--host", HOST, "--port", str(self.port),
               "--name", NAME] + ([] if batching else ["--no-batching"])
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=os.environ | env, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "Server":
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"mm1 serve exited: {self.log.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("mm1 serve did not answer /health within 120 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def py_spy(pid: int, seconds: int, label: str, name: str) -> None:
    """Sample `pid` with py-spy; write the functions with the most samples (own and inclusive)."""
    exe = os.environ.get("PYSPY") or shutil.which("py-spy")
    if not exe:
        print("py-spy not found (PATH or $PYSPY): no server profile")
        return
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        subprocess.run([exe, "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "-f", "raw", "-o", out.name,
                        "--nonblocking"], capture_output=True, check=False)
        lines = Path(out.name).read_text().splitlines()
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    fmt = lambda counter: "\n".join(f"{100 * n / max(total, 1):5.1f}%  {f}" for f, n in counter.most_common(25))
    write_profile(name, label, f"{total} samples\n-- own (leaf) --\n{fmt(own)}\n-- inclusive --\n{fmt(inclusive)}")


def main() -> None:
    p = cli(__doc__)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--time-limit", type=float, default=60, help="seconds per level at most")
    args = p.parse_args()
    bench = Bench("serving", args)
    levels = (1, 4, 16)
    per_client = 2 if args.quick else 8
    envs = {"default threads": {}, "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
            "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}
    if args.quick:
        envs = {"default threads": {}}
    world = World()
    tokenizer = world.tokenizer(1024)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        build_model(make_config("tiny", tokenizer), tokenizer).save_pretrained(Path(tmp) / "model")
        for env_name, env in envs.items():
            for batching in (True, False):
                with Server(Path(tmp) / "model", batching, env) as server:
                    load_level(server.port, 2, 4, args.time_limit, args.max_tokens)  # warm-up
                    for clients in levels:
                        spy = threading.Thread(target=py_spy, args=(server.proc.pid, 10, f"server, {env_name}, "
                                               f"batching {'on' if batching else 'off'}, 16 clients", bench.name))
                        if args.profile and clients == 16:
                            spy.start()
                        n_requests = max(8 if args.quick else 16, per_client * clients)
                        row = load_level(server.port, clients, n_requests, 15 if args.quick else args.time_limit,
                                         args.max_tokens)
                        rows.append({"threads": env_name, "batching": "on" if batching else "off"} | row)
                        if spy.is_alive():
                            spy.join()
    ratios = {}
    for env_name in envs:
        on, off = ([r for r in rows if r["threads"] == env_name and r["clients"] == 16 and r["batching"] == b][0]
                   for b in ("on", "off"))
        ratios[env_name] = on["requests/s"] / off["requests/s"]
    targets = {f"{k}: 16 clients batched >= 2x unbatched": v >= 2 for k, v in ratios.items()}
    tables = [table(rows, f"mm1 serve, tiny-shape model, max_tokens {args.max_tokens}; 16-client batched/unbatched "
                          f"requests/s: {ratios}")]
    print(f"targets: {targets}")
    bench.save({"rows": rows, "ratio_16_clients": ratios, "targets_met": targets, "max_tokens": args.max_tokens},
               tables)


if __name__ == "__main__":
    main()
