"""Dynamic batching: requests that arrive close together share one `model.generate` call.

A worker thread takes the first waiting request, then whatever else arrives within a short window (up to a maximum
batch size), left-pads the prompts and runs ONE batched `generate`.  `generate` takes one temperature and top_p for
the whole batch, so requests are grouped by those; max_tokens may differ (the call runs for the longest, each
request stops at its own).  Each step's tokens go to every request's `Job`, which turns them into text for its own
stream.  With greedy decoding a request gets the same tokens batched or alone: rows do not attend to each other and
padding is masked.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from mm1.data.processor import Encoded

REPLACEMENT = "\ufffd"  # what decoding shows for a character whose UTF-8 bytes have not all been generated yet


class Job:
    """One request: its prompt, sampling settings, and the text it has produced so far.

    `emit(delta, finish_reason)` receives the new text whenever it can no longer change; finish_reason is None
    until the last call, then "stop" (EOS or a stop string), "length" (max_tokens) or "error" (see `error`).
    It is called from the generating thread.
    """

    def __init__(self, prompt: Encoded, decode: Callable[[list[int]], str],
                 emit: Callable[[str, str | None], None], max_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, stop: Sequence[str] = ()):
        self.prompt, self.decode, self.emit, self.max_tokens = prompt, decode, emit, max_tokens
        # Greedy decoding ignores top_p, so all greedy requests can share a batch.
        self.sampling = (temperature, top_p) if temperature > 0 else (0.0, 1.0)
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.sent = 0  # characters of the text already emitted
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.cancelled = False  # set by the server when the client has gone

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.cancelled

    def push(self, token: int) -> None:
        """One generated token (not EOS)."""
        self.tokens.append(token)
        # Decoding the whole text each step (not token by token) keeps multi-token characters intact.
        text = self.decode(self.tokens)
        cuts = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if cuts:
            return self._end(text[:min(cuts)], "stop")
        if len(self.tokens) >= self.max_tokens:
            return self._end(text, "length")
        # Hold back an unfinished character and any ending that could still become a stop string.
        held = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        safe = min(len(text.rstrip(REPLACEMENT)), len(text) - held)
        if safe > self.sent:
            self.emit(text[self.sent:safe], None)
            self.sent = safe

    def finish(self, reason: str) -> None:
        self._end(self.decode(self.tokens), reason)

    def fail(self, message: str) -> None:
        self.error = message
        self.finish_reason = "error"
        self.emit("", "error")

    def _end(self, text: str, reason: str) -> None:
        self.finish_reason = reason
        self.emit(text[self.sent:], reason)
        self.sent = len(text)


def generate(model, jobs: list[Job]) -> None:
    """Run jobs that share sampling settings as one left-padded batch; never raises (a failure fails the jobs)."""
    processor = model.processor
    eos = processor.tokenizer.eos_token_id

    def on_tokens(tokens: torch.Tensor) -> bool:
        for job, token in zip(jobs, tokens.tolist()):
            if job.done:
                continue
            if token == eos:
                job.finish("stop")
            else:
                job.push(token)
        # Stop strings, max_tokens and cancelled clients end a row here, not in `generate`: stop when all rows ended.
        return all(job.done for job in jobs)

    temperature, top_p = jobs[0].sampling
    try:
        batch = processor.collate([job.prompt for job in jobs], padding_side="left")
        model.generate(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                       max_new_tokens=max(job.max_tokens for job in jobs), temperature=temperature, top_p=top_p,
                       eos_token_id=eos, on_tokens=on_tokens)
    except Exception as err:  # e.g. out of memory: this batch's requests fail, the server goes on
        for job in jobs:
            if not job.done:
                job.fail(f"generation failed: {type(err).__name__}: {err}")


class Batcher:
    """The worker thread that owns the model: collects jobs and generates them in batches."""

    def __init__(self, model, max_batch: int = 8, window: float = 0.02):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.max_batch, self.window = model, max_batch, window
        self.stats = {"requests": 0, "generate_calls": 0, "max_batch_seen": 0}
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mm1-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _collect(self) -> list[Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        jobs = [first]
        deadline = time.monotonic() + self.window
        while len(jobs) < self.max_batch:
            try:  # after the deadline this still takes jobs that are already waiting
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # close after this batch
                break
            jobs.append(job)
        return jobs

    def _run(self) -> None:
        while (jobs := self._collect()) is not None:
            groups: dict[tuple[float, float], list[Job]] = defaultdict(list)
            for job in jobs:
                if not job.cancelled:
                    groups[job.sampling].append(job)
            for group in groups.values():
                self.stats["requests"] += len(group)
                self.stats["generate_calls"] += 1
                self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(group))
                generate(self.model, group)
