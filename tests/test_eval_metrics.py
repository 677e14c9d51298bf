"""Metrics against hand-computed values and the official definitions; oracle answers score 1, shuffled ones low."""

from __future__ import annotations

import math

import pytest

from mm1.data.annotations import Sample
from mm1.data.coords import box_to_text, point_to_text
from mm1.eval.metrics import (METRICS, anls, caption_scores, extract_choice, iou, normalize_answer, ptb_tokenize,
                              vqa_accuracy)


# ---- VQA --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, normal", [
    ("2", "2"), ("two", "2"), ("Two", "2"), ("none", "0"),  # number words -> digits
    ("the dog", "dog"), ("a man", "man"), ("An apple", "apple"),  # articles
    ("dont", "don't"), ("isnt", "isn't"), ("whats", "what's"),  # contractions table
    ("yes.", "yes"), ("Yes", "yes"), ("no!", "no"), ("  yes\n", "yes"),  # punctuation, case, whitespace
    ("3.5", "3.5"), ("3.", "3"),  # a period before a digit stays
    ("one,two", "1 2"),  # a comma not touching a space becomes a word break
    ("1,000", "1000"), ("red, white", "red white"),  # digit,digit anywhere / comma before a space: removed
    ("t-shirt", "t shirt"), ("black/white", "black white"),
])
def test_vqa_normalisation_matches_the_official_script(raw, normal):
    assert normalize_answer(raw) == normal


@pytest.mark.parametrize("matches, accuracy", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_averages_the_leave_one_out_subsets(matches, accuracy):
    # m matching annotators of 10: m subsets see m-1 matches, 10-m see m  ->  e.g. m=3: (3 * 2/3 + 7 * 1) / 10
    answers = ["red"] * matches + ["blue"] * (10 - matches)
    assert vqa_accuracy("Red.", answers) == pytest.approx(accuracy)


def test_vqa_accuracy_normalises_prediction_and_answers():
    assert vqa_accuracy("Two", ["2"] * 10) == 1.0
    assert vqa_accuracy("the dog", ["dog"] * 5 + ["cat"] * 5) == 1.0
    assert vqa_accuracy("dont know", ["don't know"] * 10) == 1.0


# ---- captioning -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, tokens", [
    ("A man's dog, running.", "a man 's dog running"),
    ("It isn't 3.5 km!", "it is n't 3.5 km"),
    ("A black-and-white (old) photo of \"Bob\"", "a black-and-white old photo of bob"),
    ("Two dogs' toys... on a bed;", "two dogs toys on a bed"),
    ("I can't", "i ca n't"),
])
def test_ptb_tokenisation(text, tokens):
    assert ptb_tokenize(text) == tokens


def test_cider_and_bleu_match_hand_computed_values():
    # Two images whose captions share no word: every n-gram has idf log(2) and the image's own reference is its only
    # match, so an exact caption has cosine 1 for n = 1..4 and CIDEr-D = 10 * mean(1, 1, 1, 1) = 10.
    refs = [["a red circle here"], ["one blue square there"]]
    exact = caption_scores(["a red circle here", "one blue square there"], refs)
    assert exact.score == pytest.approx(10.0) and exact.per_sample == pytest.approx([10.0, 10.0])
    assert caption_scores(["one blue square there", "a red circle here"], refs).score == pytest.approx(0.0)
    # BLEU of "a cat sat on the mat" against "a cat is on the mat": same length (no brevity penalty),
    # 5/6 unigrams, 3/5 bigrams, 1/4 trigrams match: BLEU-1 = 5/6, BLEU-2 = sqrt(5/6 * 3/5), BLEU-3 = (1/8)^(1/3).
    bleu = caption_scores(["A cat sat on the mat."], [["a cat is on the mat"]]).details
    assert bleu["bleu_1"] == pytest.approx(5 / 6)
    assert bleu["bleu_2"] == pytest.approx(math.sqrt(0.5))
    assert bleu["bleu_3"] == pytest.approx(0.5)


def test_cider_is_pycocoevalcaps_on_ptb_tokens():
    from pycocoevalcap.cider.cider import Cider

    refs = [["A red circle, on the left.", "the red circle"], ["A blue square!", "blue square at the top"]]
    predictions = ["a red circle", "a blue circle"]
    ours = caption_scores(predictions, refs)
    theirs, _ = Cider().compute_score({i: [ptb_tokenize(r) for r in rs] for i, rs in enumerate(refs)},
                                      {i: [ptb_tokenize(p)] for i, p in enumerate(predictions)})
    assert ours.score == pytest.approx(theirs)


# ---- ANLS, grounding, multiple choice ---------------------------------------------------------------------------
def test_anls():
    assert anls("Hello  World", ["hello world"]) == 1.0
    assert anls("helo", ["hello"]) == pytest.approx(0.8)  # 1 edit / 5 characters
    assert anls("abc", ["abd"]) == pytest.approx(2 / 3)
    assert anls("ab", ["cd"]) == 0.0  # distance 1.0 >= 0.5
    assert anls("abcd", ["abxy"]) == 0.0  # distance exactly 0.5 is not below the threshold
    assert anls("paris", ["london", "Paris"]) == 1.0  # best answer counts


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def _grounding_sample(box=(10.0, 20.0, 50.0, 60.0), size=(100, 80)) -> Sample:
    return Sample("g", ["x.png"], question="the thing", box=box, size=size)


def test_grounding_boxes_points_and_unreadable_answers():
    sample = _grounding_sample()
    predictions = [
        "It is " + box_to_text(sample.box, sample.size),  # the reference itself: IoU ~ 1
        box_to_text((12, 22, 52, 62), sample.size),  # shifted a little: IoU > 0.5
        box_to_text((40, 20, 80, 60), sample.size),  # 10 of 40 px overlap: IoU 1/7
        point_to_text((30, 40), sample.size),  # point inside the box
        point_to_text((90, 5), sample.size),  # point outside
        "[1, 2, 3]",  # malformed: three numbers
        "somewhere on the left",  # no region at all
    ]
    result = METRICS.get("grounding-accuracy")(predictions, [sample] * len(predictions))
    assert result.per_sample == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert {k: result.details[k] for k in ("no_region", "malformed", "points")} == {"no_region": 1, "malformed": 1,
                                                                                     "points": 2}
    # Mean IoU over the five answers that are not points; the unreadable ones count 0.
    boxes = [(10, 20, 50, 60), (12, 22, 52, 62), (40, 20, 80, 60)]
    expected = sum(iou(from_bins_box(b, sample.size), sample.box) for b in boxes) / 5
    assert result.details["mean_iou"] == pytest.approx(expected)
    assert 0.35 < expected < 0.45  # ~1, ~0.8 and 1/7 over five


def from_bins_box(box, size):
    """A pixel box as the metric sees it after the round trip through coordinate bins."""
    from mm1.data.coords import from_bins, to_bins
    return [from_bins(to_bins(v, size[i % 2]), size[i % 2]) for i, v in enumerate(box)]


def test_exact_match_takes_option_letters_or_text_and_reports_character_similarity():
    mc = Sample("m", question="What changed?", options=["a circle was added", "the square was removed"],
                answers=["B"])
    word = Sample("w", question="What does the sign say?", answers=["APPLE"])
    result = METRICS.get("exact-match")(["B", "the square was removed", "A", "apple", "APPLX"],
                                        [mc, mc, mc, word, word])
    assert result.per_sample == [1.0, 1.0, 0.0, 1.0, 0.0]
    # similarity: "b" vs the letter "B" = 1, text vs "B" = 0 (22 edits / 22), "a" vs "B" = 0, 1, 4/5
    assert result.details["char_similarity"] == pytest.approx((1 + 0 + 0 + 1 + 0.8) / 5)


OPTIONS = ["a red circle", "a blue square", "green"]


@pytest.mark.parametrize("reply, letter", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B)", "B"), ("B: a blue square", "B"), ("(C) green", "C"),
    ("The answer is C.", "C"), ("Answer: (A)", "A"), ("the correct option is B", "B"),
    ("A red circle", "A"), ("It is a blue square.", "B"), ("green", "C"),  # the option's own text
    ("I do not know", None), ("D", None), ("A cat", None), ("red circle or blue square", None),
])
def test_choice_extraction(reply, letter):
    assert extract_choice(reply, OPTIONS) == letter


def test_multiple_choice_counts_unextractable_replies():
    sample = Sample("q", [], question="Which?", answers=["B"], target="B", options=OPTIONS)
    result = METRICS.get("mc-accuracy")(["(B)", "A", "no idea", "blue square"], [sample] * 4)
    assert result.per_sample == [1.0, 0.0, 0.0, 1.0] and result.details == {"unextractable": 1}


# ---- oracle and shuffled predictions: the metrics can pass and can fail -----------------------------------------
def _vqa_samples():
    answers = ["red", "blue", "2", "yes", "a dog", "no"]
    return [Sample(str(i), [], question="?", answers=[a] * 7 + ["other"] * 3, target=a) for i, a in enumerate(answers)]


def _grounding_samples():
    boxes = [(0, 0, 20, 20), (30, 30, 60, 50), (70, 10, 95, 40), (10, 50, 40, 75)]
    return [Sample(str(i), ["x.png"], box=b, size=(100, 80), target=box_to_text(b, (100, 80)))
            for i, b in enumerate(boxes)]


def _mc_samples():
    return [Sample(str(i), [], options=["cat", "dog", "bird", "fish"], answers=[letter], target=letter)
            for i, letter in enumerate("ABCDBC")]


def _caption_samples():
    refs = [["a red circle on the left", "a red round shape", "the red circle"],
            ["a blue square at the top", "blue square", "a square that is blue"],
            ["a green triangle below", "green triangle", "the small green triangle"],
            ["a yellow star in the middle", "yellow star", "a star coloured yellow"]]
    return [Sample(str(i), ["x.png"], answers=r, target=r[0]) for i, r in enumerate(refs)]


@pytest.mark.parametrize("metric, make, perfect", [
    ("vqa-accuracy", _vqa_samples, 1.0), ("grounding-accuracy", _grounding_samples, 1.0),
    ("mc-accuracy", _mc_samples, 1.0), ("exact-match", _vqa_samples, 1.0), ("anls", _vqa_samples, 1.0),
    ("cider", _caption_samples, None),
])
def test_oracle_scores_high_and_shuffled_scores_low(metric, make, perfect):
    samples = make()
    oracle = METRICS.get(metric)([s.target for s in samples], samples).score
    shifted = [samples[(i + 1) % len(samples)].target for i in range(len(samples))]
    shuffled = METRICS.get(metric)(shifted, samples).score
    if perfect is None:  # CIDEr-D has no fixed maximum: a reference scores high against its own set
        assert oracle > 3.0 and shuffled < 0.3 * oracle
    else:
        assert oracle == pytest.approx(perfect) and shuffled < 0.5
