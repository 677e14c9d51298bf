"""Benchmark metrics, registered by name (`METRICS`): each maps predictions and their samples to a `MetricResult`.

Scores are fractions (VQA accuracy 1.0 = 100%); CIDEr is pycocoevalcap's raw value (papers print it x100).
Predictions a metric cannot read (no box, no option letter) score 0 and are counted in `details`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from mm1.data.annotations import LETTERS, Sample
from mm1.data.coords import from_bins, parse_regions
from mm1.registry import Registry


@dataclass
class MetricResult:
    score: float
    per_sample: list[float]
    details: dict = field(default_factory=dict)  # extra numbers (BLEU-n, per answer type) and counts


METRICS: Registry[Callable[[Sequence[str], Sequence[Sample]], MetricResult]] = Registry("metric")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# ---- captioning: CIDEr-D and BLEU from pycocoevalcap, on a pure-Python PTB-style tokenisation -------------------
# pycocoevalcap's PTBTokenizer runs Stanford CoreNLP (Java), lowercases and then drops these punctuation tokens.
# Brackets and double quotes are among them (CoreNLP writes -LRB-, ``, ... for them).
_PTB_DROP = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";", "(", ")", "{", "}", "[", "]", '"'}
_PTB_TOKEN = re.compile(r"\d+(?:[.,]\d+)+|\w+(?:[-']\w+)*|\.\.\.|--|\S")
_CLITIC = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")


def ptb_tokenize(text: str) -> str:
    """Lowercase, split like the Penn Treebank tokenizer (clitics "do n't", "dog 's"; punctuation off words, not
    inside numbers or hyphenated words), drop punctuation tokens.  Not modelled: abbreviations ("mr." -> "mr")."""
    tokens = []
    for token in _PTB_TOKEN.findall(text.lower()):
        clitic = _CLITIC.match(token)
        tokens += clitic.groups() if clitic else [token]
    return " ".join(t for t in tokens if t not in _PTB_DROP)


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> MetricResult:
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        raise ImportError("captioning metrics need pycocoevalcap: pip install 'mm1[eval]'") from None
    res = {i: [ptb_tokenize(p)] for i, p in enumerate(predictions)}
    gts = {i: [ptb_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    cider, per_sample = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    details = {f"bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    return MetricResult(float(cider), [float(s) for s in per_sample], details)


@METRICS.register("cider")
def cider(predictions: Sequence[str], samples: Sequence[Sample]) -> MetricResult:
    return caption_scores(predictions, [s.answers for s in samples])


# ---- VQA accuracy, as the official VQAv2 evaluation (vqaEval.py) ---------------------------------------------------
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've",
    "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # verbatim, quirks included ("somebody'd" -> "somebodyd"; the capitalised keys never match lowercased words)
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Verbatim: "(?!<=\d)" is a lookahead, not the lookbehind it looks like, so a period goes unless a digit follows.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        # Removed when it touches a space or the text has a digit-comma-digit ("1,000"); otherwise a word break.
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(text: str) -> str:
    """The official VQA answer normalisation: punctuation, number words -> digits, articles, contractions."""
    return _digits_articles(_punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over the leave-one-annotator-out subsets of min(#matching answers / 3, 1).

    The official script normalises only when the annotators disagree (a shortcut that makes "Yes." fail against ten
    "yes"); the challenge server normalises every prediction first.  Here prediction and answers are always
    normalised, which gives the official value whenever the answers are already in normal form, as VQAv2's are."""
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    return _mean([min(1.0, sum(g == pred for j, g in enumerate(gts) if j != i) / 3) for i in range(len(gts))])


@METRICS.register("vqa-accuracy")
def vqa(predictions: Sequence[str], samples: Sequence[Sample]) -> MetricResult:
    per_sample = [vqa_accuracy(p, s.answers) for p, s in zip(predictions, samples)]
    by_type: dict[str, list[float]] = {}
    for score, sample in zip(per_sample, samples):
        if sample.meta.get("answer_type"):
            by_type.setdefault(sample.meta["answer_type"], []).append(score)
    details = {f"accuracy[{t}]": _mean(v) for t, v in sorted(by_type.items())}
    return MetricResult(_mean(per_sample), per_sample, details)


@METRICS.register("exact-match")
def exact_match(predictions: Sequence[str], samples: Sequence[Sample]) -> MetricResult:
    """1 when the normalised prediction equals a normalised reference (multi-image, OCR words, referring names); a
    question with options takes the option's letter or its text, as a chat model may answer either.
    `char_similarity` (1 - normalised edit distance to the closest reference, averaged) is partial credit: it
    moves while a reader gets most letters of a word right before it gets whole words right."""
    per_sample, similarity = [], []
    for prediction, sample in zip(predictions, samples):
        if sample.options:
            per_sample.append(float(extract_choice(prediction, sample.options) == sample.answers[0]))
        else:
            per_sample.append(float(normalize_answer(prediction) in {normalize_answer(a) for a in sample.answers}))
        similarity.append(max(_similarity(prediction, a) for a in sample.answers))
    return MetricResult(_mean(per_sample), per_sample, {"char_similarity": _mean(similarity)})


# ---- ANLS (document VQA) ----------------------------------------------------------------------------------------
def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _similarity(prediction: str, answer: str) -> float:
    """1 - normalised Levenshtein distance, case and whitespace runs ignored."""
    pred, gt = " ".join(prediction.lower().split()), " ".join(answer.lower().split())
    return 1.0 - levenshtein(pred, gt) / max(len(pred), len(gt), 1)


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Max over answers of 1 - NL (normalised Levenshtein distance), 0 where NL >= threshold (DocVQA: 0.5)."""
    return max((s if s > 1.0 - threshold else 0.0 for s in (_similarity(prediction, a) for a in answers)), default=0.0)


@METRICS.register("anls")
def anls_metric(predictions: Sequence[str], samples: Sequence[Sample]) -> MetricResult:
    per_sample = [anls(p, s.answers) for p, s in zip(predictions, samples)]
    return MetricResult(_mean(per_sample), per_sample)


# ---- grounding --------------------------------------------------------------------------------------------------
def iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@METRICS.register("grounding-accuracy")
def grounding(predictions: Sequence[str], samples: Sequence[Sample]) -> MetricResult:
    """A predicted box is right at IoU >= 0.5 with the reference box, a predicted point when it lies inside it.

    The first well-formed region of the answer counts (bins mapped to pixels of the original image); an answer
    without one is wrong and counted as `malformed` (an attempt that `parse_regions` rejects) or `no_region`."""
    per_sample, ious, counts = [], [], {"no_region": 0, "malformed": 0, "points": 0}
    for prediction, sample in zip(predictions, samples):
        regions, errors = parse_regions(prediction)
        if not regions:
            counts["malformed" if errors else "no_region"] += 1
            per_sample.append(0.0)
            ious.append(0.0)
            continue
        region = regions[0]
        xy = [from_bins(v, sample.size[i % 2]) for i, v in enumerate(region.coords)]
        if region.kind == "box":
            ious.append(iou(xy, sample.box))
            hit = ious[-1] >= 0.5
        else:
            counts["points"] += 1
            hit = sample.box[0] <= xy[0] <= sample.box[2] and sample.box[1] <= xy[1] <= sample.box[3]
        per_sample.append(float(hit))
    # Partial credit for box tasks: mean IoU over the non-point answers, a missing or malformed one counting 0.
    boxes = len(ious) > counts["no_region"] + counts["malformed"]
    return MetricResult(_mean(per_sample), per_sample, counts | ({"mean_iou": _mean(ious)} if boxes else {}))


# ---- multiple choice --------------------------------------------------------------------------------------------
_LEADING_LETTER = re.compile(r"^\(([A-Z])\)|^([A-Z])(?:[.:)]|$)")  # "(B) ...", "B", "B.", "B)", "B: ..."
_STATED_LETTER = re.compile(r"(?i:answer|option|choice)(?:\s+(?i:is))?\s*[:\-]?\s*\(?([A-Z])\)?(?![A-Za-z])")


def extract_choice(prediction: str, options: Sequence[str]) -> str | None:
    """The option letter a reply chooses, or None: a leading letter ("B", "(B)", "B."), a stated one ("The answer
    is B"), or an option's own text (the reply is that text, or contains exactly one option's text)."""
    letters = LETTERS[:len(options)]
    text = prediction.strip()
    for pattern in (_LEADING_LETTER, _STATED_LETTER):
        match = pattern.search(text)
        letter = match and next(g for g in match.groups() if g)
        if letter and letter in letters:
            return letter
    reply = normalize_answer(text)
    normalised = [normalize_answer(o) for o in options]
    if reply in normalised:
        return letters[normalised.index(reply)]
    contained = [i for i, o in enumerate(normalised) if o and re.search(rf"(?<!\S){re.escape(o)}(?!\S)", reply)]
    return letters[contained[0]] if len(contained) == 1 else None


@METRICS.register("mc-accuracy")
def multiple_choice(predictions: Sequence[str], samples: Sequence[Sample]) -> MetricResult:
    per_sample, unextractable = [], 0
    for prediction, sample in zip(predictions, samples):
        letter = extract_choice(prediction, sample.options)
        unextractable += letter is None
        per_sample.append(float(letter == sample.answers[0]))
    return MetricResult(_mean(per_sample), per_sample, {"unextractable": unextractable})
