"""Readers, mixtures and packing on small files written here in the real formats."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import image, png, tiny_model, write_shard
from mm1.config import SourceConfig, StageConfig
from mm1.data.mixture import Mixture, StageData, encode_record
from mm1.data.packing import Packer, fit
from mm1.data.readers import Record, SkipStats, open_reader, validate


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "caps").mkdir()
    for shard in range(2):
        items = []
        for i in range(5):
            key = f"{shard}{i:04d}"
            items += [(f"{key}.png", png()), (f"{key}.txt", f"caption {shard} {i}".encode()), (f"{key}.json", b"{}")]
        write_shard(tmp_path / "caps" / f"train-{shard:06d}.tar", items)
    write_shard(tmp_path / "bad.tar", [("k1.png", png()), ("k2.txt", b"no image"), ("k3.png", png()), ("k3.txt", b" ")])
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png((0, 200, 0)))
    table = pa.table({"texts": [["first", None, "then"], [None, "solo"]], "images": [[None, png(), None], [png(), None]]})
    pq.write_table(table, tmp_path / "inter.parquet")
    rows = [{"texts": ["see", None], "images": [None, "imgs/a.png"]},
            {"texts": ["x", "y"], "images": [None, "imgs/a.png"]},  # both set at position 1
            {"texts": ["see", None], "images": [None, "imgs/missing.png"]}]
    (tmp_path / "inter.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "text.jsonl").write_text('{"text": "3 plus 4 is 7."}\n{"text": ""}\n{"txt": "x"}\nnot json\n{"text": "one more."}\n')
    llava = [
        {"id": "a", "image": "imgs/a.png", "category": "general",
         "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "green"}]},
        {"id": "b", "category": "text-only",
         "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "c", "images": ["imgs/a.png", "imgs/a.png"], "category": "multi-image",
         "conversations": [{"from": "human", "value": "<image><image>same?"}, {"from": "gpt", "value": "yes"}]},
        {"id": "d", "image": "imgs/a.png", "conversations": [{"from": "human", "value": "no marker"}, {"from": "gpt", "value": "x"}]},
        {"id": "e", "conversations": [{"from": "robot", "value": "?"}]},
    ]
    (tmp_path / "sft.json").write_text(json.dumps(llava))
    return tmp_path


def records(fmt, path, **options):
    stats = SkipStats()
    return list(open_reader(fmt, str(path), stats, **options)), stats


def test_webdataset_pairs(data_dir):
    recs, stats = records("webdataset", data_dir / "caps")
    assert [r.text for r in recs[:2]] == ["<image>caption 0 0", "<image>caption 0 1"]
    assert len(recs) == 10 and stats.skipped == 0 and isinstance(recs[0].images[0], bytes)
    recs, stats = records("webdataset", data_dir / "caps" / "train-{000000..000001}.tar")  # a URL pattern
    assert len(recs) == 10
    recs, stats = records("webdataset", data_dir / "bad.tar")
    assert len(recs) == 0 and stats.counts == Counter({"no txt member": 1, "no image member (jpg/png/webp)": 1,
                                                        "caption is empty": 1})
    assert "bad.tar record k3" in stats.examples["caption is empty"][0]


def test_interleaved_parquet_and_jsonl(data_dir):
    recs, stats = records("interleaved", data_dir / "inter.parquet")
    assert [r.text for r in recs] == ["first\n<image>then", "<image>solo"] and stats.skipped == 0
    recs, stats = records("interleaved", data_dir / "inter.jsonl")
    assert [r.text for r in recs] == ["see\n<image>"]
    assert recs[0].images[0] == data_dir / "imgs" / "a.png"
    assert stats.counts["position 1 must hold exactly one of text and image"] == 1
    assert any("missing.png does not exist" in reason for reason in stats.counts)


def test_text_reader_counts_bad_lines(data_dir):
    recs, stats = records("text", data_dir / "text.jsonl")
    assert [r.text for r in recs] == ["3 plus 4 is 7.", "one more."]
    assert stats.read == 5 and stats.skipped == 3
    assert set(stats.counts) == {"text is empty", "no text field", "invalid JSON (Expecting value)"}
    assert stats.examples["no text field"] == [f"{data_dir / 'text.jsonl'} record 3"]


def test_llava_reader(data_dir):
    recs, stats = records("llava", data_dir / "sft.json")
    assert [r.key for r in recs] == ["a", "b", "c"]
    assert recs[0].messages == [{"role": "user", "content": "<image>\nWhat colour?"},
                                {"role": "assistant", "content": "green"}]
    assert len(recs[2].images) == 2 and recs[1].images == []
    assert stats.counts == Counter({"0 <image> markers but 1 images": 1,
                                    "conversations[0] has no known 'from' (human/gpt/system)": 1})
    recs, _ = records("llava", data_dir / "sft.json", category="multi-image")
    assert [r.key for r in recs] == ["c"]


def test_validate_decodes_images(data_dir, tmp_path):
    write_shard(tmp_path / "corrupt.tar", [("k.png", b"\x89PNG not really"), ("k.txt", b"cap")])
    model = tiny_model()
    stats = validate("webdataset", str(tmp_path / "corrupt.tar"), model.processor.load_image)
    assert stats.skipped == 1 and "cannot decode image" in next(iter(stats.counts))


def test_sharding_across_workers_and_ranks_reads_each_record_once(data_dir, monkeypatch):
    seen = Counter()
    for rank in range(2):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        reader = open_reader("webdataset", str(data_dir / "caps"))
        loader = DataLoader(reader, batch_size=None, num_workers=2, collate_fn=lambda r: r.text)
        seen.update(loader)
    assert len(seen) == 10 and set(seen.values()) == {1}


def sources(data_dir, text_weight=1.0):
    return [SourceConfig(name="captions", format="webdataset", path=str(data_dir / "caps"), weight=5.0),
            SourceConfig(name="interleaved", format="interleaved", path=str(data_dir / "inter.parquet"), weight=5.0),
            SourceConfig(name="text", format="text", path=str(data_dir / "text.jsonl"), weight=text_weight)]


def test_mixture_proportions(data_dir):
    model = tiny_model()
    mix = Mixture(sources(data_dir), seed=1, encode=lambda r: r)
    for _ in range(2200):
        next(mix)
    shares = {k: v / 2200 for k, v in mix.drawn.items()}
    assert shares["captions"] == pytest.approx(5 / 11, abs=0.03)
    assert shares["interleaved"] == pytest.approx(5 / 11, abs=0.03)
    assert shares["text"] == pytest.approx(1 / 11, abs=0.02)
    assert mix.streams[0].epoch > 50  # sources restart after each pass


def test_mixture_resume_gives_the_same_stream(data_dir):
    model = tiny_model()
    stage = StageConfig(data=sources(data_dir), batch_size=2, seq_len=64, max_images_per_sequence=3)
    full = StageData(stage, model.processor, seed=3)
    reference = [next(full) for _ in range(8)]
    first = StageData(stage, model.processor, seed=3)
    for _ in range(3):
        next(first)
    state = first.state_dict()
    resumed = StageData(stage, model.processor, seed=3)
    resumed.load_state_dict(state)
    for expected in reference[3:]:
        got = next(resumed)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in got)


def test_packed_and_unpacked_loss_are_equal(data_dir):
    model = tiny_model().eval()
    mix = Mixture(sources(data_dir), seed=0, encode=lambda r: encode_record(model.processor, r))
    samples = [next(mix) for _ in range(9)]
    packer = Packer(seq_len=96, max_images=4, processor=model.processor, open_sequences=3)
    stream = iter(samples * 3)
    sequences = [packer.next_sequence(stream) for _ in range(4)]
    packed_samples = [s for seq in sequences for s in seq]
    assert sum(len(seq) for seq in sequences) >= 6 and any(len(seq) > 1 for seq in sequences)
    packed = packer.collate(sequences)
    assert "attention_mask" not in packed
    out = model(**packed)
    unpacked_sum, targets = 0.0, 0
    for s in packed_samples:
        one = model.processor.collate([s])
        n = int((one["labels"][:, 1:] != -100).sum())
        unpacked_sum += model(**one).loss.item() * n
        targets += n
    torch.testing.assert_close(out.loss.item(), unpacked_sum / targets, rtol=1e-5, atol=1e-5)
    # Without the per-sample positions the samples would attend to each other and the loss would differ.
    leaky = model(packed["input_ids"], packed.get("pixel_values"), labels=packed["labels"])
    assert abs(leaky.loss.item() - out.loss.item()) > 1e-4
    for seq in sequences:
        assert sum(len(s.input_ids) for s in seq) <= 96 and sum(s.num_images for s in seq) <= 4


@pytest.mark.parametrize("cap", [16, 2])
def test_packing_efficiency_and_image_cap(data_dir, cap):
    model = tiny_model()
    stage = StageConfig(data=sources(data_dir), batch_size=4, seq_len=128, max_images_per_sequence=cap)
    data = StageData(stage, model.processor, seed=0)
    for _ in range(10):
        batch = next(data)
        assert batch["input_ids"].shape == (4, 128)
        assert batch["pixel_values"].shape[0] <= cap * 4
    if cap == 16:  # short samples fill the sequences
        assert data.packer.stats.efficiency(128) > 0.9
    else:  # the image cap, not the length, closes the sequences
        assert data.packer.stats.efficiency(128) < 0.5


def test_truncation_never_cuts_image_tokens(model):
    stats = SkipStats()
    sample = model.processor.encode_text("<image>" + " word" * 40, [image()])
    cut = fit(sample, 20, model.image_token_id, stats)
    assert len(cut.input_ids) == 20 and sum(t == model.image_token_id for t in cut.input_ids) == 4
    assert stats.truncated == 1 and stats.skipped == 0 and "1 truncated" in stats.report()
    record = Record(source="docs.jsonl", key="7", text=" word" * 30 + "<image>", images=[image()])
    late = encode_record(model.processor, record)
    assert fit(late, 20, model.image_token_id, stats) is None
    assert stats.counts["image tokens reach past seq_len=20"] == 1
    assert stats.examples["image tokens reach past seq_len=20"] == [f"docs.jsonl:7 ({len(late.input_ids)} tokens)"]
