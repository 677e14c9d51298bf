"""Evaluation sets in the standard formats (COCO captions, VQA v2, RefCOCO) plus JSONL for the rest.

Written twice: the held-out benchmark (held-out pairs and words, `eval/`) and a few-shot support set from the
training distribution (`eval/support/`) for prompting base models with in-context examples.
"""

from __future__ import annotations

import random
from pathlib import Path

from mm1.data.world import multi_image, text_rich, ui, video
from mm1.data.world.base import QA, Split
from mm1.data.world.scenes import Scene, questions, referring_expressions, render, sample_scene, short_captions
from mm1.data.world.writers import Media, write_json, write_jsonl

REFS_PER_IMAGE = 5  # COCO has 5 reference captions per image
QUESTIONS_PER_IMAGE = 2


def _entry(media: dict, qa: QA, index: int) -> dict:
    entry = {"id": index, **media, "question": qa.question, "answer": qa.answer, "task": qa.task}
    entry |= {"box": list(qa.box)} if qa.box else {}
    return entry | ({"options": list(qa.options)} if qa.options else {})


def _first(qa: list[QA], category: str) -> QA:
    return next(q for q in qa if q.category == category)


def _referring(scene: Scene, rng: random.Random, path: str, split: Split, index: int) -> dict:
    obj = rng.choice(scene.objects)
    x1, y1, x2, y2 = obj.box
    return {"ref_id": index, "image": path, "width": scene.width, "height": scene.height,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "category": obj.shape, "split": split.name,
            "sentences": referring_expressions(scene, obj)}


def write_scenes(root: Path, split: Split, seed: int, n: int) -> dict[str, int]:
    """COCO captions, VQA questions/annotations and RefCOCO referring expressions over the same scenes."""
    rng, media = split.rng(seed, "eval-scenes"), Media(root)
    images, captions, vqa_q, vqa_a, refs = [], [], [], [], []
    for i in range(n):
        scene = sample_scene(rng, split)
        path = media.image(render(scene), f"images/scenes/{i:06d}.png")
        images.append({"id": i, "file_name": path, "width": scene.width, "height": scene.height})
        captions += [{"id": len(captions) + k, "image_id": i, "caption": c}
                     for k, c in enumerate(short_captions(scene, rng)[:REFS_PER_IMAGE])]
        for qa in questions(scene, rng, split)[:QUESTIONS_PER_IMAGE]:
            qid = len(vqa_q)
            vqa_q.append({"question_id": qid, "image_id": i, "question": qa.question})
            vqa_a.append({"question_id": qid, "image_id": i, "question_type": qa.task, "answer_type": qa.answer_type,
                          "multiple_choice_answer": qa.answer,
                          "answers": [{"answer": qa.answer, "answer_confidence": "yes", "answer_id": k + 1}
                                      for k in range(10)]})
        refs.append(_referring(scene, rng, path, split, i))
    write_json(root / "coco_captions.json", {"images": images, "annotations": captions})
    # `images` repeats coco_captions.json's list so the VQA files stand alone (image_id -> file_name).
    write_json(root / "vqa_questions.json", {"images": images, "questions": vqa_q})
    write_json(root / "vqa_annotations.json", {"annotations": vqa_a})
    write_json(root / "refcoco.json", refs)
    return {"captions": len(images), "vqa": len(vqa_q), "refcoco": len(refs)}


def _ocr(rng: random.Random, split: Split, media: Media, i: int) -> tuple[dict, QA]:
    """Reading one rendered word (a sign), the OCR task of the issue's targets."""
    doc = text_rich.sign(rng, split)
    return {"image": media.image(doc.image, f"images/ocr/{i:06d}.png")}, _first(doc.qa, "text-rich")


def _text_rich(rng: random.Random, split: Split, media: Media, i: int) -> tuple[dict, QA]:
    """Any text-rich question (signs, receipts, pages: totals, fields, transcriptions), scored with ANLS."""
    doc = text_rich.sample(rng, split)
    return {"image": media.image(doc.image, f"images/text_rich/{i:06d}.png")}, _first(doc.qa, "text-rich")


def _multi_image(rng: random.Random, split: Split, media: Media, i: int) -> tuple[dict, QA]:
    images, qa = multi_image.sample(rng, split)
    return {"images": [media.image(im, f"images/multi/{i:06d}_{k}.png") for k, im in enumerate(images)]}, qa[0]


def _video(rng: random.Random, split: Split, media: Media, i: int) -> tuple[dict, QA]:
    frames, qa = video.clip(rng, split)
    return {"video": media.video(frames, f"videos/{i:06d}", gif=i % 2 == 1)}, qa[0]


def _ui(rng: random.Random, split: Split, media: Media, i: int) -> tuple[dict, QA]:
    """UI grounding: where to tap to press a button (right when the point lands in the button)."""
    image, qa = ui.screen(rng, split)
    return {"image": media.image(image, f"images/ui/{i:06d}.png")}, next(q for q in qa if q.task == "tap")


TASKS = {"ocr": _ocr, "text_rich": _text_rich, "multi_image": _multi_image, "video": _video, "ui": _ui}


def write_eval(root: Path, split: Split, seed: int, n: int) -> dict[str, int]:
    """Every evaluation file: the scene benchmarks, then one question per item for each of TASKS."""
    counts = write_scenes(root, split, seed, n)
    media = Media(root)
    for name, make in TASKS.items():
        rng = split.rng(seed, f"eval-{name}")
        rows = [_entry(*make(rng, split, media, i), i) for i in range(n)]
        write_jsonl(root / f"{name}.jsonl", rows)
        counts[name] = len(rows)
    return counts
