"""Round trip: the synthetic world writes each real format, the readers read back the same content."""

import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mm1.data.readers import SkipStats, open_reader
from mm1.data.world import generate


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    generate(out, seed=3, size="small")
    return out


def read(fmt, path, **options):
    stats = SkipStats()
    records = list(open_reader(fmt, str(path), stats, **options))
    assert stats.skipped == 0, stats.report()
    return records


@pytest.mark.parametrize("part", ["captions", "ocr"])
def test_webdataset_shards(world, part):
    written = {}
    for shard in sorted((world / part).glob("train-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                written.setdefault(key, {})[ext] = tar.extractfile(member).read()
    records = read("webdataset", world / part / "train-*.tar")  # the folder also holds the held-out shards
    assert [r.key for r in records] == sorted(written)
    for r in records:
        assert r.text == "<image>" + written[r.key]["txt"].decode().strip()
        assert r.images == [written[r.key]["png"]]


def test_interleaved_parquet_and_paths(world):
    rows = pq.read_table(world / "interleaved" / "train.parquet").to_pylist()
    records = read("interleaved", world / "interleaved" / "train.parquet")
    assert len(records) == len(rows)
    for row, r in zip(rows, records):
        assert r.images == [image for image in row["images"] if image is not None]
        assert r.text.replace("\n", "") == "".join(t.strip() if t is not None else "<image>" for t in row["texts"])
    lines = [json.loads(l) for l in (world / "interleaved" / "train-paths.jsonl").read_text().splitlines()]
    records = read("interleaved", world / "interleaved" / "train-paths.jsonl")
    for line, r in zip(lines, records):
        assert [p.relative_to(world / "interleaved").as_posix() for p in r.images] == [i for i in line["images"] if i]
        assert all(Image.open(p).size for p in r.images)


def test_text(world):
    lines = [json.loads(l)["text"] for l in (world / "text" / "train.jsonl").read_text().splitlines()]
    assert [r.text for r in read("text", world / "text" / "train.jsonl")] == [t.strip() for t in lines]


def test_llava_conversations_all_categories(world):
    data = json.loads((world / "sft" / "train.json").read_text())
    records = read("llava", world / "sft" / "train.json", video_frames=4)
    assert [r.key for r in records] == [d["id"] for d in data]
    for d, r in zip(data, records):
        assert r.category == d["category"]
        assert [m["role"] for m in r.messages] == [{"human": "user", "gpt": "assistant"}[t["from"]] for t in d["conversations"]]
        if "video" in d:
            assert len(r.images) == 4 and r.messages[0]["content"].count("<image>") == 4
        else:
            assert len(r.images) == len(d.get("images", [d["image"]] if "image" in d else []))
            assert [m["content"] for m in r.messages] == [t["value"] for t in d["conversations"]]
    assert {r.category for r in records} >= {"general", "text-rich", "refer-ground", "multi-image", "video", "ui",
                                             "text-only"}
