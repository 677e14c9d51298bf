"""Streaming readers for the formats real users have.  Each yields `Record`s without decoding images.

| format        | files                                                    | record                               |
|---------------|----------------------------------------------------------|--------------------------------------|
| `webdataset`  | img2dataset tar shards (`KEY.jpg|png`, `KEY.txt`, `KEY.json`), local or any URL webdataset opens | caption document |
| `interleaved` | OBELICS-style `.parquet` / `.jsonl` rows with parallel `texts` / `images` lists | interleaved document |
| `text`        | `.jsonl` (`text` field), `.txt` (one document per line), `.parquet` (`text` column) | text-only document |
| `llava`       | LLaVA `.json` list or `.jsonl` (`image` / `images` / `video`, `conversations`) | chat |
| `world-questions` | a synthetic world's folder (`world.json`); its scenes are drawn as they are read | chat |
| `world-captions` | the same; one captioned scene per record                 | caption document                     |
| `world-signs` | the same; one sign to read per record                    | chat                                 |

Records are sharded across distributed ranks and data-loader workers by index (record i goes to slot
i mod (ranks x workers)), so every record is read exactly once per pass.  A bad record is skipped and counted
with its file, record and reason in `SkipStats`; nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from mm1.data.tokenizer import IMAGE_TOKEN
from mm1.registry import Registry

log = logging.getLogger(__name__)

VIDEO_TOKEN = "<video>"
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif")


class BadRecord(ValueError):
    """A record that cannot be used; the message is the reason."""


@dataclass
class Record:
    source: str  # file or URL
    key: str  # record id within the source (line, row, tar key)
    text: str | None = None  # a document with <image> markers (pre-training)
    messages: list[dict] | None = None  # a conversation (SFT); content strings may hold <image> markers
    images: list[Any] = field(default_factory=list)  # bytes or paths, in marker order
    category: str | None = None


@dataclass
class SkipStats:
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    read: int = 0
    truncated: int = 0  # samples kept with their trailing text cut to seq_len (not skipped)

    def skip(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 5:
            shown.append(where)
            log.warning("skipped %s: %s", where, reason)

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        lines = [f"{self.read} records read, {self.skipped} skipped, {self.truncated} truncated to seq_len"]
        for reason, n in self.counts.most_common():
            lines.append(f"  {n:>6} × {reason}  (e.g. {', '.join(self.examples[reason][:3])})")
        return "\n".join(lines)


def shard_slot() -> tuple[int, int]:
    """(this reader's slot, number of slots) over distributed ranks x data-loader workers."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


class Reader(torch.utils.data.IterableDataset):
    """Base: subclasses list raw items cheaply (`raw`) and validate one into a Record (`parse`)."""

    file_backed = True  # False: records are generated as they are read

    def __init__(self, path: str, stats: SkipStats | None = None, sharded: bool = True, **options):
        super().__init__()
        self.path = path
        self.stats = stats if stats is not None else SkipStats()
        self.sharded = sharded  # False: every record on every rank (e.g. to train a tokenizer or count records)
        self.options = options

    def raw(self) -> Iterator[tuple[str, str, Any]]:  # (source, key, item)
        raise NotImplementedError

    def parse(self, source: str, key: str, item: Any) -> Record:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Record]:
        slot, slots = shard_slot() if self.sharded else (0, 1)
        for index, (source, key, item) in enumerate(self.raw()):
            if index % slots != slot:
                continue
            self.stats.read += 1
            try:
                yield self.parse(source, key, item)
            except BadRecord as err:
                self.stats.skip(str(err), f"{source} record {key}")


READERS: Registry[type[Reader]] = Registry("data format")


def files(path: str, suffixes: tuple[str, ...]) -> list[Path]:
    """A file, the matching files of a directory, or of a glob pattern (`train-*.tar`), in sorted order."""
    p = Path(path)
    if any(c in path for c in "*?["):
        found = sorted(f for f in p.parent.glob(p.name) if f.suffix.lstrip(".") in suffixes)
        if not found:
            raise FileNotFoundError(f"no {'/'.join(suffixes)} file matches {path}")
        return found
    if p.is_dir():
        found = sorted(f for f in p.iterdir() if f.suffix.lstrip(".") in suffixes)
        if not found:
            raise FileNotFoundError(f"{p} holds no {'/'.join(suffixes)} files")
        return found
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    return [p]


def need_text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRecord(f"{what} is {type(value).__name__}, not text")
    if not value.strip():
        raise BadRecord(f"{what} is empty")
    return value


def read_json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield str(number), json.loads(line)
            except json.JSONDecodeError as err:
                yield str(number), BadRecord(f"invalid JSON ({err.msg})")


def read_parquet_rows(path: Path, columns: list[str]) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256, columns=columns):
        for row in batch.to_pylist():
            yield str(index), row
            index += 1


def resolve_image(ref: Any, base: Path) -> Any:
    """Bytes stay bytes; `shard.tar#member` reads a member of a tar; other strings are paths relative to `base`."""
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref)
    if not isinstance(ref, str) or not ref:
        raise BadRecord(f"image reference is {type(ref).__name__}, not bytes or a path")
    shard, sep, member = ref.partition("#")
    if sep and shard.endswith(".tar"):
        try:
            with tarfile.open(base / shard) as tar:
                return tar.extractfile(member).read()
        except (OSError, KeyError, AttributeError, tarfile.TarError) as err:
            raise BadRecord(f"image {ref} cannot be read from its shard ({err})") from None
    path = base / ref
    if not path.exists():  # a folder is fine: a video's frames
        raise BadRecord(f"image {path} does not exist")
    return path


@READERS.register("webdataset")
class WebDatasetReader(Reader):
    """Image-text pairs from tar shards: a shard, a folder of shards, a glob (`train-*.tar`) or a brace-expanded
    URL pattern (`pipe:...`, `https://.../train-{000000..000099}.tar`)."""

    def raw(self):
        import webdataset as wds

        local = Path(self.path).exists() or (any(c in self.path for c in "*?[") and "://" not in self.path)
        urls = [str(f) for f in files(self.path, ("tar",))] if local else wds.shardlists.expand_urls(self.path)
        for sample in wds.tarfile_samples([{"url": u} for u in urls]):
            yield sample["__url__"], sample["__key__"], sample

    def parse(self, source, key, sample):
        image = next((sample[s] for s in IMAGE_SUFFIXES if s in sample), None)
        if image is None:
            raise BadRecord("no image member (jpg/png/webp)")
        if "txt" not in sample:
            raise BadRecord("no txt member")
        try:
            caption = sample["txt"].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRecord("txt member is not UTF-8") from None
        return Record(source, key, text=IMAGE_TOKEN + need_text(caption, "caption").strip(), images=[image])


@READERS.register("interleaved")
class InterleavedReader(Reader):
    """OBELICS-style rows: `texts[i]` xor `images[i]` at each position; images as bytes, paths or tar members."""

    def raw(self):
        for path in files(self.path, ("parquet", "jsonl")):
            rows = read_parquet_rows(path, ["texts", "images"]) if path.suffix == ".parquet" else read_json_lines(path)
            for key, row in rows:
                yield str(path), key, (path.parent, row)

    def parse(self, source, key, item):
        base, row = item
        if isinstance(row, BadRecord):
            raise row
        texts, images = row.get("texts"), row.get("images")
        if not isinstance(texts, list) or not isinstance(images, list) or len(texts) != len(images):
            raise BadRecord("texts and images must be lists of the same length")
        pieces, refs = [], []
        for position, (text, image) in enumerate(zip(texts, images)):
            if (text is None) == (image is None):
                raise BadRecord(f"position {position} must hold exactly one of text and image")
            if image is not None:
                refs.append(resolve_image(image, base))
                pieces.append(IMAGE_TOKEN)
            else:
                pieces.append(need_text(text, f"texts[{position}]").strip() + "\n")
        if not refs:
            raise BadRecord("document has no image")
        return Record(source, key, text="".join(pieces).rstrip("\n"), images=refs)


@READERS.register("text")
class TextReader(Reader):
    def raw(self):
        for path in files(self.path, ("jsonl", "txt", "parquet")):
            if path.suffix == ".txt":
                with open(path, encoding="utf-8") as f:
                    rows = ((str(n), {"text": line.rstrip("\n")}) for n, line in enumerate(f, 1) if line.strip())
                    yield from ((str(path), key, row) for key, row in rows)
                continue
            rows = read_parquet_rows(path, ["text"]) if path.suffix == ".parquet" else read_json_lines(path)
            yield from ((str(path), key, row) for key, row in rows)

    def parse(self, source, key, row):
        if isinstance(row, BadRecord):
            raise row
        if not isinstance(row, dict) or "text" not in row:
            raise BadRecord("no text field")
        return Record(source, key, text=need_text(row["text"], "text").strip())


ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@READERS.register("llava")
class LlavaReader(Reader):
    """LLaVA conversations.  A `video` (frame folder, GIF or video file) becomes `video_frames` images that
    replace the single `<video>` marker.  Options: `category` keeps only records of that category."""

    def raw(self):
        for path in files(self.path, ("json", "jsonl")):
            if path.suffix == ".jsonl":
                rows = read_json_lines(path)
            else:
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path} is not valid JSON: {err}") from None
                if not isinstance(data, list):
                    raise ValueError(f"{path}: a LLaVA file holds a JSON list of records")
                rows = ((str(row.get("id", i)) if isinstance(row, dict) else str(i), row) for i, row in enumerate(data))
            wanted = self.options.get("category")
            for key, row in rows:
                if wanted is None or (isinstance(row, dict) and row.get("category") == wanted):
                    yield str(path), key, (path.parent, row)

    def parse(self, source, key, item):
        base, row = item
        if isinstance(row, BadRecord):
            raise row
        if not isinstance(row, dict):
            raise BadRecord(f"record is {type(row).__name__}, not an object")
        turns = row.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise BadRecord("conversations is missing or empty")
        messages = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or turn.get("from") not in ROLES:
                raise BadRecord(f"conversations[{i}] has no known 'from' (human/gpt/system)")
            messages.append({"role": ROLES[turn["from"]], "content": need_text(turn.get("value"), f"conversations[{i}].value")})
        if not any(m["role"] == "assistant" for m in messages):
            raise BadRecord("conversation has no assistant turn")
        images = self.images(row, base, messages)
        markers = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
        if markers != len(images):
            raise BadRecord(f"{markers} {IMAGE_TOKEN} markers but {len(images)} images")
        return Record(source, key, messages=messages, images=images, category=row.get("category"))

    def images(self, row: dict, base: Path, messages: list[dict]) -> list[Any]:
        if "video" in row:
            from mm1.data.image import sample_frames

            frames_wanted = self.options.get("video_frames", 24)
            try:
                frames = sample_frames(resolve_image(row["video"], base), frames_wanted)
            except ValueError as err:
                raise BadRecord(f"video {row['video']}: {err}") from None
            if sum(m["content"].count(VIDEO_TOKEN) for m in messages) != 1:
                raise BadRecord(f"a video record needs exactly one {VIDEO_TOKEN} marker")
            for m in messages:
                m["content"] = m["content"].replace(VIDEO_TOKEN, IMAGE_TOKEN * len(frames))
            return frames
        refs = row.get("images", [row["image"]] if "image" in row else [])
        if not isinstance(refs, list):
            raise BadRecord("images is not a list")
        return [resolve_image(ref, base) for ref in refs]


class WorldDraws(Reader):
    """Records drawn from the synthetic world's training split as they are read: no files, so a stage can read as
    many as it needs.  `path` is a world folder (its `world.json` gives the seed); option `records` per pass
    (default 100,000; record i is the same draw in every pass)."""

    draw_name = ""  # names the random stream, so each format draws its own scenes
    # The tokenizer is trained on a recipe's file sources when it has any: draws repeat the world's own templates, so
    # a recipe that adds drawn sources to another (tiny-long.yaml to tiny.yaml) gets the same tokenizer.
    file_backed = False

    def raw(self):
        manifest = Path(self.path) / "world.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest} does not exist: a world-drawn format reads a world folder "
                                    "(`mm1 data synth --out DIR`)")
        seed = json.loads(manifest.read_text())["seed"]
        for index in range(int(self.options.get("records", 100_000))):
            yield str(manifest), str(index), seed

    def rng(self, key: str, seed: int):
        from mm1.data.world.base import TRAIN

        return TRAIN.rng(seed, f"{self.draw_name}:{key}")


class WorldChats(WorldDraws, LlavaReader):
    """One drawn single-image conversation per record, read as a LLaVA record is."""

    def draw(self, rng) -> tuple[dict, list[dict]]:  # (media, LLaVA conversation)
        raise NotImplementedError

    def parse(self, source, key, seed):
        from mm1.data.world.writers import png

        media, conversation = self.draw(self.rng(key, seed))
        record = {"image": png(media["image"]), "conversations": conversation}
        return super().parse(source, key, (Path(self.path), record))


@READERS.register("world-questions")
class WorldQuestionsReader(WorldChats):
    """One question about a new scene per record (`mm1.data.world.conversations.single_question`).  Option `kinds`:
    the question tasks asked, e.g. [position, ground-box]; default every scene question."""

    draw_name = "single-question"

    def draw(self, rng):
        from mm1.data.world.base import TRAIN
        from mm1.data.world.conversations import SCENE_KINDS, single_question

        return single_question(rng, TRAIN, tuple(self.options.get("kinds", SCENE_KINDS)))


@READERS.register("world-signs")
class WorldSignsReader(WorldChats):
    """One sign and "What does the sign say?" per record (`mm1.data.world.conversations.sign_reading`).  Option
    `letters`: [fewest, most] letters of a made-up string on every sign (e.g. [1, 1] for single letters); default
    the world's own signs (its training words and made-up strings, sometimes with a number)."""

    draw_name = "sign"

    def raw(self):
        letters = self.options.get("letters")
        if letters is not None and not (isinstance(letters, (list, tuple)) and len(letters) == 2
                                        and all(isinstance(n, int) and not isinstance(n, bool) for n in letters)
                                        and 1 <= letters[0] <= letters[1]):
            raise ValueError(f"format world-signs: option letters is {letters!r}; give [fewest, most] letters, "
                             "1 <= fewest <= most")
        yield from super().raw()

    def draw(self, rng):
        from mm1.data.world.base import TRAIN
        from mm1.data.world.conversations import sign_reading

        letters = self.options.get("letters")
        return sign_reading(rng, TRAIN, tuple(letters) if letters else None)


@READERS.register("world-captions")
class WorldCaptionsReader(WorldDraws):
    """One captioned new scene per record, as the world's caption shards hold them
    (`mm1.data.world.pretraining.captioned_scene`).  Option `objects`: objects per scene (default 1-5); with one,
    a caption names one object, so a contrastive batch tells its captions apart by that object alone."""

    draw_name = "world-caption"

    def raw(self):
        from mm1.data.world.scenes import MAX_OBJECTS

        objects = self.options.get("objects")
        if objects is not None and (isinstance(objects, bool) or not isinstance(objects, int)
                                    or not 1 <= objects <= MAX_OBJECTS):
            raise ValueError(f"format world-captions: option objects is {objects!r}; a scene holds 1 to "
                             f"{MAX_OBJECTS} objects")
        yield from super().raw()

    def parse(self, source, key, seed):
        from mm1.data.world.base import TRAIN
        from mm1.data.world.pretraining import captioned_scene
        from mm1.data.world.writers import png

        image, caption, _ = captioned_scene(self.rng(key, seed), TRAIN, self.options.get("objects"))
        return Record(source, key, text=IMAGE_TOKEN + caption, images=[png(image)])


def open_reader(fmt: str, path: str, stats: SkipStats | None = None, sharded: bool = True, **options) -> Reader:
    return READERS.get(fmt)(path, stats, sharded, **options)


def validate(fmt: str, path: str, decode: Callable[[Any], Any], **options) -> SkipStats:
    """Read every record and decode every image; returns the counts (`mm1 data validate`)."""
    stats = SkipStats()
    for record in open_reader(fmt, path, stats, **options):
        for image in record.images:
            try:
                decode(image)
            except ValueError as err:
                stats.skip(f"image: {err}", f"{record.source} record {record.key}")
                break
    return stats
