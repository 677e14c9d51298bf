"""Text-rich images: signs (large text, sometimes made-up words), receipts and document pages (small text),
arithmetic sheets.

Receipts and pages use glyphs about 7-9 px tall on images 240-330 px across: legible at native resolution, a pixel
or two tall once the image is squeezed into one 64 px view, so only high-resolution views (MM1.5's continual
pre-training and image splitting) can read them.  Signs stay legible at any resolution.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont, features

from mm1.data.coords import box_to_text
from mm1.data.world.base import COLOURS, QA, Split, made_up_word

INK = (25, 25, 30)
PAPER = (252, 252, 248)
SMALL, TITLE = 9, 12  # font sizes of body text and headings on receipts and pages


@lru_cache(maxsize=None)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` px: it is the same on every machine, so renders are reproducible."""
    if not features.check("freetype2"):
        raise RuntimeError("the synthetic world renders text with Pillow's bundled FreeType font, but this Pillow "
                           "was built without FreeType; install a Pillow wheel from PyPI (Pillow>=10.1)")
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=None)
def _width(text: str, size: int = SMALL) -> float:
    return font(size).getlength(text)


@dataclass
class TextImage:
    kind: str
    image: Image.Image
    lines: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)  # text, ink box; reading order
    qa: list[QA] = field(default_factory=list)

    @property
    def transcription(self) -> str:
        return "\n".join(text for text, _ in self.lines)

    def meta(self) -> dict:
        return {"kind": self.kind, "width": self.image.width, "height": self.image.height,
                "lines": [{"text": text, "box": list(box)} for text, box in self.lines]}

    def write(self, xy: tuple[float, float], text: str, size: int, anchor: str = "la",
              fill=INK) -> tuple[int, int, int, int]:
        """Draw `text` and return its ink box (the caller records lines: a receipt row is two runs, one line)."""
        draw = ImageDraw.Draw(self.image)
        draw.text(xy, text, font=font(size), fill=fill, anchor=anchor)
        x1, y1, x2, y2 = draw.textbbox(xy, text, font=font(size), anchor=anchor)
        return math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)  # whole pixels covering the ink


def union(a: tuple, b: tuple) -> tuple[int, int, int, int]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def line_questions(doc: TextImage, rng: random.Random) -> list[QA]:
    """Reading a region (referring) and finding a line (grounding), for any text image."""
    text, box = rng.choice(doc.lines)
    where = box_to_text(box, doc.image.size)
    return [QA(f"What is written in the region {where}?", text, "ocr-refer", "refer-ground"),
            QA(f'Where is the text "{text}"? Answer with a bounding box.', where, "ocr-ground", "refer-ground")]


def sign(rng: random.Random, split: Split, letters: tuple[int, int] | None = None) -> TextImage:
    """One word, sometimes with a number ("LAKE 7"), in large letters: the sign grows to fit the text.  With
    `letters` (fewest, most), the word is always a made-up string of that many letters (a reading curriculum)."""
    if letters is not None:
        word = made_up_word(rng, letters)
    else:
        word = made_up_word(rng) if split.made_up_words and rng.random() < 0.5 else rng.choice(split.words)
    text = word.upper() + (f" {rng.randint(1, 99)}" if rng.random() < 0.3 else "")
    size = rng.choice([24, 28])
    # A curriculum's sign is square unless its text needs more width, so a lone letter fills a fixed share of a view
    width, height = math.ceil(font(size).getlength(text)) + 40, rng.choice([80, 96, 112])
    width = max(width, 128 if letters is None else height)
    colour = rng.choice(list(COLOURS))
    doc = TextImage("sign", Image.new("RGB", (width, height), (235, 235, 235)))
    ImageDraw.Draw(doc.image).rounded_rectangle((6, 6, width - 7, height - 7), radius=8, fill=COLOURS[colour])
    doc.lines.append((text, doc.write((width / 2, height / 2), text, size, anchor="mm", fill=(255, 255, 255))))
    doc.qa = [QA("What does the sign say?", text, "ocr-sign", "text-rich"),
              QA("What colour is the sign?", colour, "sign-colour", "general")]
    return doc


def receipt(rng: random.Random, split: Split) -> TextImage:
    items = [(w, rng.randint(1, 4), rng.randint(50, 999)) for w in rng.sample(split.words, rng.randint(3, 7))]
    width, step = 240, 13
    doc = TextImage("receipt", Image.new("RGB", (width, 40 + step * (len(items) + 3)), PAPER))
    store = f"{rng.choice(split.words).upper()} STORE"
    doc.lines.append((store, doc.write((width / 2, 10), store, TITLE, anchor="ma")))
    y = 34
    for word, qty, cents in items + [("TOTAL", 0, sum(q * c for _, q, c in items))]:
        left = word if word == "TOTAL" else f"{word} {qty} x {money(cents)}"
        right = money(cents if word == "TOTAL" else qty * cents)
        y += step if word != "TOTAL" else 2 * step  # a blank row before the total
        box = union(doc.write((12, y), left, SMALL), doc.write((width - 12, y), right, SMALL, anchor="ra"))
        doc.lines.append((f"{left} {right}", box))
    word, qty, cents = rng.choice(items)
    doc.qa = [QA("What is the total on the receipt?", money(sum(q * c for _, q, c in items)), "receipt-total",
                 "text-rich"),
              QA(f"How much was paid for {word} in total?", money(qty * cents), "receipt-item", "text-rich"),
              QA("How many different items are on the receipt?", str(len(items)), "receipt-count", "text-rich",
                 answer_type="number"),
              QA("What is the name of the store?", store, "receipt-store", "text-rich"),
              QA("Transcribe the receipt.", doc.transcription, "ocr-read", "text-rich")] + line_questions(doc, rng)
    return doc


def page(rng: random.Random, split: Split) -> TextImage:
    rows = rng.randint(6, 12)
    width, step = rng.choice([240, 280, 320]), 12
    doc = TextImage("page", Image.new("RGB", (width, 300 + step * (rows - 6)), PAPER))
    title = " ".join(rng.sample(split.words, 2)).title()
    fields = {"name": rng.choice(split.words), "code": str(rng.randint(1000, 9999)),
              "date": f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.{rng.randint(1990, 2030)}"}
    doc.lines.append((title, doc.write((16, 14), title, TITLE)))
    y = 40
    for key, value in fields.items():
        text = f"{key}: {value}"
        doc.lines.append((text, doc.write((16, y), text, SMALL)))
        y += step
    y += step
    for _ in range(rows):
        words = [rng.choice(split.words)]
        used = _width(words[0])
        while True:  # fill the row up to the margin (widths add up: the font applies no kerning)
            word = rng.choice(split.words)
            used += _width(" " + word)
            if used > width - 32:
                break
            words.append(word)
        text = " ".join(words)
        doc.lines.append((text, doc.write((16, y), text, SMALL)))
        y += step
    doc.qa = [QA(f"What is the {key} on the page?", value, f"doc-{key}", "text-rich") for key, value in fields.items()]
    doc.qa += [QA("What is the title of the page?", title, "doc-title", "text-rich"),
               QA("Transcribe the page.", doc.transcription, "ocr-read", "text-rich")] + line_questions(doc, rng)
    return doc


def equation(rng: random.Random) -> TextImage:
    """A printed arithmetic exercise (the "math" SFT category): the answer needs reading then computing."""
    a, b, op = rng.randint(2, 60), rng.randint(2, 40), rng.choice("+-x")
    if op == "-":
        a, b = max(a, b), min(a, b)
    value = {"+": a + b, "-": a - b, "x": a * b}[op]
    doc = TextImage("equation", Image.new("RGB", (160, 64), PAPER))
    text = f"{a} {op} {b} = ?"
    doc.lines.append((text, doc.write((80, 32), text, 18, anchor="mm")))
    doc.qa = [QA("Solve the exercise in the image.", str(value), "solve", "math", answer_type="number")]
    return doc


KINDS = {"sign": sign, "receipt": receipt, "page": page}


def sample(rng: random.Random, split: Split) -> TextImage:
    """A text-rich image: half are large-text signs (where reading single words is learnt), half small text."""
    doc = KINDS[rng.choices(list(KINDS), weights=(2, 1, 1))[0]](rng, split)
    rng.shuffle(doc.qa)
    return doc
