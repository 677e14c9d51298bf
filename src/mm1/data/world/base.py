"""What the world is made of, what each split may use, and the question-answer record every generator returns.

The held-out lists are fixed (not drawn from the seed) so that every generated world holds out the same things and
results from different seeds compare; the seed only changes which scenes, words and numbers are drawn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (240, 200, 30),
           "purple": (140, 60, 190), "orange": (245, 130, 30), "pink": (240, 120, 180), "brown": (130, 80, 40)}
SHAPES = ("circle", "square", "triangle", "diamond", "hexagon")
# One shape per colour, every shape at least once: each colour and each shape is still seen in training, only
# never together, so the held-out split measures composition rather than new concepts.
HELD_OUT_PAIRS = (("red", "triangle"), ("green", "hexagon"), ("blue", "circle"), ("yellow", "square"),
                  ("purple", "diamond"), ("orange", "circle"), ("pink", "triangle"), ("brown", "square"))
TRAIN_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS)

# The OCR vocabulary: everything rendered as text in images (signs, receipts, pages, screens) comes from here or
# is a number.  No word occurs in any template, so a held-out word in an answer can only have been read.
WORDS = ("apple", "bread", "milk", "coffee", "butter", "cheese", "lemon", "honey", "rice", "pasta", "soup", "salad",
         "juice", "sugar", "cookie", "pepper", "melon", "grape", "cherry", "peach", "onion", "carrot", "potato",
         "tomato", "river", "mountain", "forest", "garden", "island", "castle", "bridge", "harbor", "valley",
         "meadow", "desert", "village", "canyon", "beach", "lake", "window", "table", "chair", "lamp", "clock",
         "mirror", "pillow", "basket", "bottle", "candle", "ladder", "kettle", "hammer", "rope", "anchor", "compass",
         "lantern", "tram", "bus", "bicycle", "rocket", "boat", "plane", "truck", "tractor", "music", "camera",
         "photos", "maps", "notes", "weather", "calendar", "contacts", "wallet", "radio", "tiger", "rabbit", "horse",
         "eagle", "whale", "turtle", "falcon", "otter", "zebra", "panda", "summer", "winter", "autumn", "spring",
         "morning", "evening")
HELD_OUT_WORDS = WORDS[::6]
TRAIN_WORDS = tuple(w for w in WORDS if w not in HELD_OUT_WORDS)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
ORDINALS = ("first", "second", "third", "fourth")


@dataclass(frozen=True)
class Split:
    """A stream of samples: its name seeds the random stream, its pairs and words are all it may draw."""

    name: str
    pairs: tuple[tuple[str, str], ...]
    words: tuple[str, ...]
    # Signs may show made-up letter strings (never containing a held-out word): with only the word list, a reader
    # can memorise whole words; strings of random letters make it learn the letters (SynthText-style OCR data).
    made_up_words: bool = False

    def rng(self, seed: int, part: str) -> random.Random:
        # A string seed is hashed with SHA-512 by `random`, so streams are independent of PYTHONHASHSEED and of
        # each other: growing one part (more captions) leaves every other part's bytes unchanged.
        return random.Random(f"mm1-world:{seed}:{self.name}:{part}")


TRAIN = Split("train", TRAIN_PAIRS, TRAIN_WORDS, made_up_words=True)
HELDOUT = Split("heldout", HELD_OUT_PAIRS, HELD_OUT_WORDS)
# Few-shot examples for evaluating base models come from the training distribution but their own seed stream.
SUPPORT = Split("support", TRAIN_PAIRS, TRAIN_WORDS)


def made_up_word(rng: random.Random, letters: tuple[int, int] = (3, 7)) -> str:
    """`letters` (fewest, most) random letters that contain no held-out word."""
    while True:
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(*letters)))
        if not any(held in word for held in HELD_OUT_WORDS):
            return word


@dataclass(frozen=True)
class QA:
    """One question about some media; `task` names the skill, `category` the SFT mixture bucket (spec 6.2)."""

    question: str
    answer: str
    task: str
    category: str
    options: tuple[str, ...] = ()
    answer_type: str = "other"  # VQA's answer types: "yes/no", "number", "other"
    box: tuple[int, int, int, int] | None = None  # the pixel box a pointing answer must land in (UI taps)


def multiple_choice(rng: random.Random, question: str, answer: str, task: str, category: str,
                    wrong: list[str]) -> QA:
    """A question with the answer and up to three distinct distractors as options, in random order."""
    options = [answer] + [w for w in dict.fromkeys(wrong) if w != answer][:3]
    rng.shuffle(options)
    return QA(question, answer, task, category, tuple(options))


def article(phrase: str, capital: bool = False) -> str:
    """`phrase` with its indefinite article: "a red circle", "an orange square"."""
    word = "an" if phrase[0].lower() in "aeiou" else "a"
    return f"{word.capitalize() if capital else word} {phrase}"
