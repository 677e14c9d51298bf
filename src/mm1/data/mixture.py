"""A stage's data: a weighted, seeded interleave of sources, encoded, optionally packed, with exact resume.

The stream is a pure function of (sources, seed): each step draws a source with probability proportional to its
weight from one `random.Random(seed)`, then takes that source's next record (sources restart at the end of a
pass, counting epochs).  `state_dict()` holds the RNG state, every source's (epoch, position) and the packer's
open sequences, so a resumed run yields the same batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable, Iterator

from mm1.config import SourceConfig, StageConfig
from mm1.data.packing import Packer, fit
from mm1.data.processor import Encoded, Processor
from mm1.data.readers import Record, SkipStats, open_reader


class SourceStream:
    def __init__(self, cfg: SourceConfig, stats: SkipStats):
        self.cfg, self.stats = cfg, stats
        self.epoch, self.position = 0, 0
        self._records: Iterator[Record] | None = None

    def _restart(self) -> None:
        self._records = iter(open_reader(self.cfg.format, self.cfg.path, self.stats, **self.cfg.options))

    def next(self) -> Record:
        if self._records is None:
            self._restart()
        for attempt in range(2):
            record = next(self._records, None)
            if record is not None:
                self.position += 1
                return record
            self.epoch, self.position = self.epoch + 1, 0
            self._restart()
        raise ValueError(f"source {self.cfg.name} ({self.cfg.path}) yields no usable record; "
                         f"{self.stats.report()}")

    def seek(self, epoch: int, position: int) -> None:
        """Replay to a saved position (records are re-read, not re-decoded)."""
        self.epoch, self.position = epoch, 0
        self._restart()
        for _ in range(position):
            if next(self._records, None) is None:
                raise ValueError(f"source {self.cfg.name} has fewer than {position} records now; did it change?")
            self.position += 1


# A stream that drops this many samples in a row (undecodable, too long, ...) has nothing usable: stop with the
# reasons instead of reading the sources round and round forever.
MAX_SKIPS_IN_A_ROW = 1000


def too_many_skips(what: str, stats: SkipStats) -> ValueError:
    return ValueError(f"{MAX_SKIPS_IN_A_ROW} samples in a row were {what}; nothing usable left. {stats.report()}")


def encode_record(processor: Processor, record: Record) -> Encoded:
    if record.messages is not None:
        encoded = processor.encode_chat(record.messages, record.images)
    else:
        encoded = processor.encode_text(record.text, record.images)
    return dataclasses.replace(encoded, origin=f"{record.source}:{record.key}")


class Mixture:
    def __init__(self, sources: list[SourceConfig], seed: int, encode: Callable[[Record], Encoded],
                 stats: SkipStats | None = None):
        if not sources:
            raise ValueError("a stage needs at least one data source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        self.stats = stats if stats is not None else SkipStats()
        self.streams = [SourceStream(s, self.stats) for s in sources]
        self.weights = [s.weight for s in sources]
        self.rng = random.Random(seed)
        self.encode = encode
        self.drawn = {s.name: 0 for s in sources}

    def __iter__(self) -> Iterator[Encoded]:
        return self

    def __next__(self) -> Encoded:
        for _ in range(MAX_SKIPS_IN_A_ROW):
            stream = self.rng.choices(self.streams, weights=self.weights)[0]
            record = stream.next()
            try:
                encoded = self.encode(record)
            except ValueError as err:  # undecodable image, marker/image mismatch, ...
                self.stats.skip(str(err), f"{record.source} record {record.key}")
                continue
            self.drawn[stream.cfg.name] += 1
            return encoded
        raise too_many_skips("skipped while encoding", self.stats)

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "drawn": dict(self.drawn),
                "sources": {s.cfg.name: [s.epoch, s.position] for s in self.streams}}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.drawn = dict(state["drawn"])
        for stream in self.streams:
            stream.seek(*state["sources"][stream.cfg.name])


class StageData:
    """Batches for one stage: padded batches of `batch_size` samples, or `batch_size` packed sequences."""

    def __init__(self, stage: StageConfig, processor: Processor, seed: int):
        self.stage, self.processor = stage, processor
        self.mixture = Mixture(stage.data, seed, lambda r: encode_record(processor, r))
        self.packer = Packer(stage.seq_len, stage.max_images_per_sequence, processor) if stage.packing else None
        self.samples = self._fitted_samples()

    def _fitted_samples(self) -> Iterator[Encoded]:
        """Samples that fit in `seq_len` (text truncated, or the sample dropped, never an image cut)."""
        dropped = 0
        for sample in self.mixture:
            fitted = fit(sample, self.stage.seq_len, self.processor.image_token_id, self.mixture.stats)
            dropped = 0 if fitted is not None else dropped + 1
            if dropped == MAX_SKIPS_IN_A_ROW:
                raise too_many_skips(f"dropped as longer than seq_len={self.stage.seq_len}", self.mixture.stats)
            if fitted is not None:
                yield fitted

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self.packer is None:
            return self.processor.collate([next(self.samples) for _ in range(self.stage.batch_size)])
        return self.packer.collate([self.packer.next_sequence(self.samples) for _ in range(self.stage.batch_size)])

    def state_dict(self) -> dict:
        return {"mixture": self.mixture.state_dict(), "packer": self.packer.state_dict() if self.packer else None}

    def load_state_dict(self, state: dict) -> None:
        self.mixture.load_state_dict(state["mixture"])
        if self.packer is not None:
            self.packer.load_state_dict(state["packer"])
        self.samples = self._fitted_samples()
