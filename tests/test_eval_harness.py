"""Annotation readers, few-shot prompts, the harness, `mm1 eval` end to end and the lmms-eval adapter."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from mm1.cli import main
from mm1.config import ConfigError, EvalConfig, config_from_dict, to_dict
from mm1.data.annotations import Sample, read_annotations
from mm1.data.tokenizer import IMAGE_TOKEN, build_tokenizer
from mm1.eval import evaluate
from mm1.eval.fewshot import build_prompt, draw_support, encode, resolve_mode
from mm1.eval.harness import same_answer_shares
from mm1.eval.lmms_adapter import MM1Requests, cut_at
from mm1.eval.tasks import builtin_tasks, load_task
from mm1.model.mllm import MM1Model

TINY = {"model": {"encoder": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "layers": 2, "heads": 2,
                              "intermediate_size": 64},
                  "connector": {"type": "c-abstractor", "tokens": 4, "depth": 1},
                  "llm": {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 1024}},
        "tokenizer": {"vocab_size": 300}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    cfg = config_from_dict(TINY)
    torch.manual_seed(0)
    model = MM1Model(cfg, build_tokenizer(cfg.tokenizer, ["a red circle", "what colour is it? red"] * 20))
    path = tmp_path_factory.mktemp("model") / "m"
    model.eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model(model_dir) -> MM1Model:
    return MM1Model.from_pretrained(model_dir)


def _image(path: Path, colour=(200, 30, 30), size=(40, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path.name


def write_benchmarks(root: Path, n: int = 4) -> None:
    """COCO captions, VQAv2 and RefCOCO files in the built-in tasks' layout, val (with one bad record each) + train."""
    for split in ("val2014", "train2014"):
        names = [_image(root / "coco" / split / f"COCO_{split}_{i:012d}.jpg", (50 * i, 90, 200 - 40 * i))
                 for i in range(n)]
        captions = [{"image_id": i, "caption": c} for i in range(n) for c in (f"a red circle number {i}", "a shape")]
        questions = [{"question_id": 100 * (split == "val2014") + i, "image_id": i, "question": "what colour is it?"}
                     for i in range(n)]
        answers = [{"question_id": q["question_id"], "image_id": q["image_id"], "answer_type": "other",
                    "answers": [{"answer": "red"}] * 10, "multiple_choice_answer": "red"} for q in questions]
        if split == "val2014":
            captions.append({"image_id": 0, "caption": "   "})  # empty text
            questions.append({"question_id": 999, "image_id": 77, "question": "where?"})  # its image is missing
            answers.append({"question_id": 999, "image_id": 77, "answers": [{"answer": "here"}] * 10,
                            "multiple_choice_answer": "here"})
        (root / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "coco" / "annotations" / f"captions_{split}.json").write_text(json.dumps(
            {"images": [{"id": i, "file_name": f} for i, f in enumerate(names)], "annotations": captions}))
        (root / "vqav2").mkdir(exist_ok=True)
        (root / "vqav2" / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(
            json.dumps({"questions": questions}))
        (root / "vqav2" / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({"annotations": answers}))
    refs = [{"image": f"COCO_train2014_{i:012d}.jpg", "bbox": [4, 3, 20, 12], "sentences": ["the circle", "it"],
             "split": "val", "id": i} for i in range(n)]
    refs.append({"image": "COCO_train2014_000000000000.jpg", "bbox": [30, 20, 50, 50], "sentences": ["x"],
                 "split": "val", "id": 50})  # box outside the 40x30 image
    (root / "refcoco").mkdir(exist_ok=True)
    (root / "refcoco" / "refcoco.json").write_text(json.dumps(refs))


# ---- readers ----------------------------------------------------------------------------------------------------
def _reasons(data) -> list[tuple[str, str, str]]:
    return [(Path(s.file).name, s.record, s.reason) for s in data.skipped]


def test_coco_reader_counts_and_names_bad_records(tmp_path):
    ok = _image(tmp_path / "img" / "ok.jpg")
    (tmp_path / "caps.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": ok}, {"id": 2, "file_name": "gone.jpg"}, {"id": [3], "file_name": ok}],
        "annotations": [{"image_id": 1, "caption": "a red thing"}, {"image_id": 1, "caption": ""},
                        {"image_id": 9, "caption": "nobody's"}, {"image_id": 1, "caption": 7}, "junk"]}))
    data = read_annotations("coco-captions", tmp_path / "caps.json", tmp_path / "img")
    assert [(s.id, s.answers) for s in data.samples] == [("1", ["a red thing"])]
    assert _reasons(data) == [
        ("caps.json", "images record 1 (id 2)", "missing image"),
        ("caps.json", "images record 2 (id [3])", "wrong type"),
        ("caps.json", "annotations record 1 (image_id 1)", "empty text"),
        ("caps.json", "annotations record 2 (image_id 9)", "unknown image"),
        ("caps.json", "annotations record 3 (image_id 1)", "wrong type"),
        ("caps.json", "annotations record 4", "wrong type"),
    ]


def test_vqav2_refcoco_and_jsonl_readers(tmp_path):
    write_benchmarks(tmp_path)
    vqa = read_annotations("vqav2", tmp_path / "vqav2/v2_mscoco_val2014_annotations.json", tmp_path / "coco/val2014",
                           questions=str(tmp_path / "vqav2/v2_OpenEnded_mscoco_val2014_questions.json"),
                           image_pattern="COCO_val2014_{image_id:012d}.jpg")
    assert len(vqa.samples) == 4 and vqa.samples[0].answers == ["red"] * 10 and vqa.samples[0].target == "red"
    assert _reasons(vqa) == [("v2_OpenEnded_mscoco_val2014_questions.json", "record 4 (question_id 999)",
                              "missing image")]
    ground = read_annotations("refcoco", tmp_path / "refcoco/refcoco.json", tmp_path / "coco/train2014", split="val")
    assert [s.id for s in ground.samples][:2] == ["0:0", "0:1"] and len(ground.samples) == 8
    assert ground.samples[0].box == (4.0, 3.0, 24.0, 15.0) and ground.samples[0].size == (40, 30)
    assert ground.samples[0].target == "[100, 100, 600, 500]"  # pixels -> 0..999 bins of the 40x30 image
    assert _reasons(ground) == [("refcoco.json", "record 4 (id 50)", "bad box")]
    refer = read_annotations("refcoco", tmp_path / "refcoco/refcoco.json", tmp_path / "coco/train2014",
                             split="val", direction="refer")
    assert len(refer.samples) == 4 and refer.samples[0].question == "[100, 100, 600, 500]"
    assert refer.samples[0].answers == ["the circle", "it"]

    _image(tmp_path / "mc" / "a.png")
    lines = [{"image": "a.png", "question": "Which?", "options": ["cat", "dog"], "answer": "dog"},
             {"images": ["a.png", "a.png"], "question": "Same?", "answer": ["yes", "yeah"]},
             {"image": "b.png", "question": "?", "answer": "x"},
             {"image": "a.png", "question": "Which?", "options": ["cat", "dog"], "answer": "C"},
             {"image": "a.png", "question": "Which?", "options": "cat,dog", "answer": "A"},
             {"image": "a.png", "question": "", "answer": "x"}]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n"
    (tmp_path / "mc" / "val.jsonl").write_text(text)
    generic = read_annotations("jsonl", tmp_path / "mc" / "val.jsonl")
    assert [(s.answers, len(s.images)) for s in generic.samples] == [(["B"], 1), (["yes", "yeah"], 2)]
    assert _reasons(generic) == [("val.jsonl", "line 3", "missing image"), ("val.jsonl", "line 4", "bad answer"),
                                 ("val.jsonl", "line 5", "wrong type"), ("val.jsonl", "line 6", "empty text"),
                                 ("val.jsonl", "line 7", "invalid JSON")]


def test_jsonl_box_is_the_region_a_grounding_answer_must_hit(tmp_path):
    _image(tmp_path / "ui.png")  # the region's frame: the image's own pixels
    width, height = Image.open(tmp_path / "ui.png").size
    lines = [{"image": "ui.png", "question": "Where do I tap?", "answer": "[500, 500]", "box": [2, 3, 10, 12]},
             {"image": "ui.png", "question": "Where?", "answer": "[1, 1]", "box": [2, 3]},
             {"image": "ui.png", "question": "Where?", "answer": "[1, 1]", "box": [0, 0, width + 5, 4]},
             {"image": "ui.png", "question": "Where?", "answer": "[1, 1]", "box": [2, "3", 10, 12]}]
    (tmp_path / "ui.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    read = read_annotations("jsonl", tmp_path / "ui.jsonl")
    assert [(s.box, s.size) for s in read.samples] == [((2.0, 3.0, 10.0, 12.0), (width, height))]
    assert _reasons(read) == [("ui.jsonl", "line 2", "wrong type"), ("ui.jsonl", "line 3", "bad box"),
                              ("ui.jsonl", "line 4", "wrong type")]


def test_numbered_images_name_each_image_as_multi_image_data_does():
    task = load_task(Path(__file__).parents[1] / "recipes/tasks/world-multi-image.yaml").config
    query = Sample("q", ["a.png", "b.png", "c.png"], question="Which image has more shapes?", answers=["Image 2"])
    numbered = f"Image 1: {IMAGE_TOKEN}\nImage 2: {IMAGE_TOKEN}\nImage 3: {IMAGE_TOKEN}\n"
    assert build_prompt(task, query, [], "chat").messages[-1]["content"] == numbered + "Which image has more shapes?"
    # With options, the turn lists them and asks for the letter, as the world's SFT turns with options do.
    choice = dataclasses.replace(query, options=["Image 1", "Image 2", "Image 3"], answers=["B"])
    assert build_prompt(task, choice, [], "chat").messages[-1]["content"] == (
        numbered + "Which image has more shapes?\nA. Image 1\nB. Image 2\nC. Image 3\n"
        "Answer with the option's letter.")
    support = dataclasses.replace(choice, id="s", images=["d.png", "e.png", "f.png"], target="B")
    assert [m["content"].endswith("letter.") for m in build_prompt(task, query, [support], "chat").messages] == [
        True, False, False]


def test_unreadable_annotation_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_annotations("coco-captions", tmp_path / "nothing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_annotations("refcoco", tmp_path / "bad.json")


# ---- tasks and prompts ------------------------------------------------------------------------------------------
def test_builtin_tasks_load_and_bad_task_files_fail_clearly(tmp_path):
    assert {"coco_captions", "vqav2", "refcoco", "mcq", "docvqa"} <= set(builtin_tasks())
    for name in builtin_tasks():
        assert load_task(name).config.name == name
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        load_task("nope")
    task = {"name": "t", "data": {"format": "jsonl", "annotations": "x.jsonl"}, "metric": "bleu",
            "fewshot_format": "{question} {answer}", "instruction": "{question}"}
    for change, error in [({}, "unknown metric 'bleu'"), ({"metric": "cider", "instruction": "{colour}"}, "['colour']"),
                          ({"metric": "cider", "choice_instruction": "{letter}"}, "choice_instruction uses ['letter']"),
                          ({"metric": "cider", "fewshot_format": "{question}"}, "must contain {answer}"),
                          ({"metric": "cider", "prompt": "x"}, "prompt: unknown key")]:
        (tmp_path / "t.yaml").write_text(json.dumps(task | change))
        with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("{", r"\{")):
            load_task(tmp_path / "t.yaml")


def _pool(n: int = 12) -> list[Sample]:
    return [Sample(f"s{i}", [f"img{i}.png"], question=f"question {i}?", answers=[f"answer{i}"], target=f"answer{i}")
            for i in range(n)]


@pytest.mark.parametrize("k", [0, 1, 4, 8])
def test_fewshot_prompts_hold_k_examples_and_never_the_query(k):
    task = load_task("vqav2").config
    pool = _pool()
    query = pool[3]
    pool.append(Sample("other-question-same-image", ["img3.png"], question="q", answers=["answer3"], target="answer3"))
    for seed in range(20):
        support = draw_support(query, pool, k, seed)
        assert len({s.id for s in support}) == k
        assert all(s.id not in (query.id, "other-question-same-image") for s in support)
        assert draw_support(query, pool, k, seed) == support  # seeded
        base = build_prompt(task, query, support, "base")
        assert base.text.count("Short answer:") == k + 1 and base.text.count(IMAGE_TOKEN) == k + 1
        assert base.text.endswith(f"{query.question} Short answer:") and "answer3" not in base.text
        chat = build_prompt(task, query, support, "chat")
        assert len(chat.messages) == 2 * k + 1 and chat.messages[-1]["role"] == "user"
        assert all("answer3" not in m["content"] for m in chat.messages)
    with pytest.raises(ValueError, match="fewer than 13"):
        draw_support(query, pool, 13, 0)


def test_encoded_base_prompt_has_its_images_and_no_eos(model, tmp_path):
    pool = [Sample(s.id, [str(tmp_path / s.images[0])], s.question, s.answers, s.target) for s in _pool(5)]
    for sample in pool:
        _image(Path(sample.images[0]))
    task = load_task("vqav2").config
    prompt = build_prompt(task, pool[0], draw_support(pool[0], pool, 2, 0), "base")
    enc = encode(model.processor, prompt, task.frames)
    assert enc.input_ids[-1] != model.processor.tokenizer.eos_token_id
    assert enc.input_ids.count(model.processor.image_token_id) == 3 * model.processor.tokens_per_view
    assert enc.pixel_values.shape[0] == 3


def test_mode_rule(model):
    tokenizer = model.processor.tokenizer
    assert resolve_mode("auto", 0, tokenizer) == "chat" and resolve_mode("auto", 4, tokenizer) == "base"
    assert resolve_mode("base", 0, tokenizer) == "base" and resolve_mode("chat", 8, tokenizer) == "chat"
    assert resolve_mode("auto", 0, SimpleNamespace(chat_template=None)) == "base"


# ---- harness and CLI --------------------------------------------------------------------------------------------
def test_evaluate_in_process_restores_training_mode(model, tmp_path):
    write_benchmarks(tmp_path)
    settings = EvalConfig(tasks=["vqav2"], shots=[0, 1], limit=2, data_root=str(tmp_path))  # a recipe's `eval:`
    model.train()
    try:
        summary = evaluate(model, **to_dict(settings), log=None)
    finally:
        model.eval()
    assert summary["scores"].keys() == {"vqav2/0-shot", "vqav2/1-shot"}
    assert [(r["mode"], r["n"], r["skipped"]) for r in summary["results"]] == [
        ("chat", 2, {"missing image": 1}), ("base", 2, {"missing image": 1})]
    assert all(0.0 <= score <= 1.0 for score in summary["scores"].values())


def test_mm1_eval_end_to_end(model_dir, tmp_path, capsys):
    write_benchmarks(tmp_path / "data")
    out = tmp_path / "out"
    code = main(["eval", str(model_dir), "--tasks", "coco_captions,vqav2,refcoco", "--shots", "0,2", "--limit", "3",
                 "--data-root", str(tmp_path / "data"), "--out", str(out), "--batch-size", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| task | shots | mode |" in printed and "| refcoco | 2 | base | grounding-accuracy |" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["results"]) == 6 and all(r["n"] == 3 for r in summary["results"])
    named = {(s["task"], Path(s["file"]).name, s["reason"]) for s in summary["skipped"]}
    assert named == {("coco_captions", "captions_val2014.json", "empty text"),
                     ("vqav2", "v2_OpenEnded_mscoco_val2014_questions.json", "missing image"),
                     ("refcoco", "refcoco.json", "bad box")}
    for row in summary["results"]:
        lines = (out / "predictions" / f"{row['task']}_{row['shots']}shot.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert len(records) == 3 and all(len(r["support"]) == row["shots"] for r in records)
        assert math.isclose(sum(r["score"] for r in records) / 3, row["score"], abs_tol=1e-9)
    grounding = next(r for r in summary["results"] if r["task"] == "refcoco")
    assert grounding["details"]["no_region"] + grounding["details"]["malformed"] <= 3
    assert all(0 < r["details"]["same_answer"] <= 1 for r in summary["results"] if r["task"] == "vqav2")
    report = (out / "report.md").read_text()
    assert "![scores](scores.png)" in report and "## Skipped records" in report and "refcoco.json" in report
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"


def test_same_answer_shares_tell_an_image_blind_model_from_the_references():
    samples = [Sample(str(i), question=q, target=t) for i, (q, t) in enumerate(
        [("colour?", "red"), ("colour?", "blue"), ("colour?", "red"), ("colour?", "green"),
         ("shape?", "circle"), ("shape?", "square"), ("asked once", "x")])]
    blind = ["red", "red", "red", "red", "circle", "circle", "y"]  # one answer per question, whatever the image
    shares = same_answer_shares(samples, blind)
    assert shares == {"same_answer": 1.0, "same_answer_refs": pytest.approx(3 / 6)}  # 2 of 4 reds + 1 of 2
    assert same_answer_shares(samples, [s.target for s in samples])["same_answer"] == pytest.approx(3 / 6)
    assert same_answer_shares(samples[-1:], ["x"]) == {}  # no question asked twice


def test_mm1_eval_reports_bad_arguments(model_dir, capsys):
    assert main(["eval", str(model_dir)]) == 2
    assert "no tasks" in capsys.readouterr().err
    assert main(["eval", str(model_dir), "--tasks", "nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err


# ---- lmms-eval adapter ------------------------------------------------------------------------------------------
def _requests(kind: str, rows: list[tuple]) -> list[SimpleNamespace]:
    """Stand-ins for lmms_eval.api.instance.Instance: only `args` is read."""
    return [SimpleNamespace(request_type=kind, args=row) for row in rows]


def test_lmms_adapter_answers_stand_in_requests(model):
    adapter = MM1Requests(model=model, batch_size=2)
    docs = [{"image": Image.new("RGB", (40, 30), (i * 60, 0, 0)), "answer": "red"} for i in range(3)]
    adapter.task_dict = {"toy": {"test": docs}}
    visual = lambda doc: [doc["image"]]  # noqa: E731
    greedy = {"max_new_tokens": 4, "until": ["\n"]}
    out = adapter.generate_until(_requests("generate_until", [
        ("What colour?", greedy, visual, 0, "toy", "test"),
        ("Describe <image> briefly.", {"max_new_tokens": 2, "temperature": 0}, visual, 1, "toy", "test"),
        ("What colour?", greedy, visual, 2, "toy", "test"),
        ("Text only.", greedy, lambda doc: [], 0, "toy", "test"),
    ]))
    assert len(out) == 4 and all(isinstance(text, str) and "\n" not in text for text in out)
    assert out[0] == adapter.generate_until(_requests("generate_until", [("What colour?", greedy, visual, 0, "toy",
                                                                           "test")]))[0]
    scores = adapter.loglikelihood(_requests("loglikelihood", [
        ("What colour?", " red", visual, 0, "toy", "test"),
        ("What colour?", lambda doc: doc["answer"], visual, 1, "toy", "test"),
    ]))
    assert all(math.isfinite(lp) and lp < 0 and isinstance(greedy_flag, bool) for lp, greedy_flag in scores)
    # The greedy continuation itself is reported as greedy, with the log-probability of its tokens.
    enc = adapter._inputs("What colour?", visual, 0, "toy", "test")
    batch = model.processor.collate([enc], padding_side="left")
    ids = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=3)[0]
    text = model.processor.decode(ids.tolist())
    if model.processor.tokenizer(text, add_special_tokens=False)["input_ids"] == ids.tolist():
        assert adapter.loglikelihood(_requests("loglikelihood", [("What colour?", text, visual, 0, "toy",
                                                                    "test")]))[0][1] is True
    with pytest.raises(NotImplementedError):
        adapter.generate_until_multi_round([])
    assert cut_at("yes\nQuestion: next", ["\n"]) == "yes" and cut_at("a. b", [".", "\n"]) == "a"


def test_lmms_adapter_is_an_lmms_model_when_lmms_eval_is_installed(model):
    lmms_model = pytest.importorskip("lmms_eval.api.model")
    from mm1.eval import lmms_adapter

    adapter = lmms_adapter.MM1(model=model)
    assert isinstance(adapter, lmms_model.lmms) and adapter.rank == 0 and adapter.world_size == 1
    assert lmms_adapter.manifest().simple_class_path == "mm1.eval.lmms_adapter.MM1"
