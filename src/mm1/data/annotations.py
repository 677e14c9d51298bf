"""Readers for evaluation annotation formats: files -> `Sample`s, every rejected record counted and named.

A reader is chosen by name (`data.format` of a task, registry `READERS`).  Image paths resolve against
`data.images` (default: the folder of the annotation file).  Formats accepted, exactly:

`coco-captions`  one JSON object `{"images": [{"id": int|str, "file_name": str}, ...],
                 "annotations": [{"image_id": int|str, "caption": str}, ...]}`; one sample per image, its captions
                 the references.
`vqav2`          `data.questions`: `{"questions": [{"question_id", "image_id", "question": str}, ...]}` and
                 `data.annotations`: `{"annotations": [{"question_id", "image_id", "answers": [{"answer": str}, ...],
                 "multiple_choice_answer": str, "answer_type": str}, ...]}` (ids int|str); the image file is
                 `data.image_pattern.format(image_id=...)`, e.g. `COCO_val2014_{image_id:012d}.jpg`.
`refcoco`        one JSON list of `{"image": str, "bbox": [x, y, w, h], "sentences": [str, ...], "split": str,
                 "id"?: int|str}`; `bbox` in pixels of that image, COCO convention (top-left corner, width, height).
                 `data.split` keeps one split.  `data.direction: ground` gives one sample per sentence (expression ->
                 box); `refer` gives one sample per region (box, written in `coords` bins -> its sentences).
`jsonl`          one JSON object per line: `{"id"?: int|str, "image": str | "images": [str, ...] | "video": str,
                 "question": str, "options"?: [str, ...], "answer": str | [str, ...], "box"?: [x1, y1, x2, y2]}`;
                 `video` is a video file, animated image or folder of frames; with `options` (2 to 26) the answer is
                 a letter ("B") or the text of one option, and is stored as its letter; `box` (pixels of the one
                 image) is the region a grounding metric checks the answer against.

A record with a missing image, a wrong field type or empty text is skipped, never silently: `Annotations.skipped`
lists each one with its file, record and reason.  A file that cannot be read at all raises `AnnotationError`.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from PIL import Image

from mm1.config import ConfigError
from mm1.data.coords import box_to_text
from mm1.data.readers import BadRecord as BadLine, read_json_lines
from mm1.registry import Registry

LETTERS = string.ascii_uppercase


class AnnotationError(ConfigError):
    """An annotation file that cannot be used at all (missing, not JSON, wrong top-level structure)."""


class BadRecord(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class Sample:
    id: str
    images: list[str] = field(default_factory=list)  # image files in prompt order; empty for text-only or video
    question: str = ""  # what a prompt's {question} shows
    answers: list[str] = field(default_factory=list)  # the references the metric compares against
    target: str = ""  # the one answer a few-shot example shows (and a perfect model would give)
    options: list[str] = field(default_factory=list)  # multiple choice, lettered A, B, ...
    box: tuple[float, float, float, float] | None = None  # grounding: (x1, y1, x2, y2) in pixels of images[0]
    size: tuple[int, int] | None = None  # (width, height) of images[0], the frame of `box`
    video: str | None = None  # sampled into frames when the prompt is encoded
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. VQA answer_type, for per-type scores


@dataclass(frozen=True)
class Skip:
    file: str
    record: str
    reason: str  # the counted category: "missing image", "wrong type", "empty text", ...
    detail: str


@dataclass
class Annotations:
    samples: list[Sample]
    skipped: list[Skip]


READERS: Registry[Callable[..., Annotations]] = Registry("annotation format")


# ---- field checks: each raises BadRecord with a counted reason --------------------------------------------------
def _text(item: dict, key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise BadRecord("wrong type", f"{key} must be a string, got {_show(value)}")
    if not value.strip():
        raise BadRecord("empty text", f"{key} is empty")
    return value.strip()


def _ident(item: dict, key: str) -> int | str:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadRecord("wrong type", f"{key} must be an int or a string, got {_show(value)}")
    return value


def _image(root: Path, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise BadRecord("wrong type", f"image must be a file name, got {_show(name)}")
    path = root / name
    if not path.exists():
        raise BadRecord("missing image", f"{path} does not exist")
    return str(path)


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}" if value is not None else "nothing"


def _records(items: Iterable, file: Path, skipped: list[Skip], key: str | None = None, section: str = ""):
    """(index, record, its name: section, position and `key` value) for each record that is an object; any other
    record is skipped here."""
    for index, item in enumerate(items):
        name = f"{section}record {index}"
        if isinstance(item, dict):
            yield index, item, f"{name} ({key} {item[key]!r})" if key in item else name
        else:
            skipped.append(Skip(str(file), name, "wrong type", f"expected an object, got {_show(item)}"))


def _parse(skipped: list[Skip], file: Path, record: str, parse: Callable, *args):
    """`parse(*args)`, or None with the record's BadRecord added to `skipped`."""
    try:
        return parse(*args)
    except BadRecord as err:
        skipped.append(Skip(str(file), record, err.reason, err.detail))
        return None


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path} is not valid JSON: {err}") from None


def _list_in(tree: Any, key: str, path: Path) -> list:
    if not isinstance(tree, dict) or not isinstance(tree.get(key), list):
        raise AnnotationError(f"{path}: expected an object with a list under {key!r}")
    return tree[key]


# ---- coco-captions ----------------------------------------------------------------------------------------------
def _coco_image(item: dict, images: Path) -> tuple[int | str, str]:
    return _ident(item, "id"), _image(images, item.get("file_name"))


def _coco_caption(item: dict, files: dict) -> tuple[int | str, str]:
    image_id = _ident(item, "image_id")
    if image_id not in files:
        raise BadRecord("unknown image", f"image_id {image_id!r} is not a usable entry of images")
    return image_id, _text(item, "caption")


@READERS.register("coco-captions")
def read_coco_captions(annotations: Path, images: Path, **_) -> Annotations:
    tree = _load_json(annotations)
    skipped: list[Skip] = []
    files: dict[int | str, str] = {}
    for _, item, record in _records(_list_in(tree, "images", annotations), annotations, skipped, "id", "images "):
        parsed = _parse(skipped, annotations, record, _coco_image, item, images)
        if parsed:
            files[parsed[0]] = parsed[1]
    captions: dict[int | str, list[str]] = {}
    items = _list_in(tree, "annotations", annotations)
    for _, item, record in _records(items, annotations, skipped, "image_id", "annotations "):
        parsed = _parse(skipped, annotations, record, _coco_caption, item, files)
        if parsed:
            captions.setdefault(parsed[0], []).append(parsed[1])
    samples = []
    for image_id, file in files.items():
        if image_id in captions:
            refs = captions[image_id]
            samples.append(Sample(str(image_id), [file], answers=refs, target=refs[0]))
        else:
            skipped.append(Skip(str(annotations), f"image id {image_id!r}", "no references", "no caption"))
    return Annotations(samples, skipped)


# ---- vqav2 ------------------------------------------------------------------------------------------------------
def _vqa_answers(item: dict) -> tuple[int | str, dict]:
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, dict) for a in answers):
        raise BadRecord("wrong type", f"answers must be a non-empty list of {{answer: str}}, got {_show(answers)}")
    texts = [_text(a, "answer") for a in answers]
    # The official files always have multiple_choice_answer (the most frequent answer); derived when absent.
    target = (_text(item, "multiple_choice_answer") if "multiple_choice_answer" in item
              else Counter(texts).most_common(1)[0][0])
    return _ident(item, "question_id"), {"answers": texts, "target": target,
                                         "answer_type": item.get("answer_type", "")}


def _vqa_question(item: dict, references: dict, images: Path, image_pattern: str, annotations: Path) -> Sample:
    qid, image_id = _ident(item, "question_id"), _ident(item, "image_id")
    text = _text(item, "question")
    if qid not in references:
        raise BadRecord("no references", f"question_id {qid!r} has no usable entry in {annotations.name}")
    try:
        name = image_pattern.format(image_id=image_id)
    except (ValueError, KeyError, IndexError) as err:
        raise BadRecord("wrong type", f"image_pattern {image_pattern!r} does not fit image_id {image_id!r}: "
                                      f"{err}") from None
    ref = references[qid]
    return Sample(str(qid), [_image(images, name)], question=text, answers=ref["answers"], target=ref["target"],
                  meta={"answer_type": ref["answer_type"]})


@READERS.register("vqav2")
def read_vqav2(annotations: Path, images: Path, questions: str | None = None,
               image_pattern: str = "{image_id}.jpg", **_) -> Annotations:
    if not questions:
        raise AnnotationError("data.questions (the questions file) is required for format vqav2")
    questions_path = Path(questions)
    skipped: list[Skip] = []
    references: dict[int | str, dict] = {}
    items = _list_in(_load_json(annotations), "annotations", annotations)
    for _, item, record in _records(items, annotations, skipped, "question_id"):
        parsed = _parse(skipped, annotations, record, _vqa_answers, item)
        if parsed:
            references[parsed[0]] = parsed[1]
    samples = []
    items = _list_in(_load_json(questions_path), "questions", questions_path)
    for _, item, record in _records(items, questions_path, skipped, "question_id"):
        sample = _parse(skipped, questions_path, record, _vqa_question, item, references, images, image_pattern,
                        annotations)
        if sample:
            samples.append(sample)
    return Annotations(samples, skipped)


# ---- refcoco ----------------------------------------------------------------------------------------------------
def _bbox(item: dict, size: tuple[int, int]) -> tuple[float, float, float, float]:
    box = item.get("bbox")
    if (not isinstance(box, list) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        raise BadRecord("wrong type", f"bbox must be 4 numbers [x, y, w, h], got {_show(box)}")
    x, y, w, h = box
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > size[0] + 1 or y + h > size[1] + 1:  # 1 px of rounding slack
        raise BadRecord("bad box", f"bbox {box} is empty or outside the {size[0]}x{size[1]} image")
    return float(x), float(y), float(min(x + w, size[0])), float(min(y + h, size[1]))


def _image_size(file: str) -> tuple[int, int]:
    with Image.open(file) as image:  # reads the header only
        return image.size


def _ref_region(item: dict, images: Path) -> tuple[str, tuple[int, int], tuple, list]:
    file = _image(images, item.get("image"))
    size = _image_size(file)
    sentences = item.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise BadRecord("wrong type", f"sentences must be a non-empty list, got {_show(sentences)}")
    return file, size, _bbox(item, size), sentences


@READERS.register("refcoco")
def read_refcoco(annotations: Path, images: Path, split: str | None = None, direction: str = "ground",
                 **_) -> Annotations:
    tree = _load_json(annotations)
    if not isinstance(tree, list):
        raise AnnotationError(f"{annotations}: expected a JSON list of referring expressions")
    skipped: list[Skip] = []
    samples = []
    for index, item, record in _records(tree, annotations, skipped, "id"):
        if split is not None and item.get("split") != split:
            continue
        parsed = _parse(skipped, annotations, record, _ref_region, item, images)
        if not parsed:
            continue
        file, size, box, sentences = parsed
        texts = [(j, _parse(skipped, annotations, f"{record} sentence {j}", _text, {"sentence": s}, "sentence"))
                 for j, s in enumerate(sentences)]
        texts = [(j, text) for j, text in texts if text]
        rid = str(item.get("id", index))
        region = box_to_text(box, size)
        if direction == "ground":
            samples += [Sample(f"{rid}:{j}", [file], question=text, answers=[region], target=region, box=box,
                               size=size) for j, text in texts]
        elif texts:
            refs = [text for _, text in texts]
            samples.append(Sample(rid, [file], question=region, answers=refs, target=refs[0], box=box, size=size))
    return Annotations(samples, skipped)


# ---- jsonl ------------------------------------------------------------------------------------------------------
def _jsonl_sample(item: dict, index: int, images: Path) -> Sample:
    files: list[str] = []
    video = None
    if "video" in item:
        video = _image(images, item["video"])
    elif "images" in item:
        if not isinstance(item["images"], list) or not item["images"]:
            raise BadRecord("wrong type", f"images must be a non-empty list, got {_show(item['images'])}")
        files = [_image(images, name) for name in item["images"]]
    elif "image" in item:
        files = [_image(images, item["image"])]
    question = _text(item, "question")
    raw = item.get("answer")
    if isinstance(raw, list) and raw:  # all accepted answers (DocVQA, VQA-style sets)
        answers = [_text({"answer": a}, "answer") for a in raw]
    else:
        answers = [_text(item, "answer")]
    options: list[str] = []
    if "options" in item:
        if not isinstance(item["options"], list) or not 2 <= len(item["options"]) <= len(LETTERS):
            raise BadRecord("wrong type", f"options must be a list of 2 to 26 strings, got {_show(item['options'])}")
        options = [_text({"option": o}, "option") for o in item["options"]]
        letters = LETTERS[:len(options)]
        if answers[0] in letters:
            answers = [answers[0]]
        elif answers[0] in options:
            answers = [letters[options.index(answers[0])]]
        else:
            raise BadRecord("bad answer", f"answer {answers[0]!r} is neither an option letter nor an option's text")
    box = size = None
    if "box" in item:  # a region the answer must hit (a point inside it, or a box overlapping it): UI grounding
        if len(files) != 1:
            raise BadRecord("wrong type", "box needs exactly one image (its pixels are the box's frame)")
        size = _image_size(files[0])
        corners = item["box"]
        if (not isinstance(corners, list) or len(corners) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in corners)):
            raise BadRecord("wrong type", f"box must be 4 numbers [x1, y1, x2, y2], got {_show(corners)}")
        box = _bbox({"bbox": [corners[0], corners[1], corners[2] - corners[0], corners[3] - corners[1]]}, size)
    sid = str(_ident(item, "id")) if "id" in item else str(index)
    return Sample(sid, files, question=question, answers=answers, target=answers[0], options=options, video=video,
                  box=box, size=size)


@READERS.register("jsonl")
def read_jsonl(annotations: Path, images: Path, **_) -> Annotations:
    if not annotations.is_file():
        raise AnnotationError(f"annotation file {annotations} does not exist")
    skipped: list[Skip] = []
    samples = []
    for number, item in read_json_lines(annotations):
        index, record = int(number) - 1, f"line {number}"
        if isinstance(item, BadLine):  # a line that is not JSON
            skipped.append(Skip(str(annotations), record, "invalid JSON", str(item)))
            continue
        if not isinstance(item, dict):
            skipped.append(Skip(str(annotations), record, "wrong type", f"expected an object, got {_show(item)}"))
            continue
        sample = _parse(skipped, annotations, record, _jsonl_sample, item, index, images)
        if sample:
            samples.append(sample)
    return Annotations(samples, skipped)


def read_annotations(fmt: str, annotations: str | Path, images: str | Path | None = None,
                     **options: Any) -> Annotations:
    """Read with the reader registered as `fmt`; `images` defaults to the annotation file's folder."""
    annotations = Path(annotations)
    return READERS.get(fmt)(annotations, Path(images) if images else annotations.parent, **options)
