"""The synthetic world: reproducible bytes, counts, held-out separation, readable formats, true boxes, small text."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from mm1.cli import main
from mm1.data.coords import from_bins, parse_regions, text_to_box, text_to_point
from mm1.data.readers import open_reader
from mm1.data.world import VERSION, ensure, generate
from mm1.data.world.base import COLOURS, HELD_OUT_PAIRS, HELD_OUT_WORDS, HELDOUT, SHAPES, TRAIN, TRAIN_PAIRS
from mm1.data.world import ui
from mm1.data.world.conversations import CATEGORIES
from mm1.data.world.documents import QUIZ_ANSWER_STYLES, quiz
from mm1.data.world.scenes import sample_scene
from mm1.data.world.video import FRAMES
from mm1.eval.metrics import iou

SEED = 7
EVAL_TASKS = ("ocr", "text_rich", "multi_image", "video", "ui")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    generate(out, seed=SEED, size="small")
    return out


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def shard_samples(world: Path, part: str, split: str) -> list[dict]:
    """Samples of a WebDataset part read with tarfile, each with exactly the png, txt and json members."""
    samples = []
    for shard in sorted((world / part).glob(f"{split}-*.tar")):
        members = defaultdict(dict)
        with tarfile.open(shard) as tar:
            for info in tar.getmembers():
                key, ext = info.name.split(".", 1)
                members[key][ext] = tar.extractfile(info).read()
        for key, files in members.items():
            assert set(files) == {"png", "txt", "json"}, (shard, key)
            samples.append({"key": key, "image": Image.open(io.BytesIO(files["png"])),
                            "text": files["txt"].decode(), "meta": json.loads(files["json"])})
    return samples


def sft(world: Path, split: str) -> list[dict]:
    return json.loads((world / "sft" / f"{split}.json").read_text())


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_bytes_other_seed_differs(world, tmp_path):
    generate(tmp_path / "again", seed=SEED, size="small")
    assert digest(tmp_path / "again") == digest(world)
    assert main(["data", "synth", "--out", str(tmp_path / "other"), "--seed", str(SEED + 1), "--size", "small"]) == 0
    ours, other = digest(world), digest(tmp_path / "other")
    assert sum(other.get(path) != sha for path, sha in ours.items()) > 0.9 * len(ours)
    with pytest.raises(SystemExit, match="not empty"):  # never writes over an earlier world
        main(["data", "synth", "--out", str(tmp_path / "other"), "--size", "small"])


def test_manifest_counts_match_files(world):
    manifest = json.loads((world / "world.json").read_text())
    counts = manifest["counts"]
    for split in ("train", "heldout"):
        for part in ("captions", "ocr"):
            assert len(shard_samples(world, part, split)) == counts[f"{part}/{split}"] > 0
        assert pq.read_metadata(world / "interleaved" / f"{split}.parquet").num_rows == counts[f"interleaved/{split}"]
        assert len(jsonl(world / "text" / f"{split}.jsonl")) == counts[f"text/{split}"]
        records = sft(world, split)
        assert len(records) == counts[f"sft/{split}"]
        assert {c: sum(r["category"] == c for r in records) for c in CATEGORIES} == manifest["sft_categories"][split]
    assert len(jsonl(world / "interleaved" / "train-paths.jsonl")) == counts["interleaved/train-paths"]
    assert len(list((world / "captions").glob("train-*.tar"))) == -(-counts["captions/train"] // manifest["shard_size"])
    for folder in ("eval", "eval/support"):
        root = world / folder
        coco = json.loads((root / "coco_captions.json").read_text())
        assert len(coco["images"]) == counts[f"{folder}/captions"]
        refs = defaultdict(int)
        for annotation in coco["annotations"]:
            refs[annotation["image_id"]] += 1
        assert set(refs) == {im["id"] for im in coco["images"]} and min(refs.values()) >= 3
        questions = json.loads((root / "vqa_questions.json").read_text())["questions"]
        answers = json.loads((root / "vqa_annotations.json").read_text())["annotations"]
        assert len(questions) == len(answers) == counts[f"{folder}/vqa"]
        assert all(len(a["answers"]) == 10 and a["answers"][0]["answer"] == a["multiple_choice_answer"]
                   for a in answers)
        assert len(json.loads((root / "refcoco.json").read_text())) == counts[f"{folder}/refcoco"]
        for task in EVAL_TASKS:
            rows = jsonl(root / f"{task}.jsonl")
            assert len(rows) == counts[f"{folder}/{task}"]
            for row in rows:
                assert "options" not in row or row["answer"] in row["options"]
                media = [row["image"]] if "image" in row else row.get("images", []) + [row.get("video")]
                assert all((root / m).exists() for m in media if m)
        for image in coco["images"]:
            assert Image.open(root / image["file_name"]).size == (image["width"], image["height"])


def test_eval_ocr_reads_one_held_out_word_and_ui_taps_carry_the_button(world):
    for row in jsonl(world / "eval" / "ocr.jsonl"):
        word, *number = row["answer"].split()
        assert row["task"] == "ocr-sign" and word.lower() in HELDOUT.words and all(n.isdigit() for n in number)
    for row in jsonl(world / "eval" / "ui.jsonl"):
        size = Image.open(world / "eval" / row["image"]).size
        (region,), errors = parse_regions(row["answer"])
        x, y = (from_bins(v, size[i]) for i, v in enumerate(region.coords))
        x1, y1, x2, y2 = row["box"]
        assert row["task"] == "tap" and not errors and x1 <= x <= x2 and y1 <= y <= y2


def test_training_signs_include_made_up_words_and_documents_include_quizzes(world):
    signs = [s["text"].split()[0].lower() for s in shard_samples(world, "ocr", "train") if s["meta"]["kind"] == "sign"]
    made_up = [w for w in signs if w not in TRAIN.words]
    assert made_up and signs != made_up
    assert not [w for w in made_up for held in HELDOUT.words if held in w]
    texts = pq.read_table(world / "interleaved" / "train.parquet").column("texts").to_pylist()
    quizzes = [row for row in texts if any(t and t.startswith("Question: ") for t in row)]
    after_images = [row[i] for row in quizzes for i in range(1, len(row)) if row[i - 1] is None]
    assert after_images and all(re.fullmatch(r"Question: .+\? Answer: .+", t) for t in after_images)


def test_quiz_answers_keep_one_style_per_document_and_reach_eight_shot_length():
    """The format-following signal few-shot evaluation relies on: a worksheet answers in one style throughout, every
    style occurs, worksheets start with a title or, as a 0-shot prompt does, with a picture, and are as long as an
    8-shot prompt (9 pictures)."""
    patterns = [re.escape(style).replace(r"\{\}", ".+") for style in QUIZ_ANSWER_STYLES]
    rng = random.Random(0)
    styles, lengths, titled = set(), set(), set()
    for _ in range(300):
        doc = quiz(rng, TRAIN)
        start = int(isinstance(doc[0], str))  # 1 after a title
        titled.add(start == 1)
        answers = [t.split(" Answer: ", 1)[1] for t in doc[start + 1::2]]
        # the bare style matches anything: an answer's style is the most specific one that matches
        used = {max(i for i, pattern in enumerate(patterns) if re.fullmatch(pattern, answer)) for answer in answers}
        assert len(used) == 1, answers
        styles |= used
        lengths.add(len(doc[start::2]))
    assert styles == set(range(len(QUIZ_ANSWER_STYLES))) and lengths == set(range(2, 10)) and titled == {True, False}


def test_an_existing_world_is_used_only_when_it_is_the_one_asked_for(world, tmp_path):
    lines = []
    assert ensure(world, SEED, "small", log=lines.append) == world and not lines
    with pytest.raises(ValueError, match=r"another world: size 'small' \(wanted 'default'\)"):
        ensure(world, SEED, "default")
    stale = tmp_path / "stale"
    stale.mkdir()
    manifest = json.loads((world / "world.json").read_text())
    (stale / "world.json").write_text(json.dumps({**manifest, "version": 1, "seed": SEED + 1}))
    with pytest.raises(ValueError, match=rf"seed {SEED + 1} \(wanted {SEED}\), version 1 \(wanted {VERSION}\)"):
        ensure(stale, SEED, "small")


def side_text(world: Path, split: str) -> str:
    """Every piece of text of one side of the world: training data and the support set, or held-out and eval/."""
    texts = [s["text"] + json.dumps(s["meta"]) for part in ("captions", "ocr") for s in shard_samples(world, part, split)]
    texts += [t for row in pq.read_table(world / "interleaved" / f"{split}.parquet").column("texts").to_pylist()
              for t in row if t]
    files = [world / "text" / f"{split}.jsonl", world / "sft" / f"{split}.json"]
    folder = world / "eval" / ("support" if split == "train" else "")
    files += [p for p in folder.iterdir() if p.suffix in (".json", ".jsonl")]
    if split == "train":
        files.append(world / "interleaved" / "train-paths.jsonl")
    return "\n".join(texts + [p.read_text() for p in files]).lower()


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_held_out_pairs_and_words_never_cross(world, split):
    own, other = (TRAIN, HELDOUT) if split == "train" else (HELDOUT, TRAIN)
    text = side_text(world, split)
    named = {p for p in own.pairs + other.pairs if re.search(rf"\b{p[0]} {p[1]}", text)}
    tokens = set(re.findall(r"[a-z]+", text))
    assert named & set(own.pairs) and not named & set(other.pairs)
    assert tokens & set(own.words) and not tokens & set(other.words)
    drawn = {(o["colour"], o["shape"]) for s in shard_samples(world, "captions", split) for o in s["meta"]["objects"]}
    assert drawn and drawn <= set(own.pairs)


def test_manifest_lists_held_out(world):
    manifest = json.loads((world / "world.json").read_text())
    held, train = manifest["held_out"], manifest["train"]
    assert {tuple(p) for p in held["colour_shape"]} == set(HELD_OUT_PAIRS)
    assert not {tuple(p) for p in held["colour_shape"]} & {tuple(p) for p in train["colour_shape"]}
    assert set(held["words"]) == set(HELD_OUT_WORDS) and not set(held["words"]) & set(train["words"])
    # Composition, not new concepts: every colour and every shape is still seen in training.
    assert {c for c, _ in TRAIN_PAIRS} == set(COLOURS) and {s for _, s in TRAIN_PAIRS} == set(SHAPES)


def test_sft_markers_match_media_and_files_exist(world):
    for split in ("train", "heldout"):
        records = sft(world, split)
        assert {r["category"] for r in records} == set(CATEGORIES)
        for r in records:
            turns = r["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
            text = "".join(t["value"] for t in turns)
            images = [r["image"]] if "image" in r else r.get("images", [])
            assert text.count("<image>") == len(images), r["id"]
            assert text.count("<video>") == ("video" in r), r["id"]
            assert all((world / "sft" / p).is_file() for p in images)
            if "video" in r:
                path = world / "sft" / r["video"]
                frames = Image.open(path).n_frames if path.suffix == ".gif" else len(list(path.glob("frame_*.png")))
                assert frames == FRAMES  # a GIF writer merging identical frames would break uniform sampling
            if r["category"] == "text-only":
                assert not set(r) & {"image", "images", "video"}


def colour_at(image: Image.Image, x: float, y: float) -> tuple:
    return image.convert("RGB").getpixel((int(x), int(y)))


GROUND = re.compile(rf"(?:Where is|Point to) the (?P<colour>{'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
                    r"(?P<box>\? Answer with a bounding box)?\.$")
BUTTON = re.compile(r"(?:<image>\n)?Where is the \w+ button\? Answer with a bounding box\.$")


def test_grounding_boxes_cover_the_drawn_object(world):
    for split in ("train", "heldout"):
        for sample in shard_samples(world, "captions", split):
            image, meta = sample["image"].convert("RGB"), sample["meta"]
            for obj in meta["objects"]:
                x1, y1, x2, y2 = obj["box"]
                assert 0 <= x1 < x2 <= meta["width"] and 0 <= y1 < y2 <= meta["height"]
                inside = np.asarray(image)[y1:y2, x1:x2]
                share = (inside == COLOURS[obj["colour"]]).all(-1).mean()
                assert share > 0.4 and colour_at(image, (x1 + x2) / 2, (y1 + y2) / 2) == COLOURS[obj["colour"]]
    checked = 0
    for split in ("train", "heldout"):
        for r in sft(world, split):
            if "image" not in r:
                continue
            image = Image.open(world / "sft" / r["image"])
            turns = r["conversations"]
            for question, answer in zip(turns[::2], turns[1::2]):
                if BUTTON.match(question["value"]):  # a screen: the box is mostly the button's colour
                    x1, y1, x2, y2 = (round(v) for v in text_to_box(answer["value"], image.size))
                    assert (np.asarray(image.convert("RGB"))[y1:y2, x1:x2] == ui.BUTTON).all(-1).mean() > 0.6
                    checked += 1
                asked = GROUND.match(question["value"].removeprefix("<image>\n"))
                if asked is None:
                    continue
                region = answer["value"]
                if asked.group("box"):
                    x1, y1, x2, y2 = text_to_box(region, image.size)
                    assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height
                    point = (x1 + x2) / 2, (y1 + y2) / 2
                else:
                    point = text_to_point(region, image.size)
                assert colour_at(image, *point) == COLOURS[asked.group("colour")], (r["id"], question["value"])
                checked += 1
    for ref in json.loads((world / "eval" / "refcoco.json").read_text()):
        image = Image.open(world / "eval" / ref["image"])
        x, y, w, h = ref["bbox"]
        assert x >= 0 and y >= 0 and x + w <= image.width and y + h <= image.height
        assert colour_at(image, x + w / 2, y + h / 2) == COLOURS[ref["sentences"][0].split()[1]]
        checked += 1
    assert checked >= 10


def test_webdataset_reads_the_shards(world):
    for part in ("captions", "ocr"):
        urls = [str(p) for p in sorted((world / part).glob("train-*.tar"))]
        samples = list(wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None))
        assert len(samples) == len(shard_samples(world, part, "train"))
        for sample in samples:
            meta = json.loads(sample["json"])
            assert meta["key"] == sample["__key__"] and len(meta["key"]) == 9 and sample["txt"]
            assert Image.open(io.BytesIO(sample["png"])).size == (meta["width"], meta["height"])
        if part == "captions":
            assert {json.loads(s["json"])["style"] for s in samples} == {"short", "dense"}


def test_world_questions_are_single_questions_of_the_asked_kinds_on_training_pairs(world):
    """The lookup stage's source: one question per new training-split scene, drawn as read, the same on every read."""
    def read(**options):
        return list(open_reader("world-questions", str(world), records=300, **options))

    kinds = ["position", "ground-box"]
    records = read(kinds=kinds)
    assert len(records) == 300 and [r.messages for r in records] == [r.messages for r in read(kinds=kinds)]
    thirds = {f"{row} {col}".strip() or "centre" for row in ("top", "", "bottom") for col in ("left", "", "right")}
    seen, expressions = set(), set()
    for record in records:
        question, answer = record.messages
        assert question["content"].startswith("<image>\n") and question["content"].count("<image>") == 1
        assert len(record.images) == 1 and Image.open(io.BytesIO(record.images[0])).size[0] > 0
        named = re.search(rf"({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b", question["content"])
        assert (named[1], named[2]) in TRAIN_PAIRS
        if "bounding box" in question["content"]:
            seen.add("ground-box")
            asked, name = question["content"].split("\n")[1], f"{named[1]} {named[2]}"
            expressions.add("name" if asked.startswith(f"Where is the {name}?") else
                            "place" if asked.startswith(f"Where is {name} ") else
                            "size" if re.match(rf"Where is the (small|medium|large) {name}\?", asked) else asked)
            assert text_to_box(answer["content"], Image.open(io.BytesIO(record.images[0])).size)
        else:
            seen.add("position")
            assert answer["content"] in thirds
    assert seen == set(kinds)  # each kind drawn, in shares near its 1/2
    # named in the three ways the held-out referring expressions name objects (evaluation.py)
    assert expressions == {"name", "place", "size"}
    assert 100 < sum("bounding box" in r.messages[0]["content"] for r in records) < 200
    assert len({r.messages[0]["content"] for r in read()}) > 30  # every scene question by default
    with pytest.raises(ValueError, match=r"unknown question kinds \['colr'\]"):
        read(kinds=["colr"])
    with pytest.raises(FileNotFoundError, match="world.json does not exist"):
        list(open_reader("world-questions", str(world / "captions")))


def test_world_captions_are_captioned_training_scenes_of_the_asked_object_count(world):
    """A caption stream drawn as read, in the world's caption styles; `objects: 1` gives one-object scenes."""
    def read(**options):
        return list(open_reader("world-captions", str(world), records=200, **options))

    def named(record):
        return re.findall(rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b", record.text)

    single = read(objects=1)
    assert len(single) == 200 and [r.text for r in single] == [r.text for r in read(objects=1)]
    for record in single:
        assert record.text.startswith("<image>") and record.text.count("<image>") == 1
        assert len(record.images) == 1 and Image.open(io.BytesIO(record.images[0])).size[0] > 0
        assert len(set(named(record))) == 1 and named(record)[0] in TRAIN_PAIRS
    assert 30 < sum(r.text.startswith("<image>The image shows") for r in single) < 90  # dense share 0.3
    assert max(len(set(named(r))) for r in read()) > 1  # 1-5 objects by default
    for bad in (0, 6, "two", True):
        with pytest.raises(ValueError, match="a scene holds 1 to 5 objects"):
            read(objects=bad)


def test_world_signs_are_one_sign_to_read_of_the_asked_letters(world):
    """The reading curriculum's source: a sign and "What does the sign say?" per record, drawn as read; with
    `letters`, made-up strings of that many letters only; never a held-out word."""
    def read(**options):
        return list(open_reader("world-signs", str(world), records=200, **options))

    single = read(letters=[1, 1])
    assert len(single) == 200 and [r.messages for r in single] == [r.messages for r in read(letters=[1, 1])]
    for record in single:
        question, answer = record.messages
        assert question["content"] == "<image>\nWhat does the sign say?" and len(record.images) == 1
        assert re.fullmatch(r"[A-Z]( \d{1,2})?", answer["content"])
        width, height = Image.open(io.BytesIO(record.images[0])).size
        assert width == height or " " in answer["content"]  # one letter fills a fixed share of a square sign
    assert len({r.messages[1]["content"][0] for r in single}) > 20  # the alphabet, not a few letters
    words = [r.messages[1]["content"].split(" ")[0] for r in read(letters=[3, 4])]
    assert {len(w) for w in words} == {3, 4}
    default = [r.messages[1]["content"].split(" ")[0].lower() for r in read()]
    # the world's own signs: training words and made-up strings, about half each
    assert 50 < sum(w in TRAIN.words for w in default) < 150
    assert not any(held in w for w in default + [w.lower() for w in words] for held in HELD_OUT_WORDS)
    for bad in ([0, 2], [3, 2], [1], "one", [1.0, 2], [True, 2]):
        with pytest.raises(ValueError, match="option letters is"):
            read(letters=bad)


def check_interleaved(texts: list, images: list, load) -> None:
    assert len(texts) == len(images) and images
    assert all((t is None) != (i is None) for t, i in zip(texts, images))
    assert all(load(i).size[0] > 0 for i in images if i is not None)
    assert any(i is not None for i in images) and any(t is not None for t in texts)


def test_interleaved_rows_are_parallel_lists(world):
    for split in ("train", "heldout"):
        table = pq.read_table(world / "interleaved" / f"{split}.parquet")
        assert table.column_names == ["texts", "images"]
        for texts, images in zip(table.column("texts").to_pylist(), table.column("images").to_pylist()):
            check_interleaved(texts, images, lambda b: Image.open(io.BytesIO(b)))
    folder = world / "interleaved"
    for row in jsonl(folder / "train-paths.jsonl"):
        check_interleaved(row["texts"], row["images"], lambda p: Image.open(folder / p))


def test_small_text_needs_high_resolution(world):
    """Receipt and page glyphs are legible at native size and under 3 px tall once the image is one 64 px view."""
    kinds = set()
    for sample in shard_samples(world, "ocr", "train") + shard_samples(world, "ocr", "heldout"):
        image, meta = sample["image"].convert("L"), sample["meta"]
        kinds.add(meta["kind"])
        assert sample["text"] == "\n".join(line["text"] for line in meta["lines"])
        heights = [line["box"][3] - line["box"][1] for line in meta["lines"]]
        at_64 = max(heights) * 64 / max(image.size)
        if meta["kind"] == "sign":
            assert at_64 > 4  # large text stays readable at low resolution
            continue
        assert at_64 < 3 and min(heights) >= 5  # 5: the x-height of a line without ascenders
        for line in meta["lines"]:
            x1, y1, x2, y2 = line["box"]
            ink = (np.asarray(image)[y1:y2, x1:x2] < 128).sum()
            assert ink >= 2 * len(line["text"].replace(" ", "")), line  # the glyphs are really there
    assert kinds == {"sign", "receipt", "page"}


def test_ui_taps_need_the_screen_no_fixed_point_hits_most_buttons():
    rng = HELDOUT.rng(SEED, "ui-blind")
    taps = [next(q for q in ui.screen(rng, HELDOUT)[1] if q.task == "tap") for _ in range(300)]
    assert all(ui.HEIGHT - 16 >= q.box[3] and q.box[2] - q.box[0] >= 56 for q in taps)
    # The best single point on a 10-px grid, as an image-blind model would answer every tap.
    best = max(sum(x1 <= x < x2 and y1 <= y < y2 for x1, y1, x2, y2 in (q.box for q in taps))
               for x in range(0, ui.WIDTH, 10) for y in range(0, ui.HEIGHT, 10))
    assert best / len(taps) < 0.3


def test_grounding_needs_the_image_no_fixed_box_hits():
    """The chance level of the grounding row: the best single box an image-blind model could give every time."""
    rng = HELDOUT.rng(SEED, "ground-blind")
    boxes = []
    for _ in range(300):
        scene = sample_scene(rng, HELDOUT)
        boxes.append([v / scene.size[i % 2] for i, v in enumerate(rng.choice(scene.objects).box)])
    corners, sides = np.linspace(0, 0.8, 17), np.linspace(0.1, 0.4, 7)
    best = max(sum(iou((x, y, x + w, y + w), box) >= 0.5 for box in boxes)
               for x in corners for y in corners for w in sides) / len(boxes)
    assert 0 < best < 0.1
