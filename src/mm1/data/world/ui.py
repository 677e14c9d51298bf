"""Mobile-UI-like screens (Ferret-UI style, spec 7.2): a title, rows with an icon, a label and maybe a switch, and
buttons; questions find, read, classify and tap elements, and one task writes the screen as HTML (the "code"
category).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from mm1.data.coords import box_to_text, point_to_text
from mm1.data.world.base import COLOURS, QA, Split, article
from mm1.data.world.scenes import draw_shape, listing
from mm1.data.world.text_rich import TextImage

WIDTH, HEIGHT, ROW, BUTTON_HEIGHT = 180, 320, 36, 32
ON, OFF, BUTTON = (52, 168, 83), (170, 170, 170), (40, 90, 200)


@dataclass(frozen=True)
class Element:
    kind: str  # "icon", "text", "toggle", "button"
    text: str  # the label it carries or belongs to; an icon's text is what it shows ("red circle")
    box: tuple[int, int, int, int]
    on: bool = False

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def screen(rng: random.Random, split: Split) -> tuple[Image.Image, list[QA]]:
    doc = TextImage("screen", Image.new("RGB", (WIDTH, HEIGHT), (248, 248, 250)))
    draw = ImageDraw.Draw(doc.image)
    draw.rectangle((0, 0, WIDTH - 1, 15), fill=(230, 230, 235))
    clock = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
    doc.write((WIDTH - 8, 3), clock, 9, anchor="ra")
    title, *labels = (w.capitalize() for w in rng.sample(split.words, 7))  # 4 rows at most, 2 buttons
    doc.write((12, 22), title, 14)
    elements = []
    rows = labels[:rng.randint(2, 4)]
    for row, label in enumerate(rows):
        y = 52 + row * ROW
        colour, shape = rng.choice(split.pairs)
        icon = (12, y + 8, 32, y + 28)
        draw_shape(draw, shape, icon, COLOURS[colour])
        elements += [Element("icon", f"{colour} {shape}", icon),
                     Element("text", label, doc.write((42, y + 18), label, 11, anchor="lm"))]
        if rng.random() < 0.6:
            on, switch = rng.random() < 0.5, (WIDTH - 48, y + 10, WIDTH - 12, y + 26)
            draw.rounded_rectangle((switch[0], switch[1], switch[2] - 1, switch[3] - 1), radius=8,
                                   fill=ON if on else OFF)
            knob = switch[2] - 16 if on else switch[0] + 2
            draw.ellipse((knob, switch[1] + 2, knob + 12, switch[1] + 14), fill=(255, 255, 255))
            elements.append(Element("toggle", label, switch, on))
        draw.line((12, y + ROW - 1, WIDTH - 12, y + ROW - 1), fill=(225, 225, 225))
    for label in labels[4:4 + rng.randint(1, 2)]:
        box = place_button(rng, 52 + len(rows) * ROW + 8, [e.box for e in elements if e.kind == "button"])
        if box is None:  # no free spot left for a second button
            continue
        draw.rounded_rectangle((box[0], box[1], box[2] - 1, box[3] - 1), radius=6, fill=BUTTON)
        doc.write(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), label, 11, anchor="mm", fill=(255, 255, 255))
        elements.append(Element("button", label, box))
    return doc.image, questions(rng, title, elements)


def place_button(rng: random.Random, top: int, taken: list[tuple[int, int, int, int]],
                 tries: int = 30) -> tuple[int, int, int, int] | None:
    """A button of random width anywhere below `top`, clear of the `taken` boxes.  Buttons in fixed slots let a tap
    be answered from the question alone (with 1-2 buttons across the bottom, one fixed point hit 78% of the
    held-out buttons; here the best fixed point hits about a quarter)."""
    for _ in range(tries):
        width = rng.randint(56, 96)  # the longest label is 51 px wide
        x, y = rng.randint(12, WIDTH - 12 - width), rng.randint(top, HEIGHT - 16 - BUTTON_HEIGHT)
        box = (x, y, x + width, y + BUTTON_HEIGHT)
        if all(box[2] + 6 <= b[0] or b[2] + 6 <= box[0] or box[3] + 6 <= b[1] or b[3] + 6 <= box[1] for b in taken):
            return box
    return None


def html(title: str, elements: list[Element]) -> str:
    rows, buttons, row = [], [], []
    for e in elements:
        if e.kind == "icon" and row:
            rows.append(row)
            row = []
        if e.kind == "button":
            buttons.append(f"<button>{e.text}</button>")
        else:
            row.append({"icon": f'<img alt="{e.text}">', "text": e.text,
                        "toggle": f'<input type="checkbox"{" checked" if e.on else ""}>'}[e.kind])
    rows.append(row)
    items = "".join(f"<li>{' '.join(r)}</li>" for r in rows)
    return f"<h1>{title}</h1><ul>{items}</ul>{''.join(buttons)}"


def questions(rng: random.Random, title: str, elements: list[Element]) -> list[QA]:
    size = (WIDTH, HEIGHT)
    buttons = [e for e in elements if e.kind == "button"]
    toggles = [e for e in elements if e.kind == "toggle"]
    rows = [e.text for e in elements if e.kind == "text"]
    button, any_element = rng.choice(buttons), rng.choice(elements)
    qa = [QA(f"Where is the {button.text} button? Answer with a bounding box.", box_to_text(button.box, size),
             "find", "ui"),
          QA(f"Where do I tap to press the {button.text} button?", point_to_text(button.centre, size), "tap", "ui",
             box=button.box),
          QA(f"What does the button at {box_to_text(button.box, size)} say?", button.text, "read", "ui"),
          QA(f"What kind of element is at {point_to_text(any_element.centre, size)}?", any_element.kind, "classify",
             "ui"),
          QA("What is the title of this screen?", title, "title", "ui"),
          QA("Summarise this screen.", f"{article(title, capital=True)} screen listing {listing(rows)}, with "
             f"{len(toggles)} {'switch' if len(toggles) == 1 else 'switches'} and the "
             f"{listing([b.text for b in buttons])} {'button' if len(buttons) == 1 else 'buttons'}.", "describe", "ui"),
          QA("Write the HTML for this screen.", html(title, elements), "html", "code")]
    if toggles:
        toggle = rng.choice(toggles)
        state = "on" if toggle.on else "off"
        qa += [QA(f"Is the {toggle.text} switch on or off?", state, "state", "ui", options=("on", "off")),
               QA(f"Where do I tap to switch {toggle.text} {'off' if toggle.on else 'on'}?",
                  point_to_text(toggle.centre, size), "tap-switch", "ui", box=toggle.box)]
    rng.shuffle(qa)
    return qa
