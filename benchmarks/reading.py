"""How far does a model read?  Greedy answers to "What does the sign say?" on signs drawn from a random stream of
their own (never a training draw): made-up strings of each `--letters` range (`world-signs`' signs,
`mm1.data.world.conversations.sign_reading`), 200 per range, each model's views as its config makes them, or one
64-px view (`--one-view`).  Scores: the whole answer exact (with the number some signs add), the string alone
exact, and its letters in place (the i-th letter right, over all letters).  The world's OCR task (held-out real
words) is `mm1 eval`'s; this follows the reading curriculum's steps (`recipes/tiny-reading.yaml`): one letter,
two or three, a word.

  python benchmarks/reading.py runs/tiny-reading/letters/model runs/tiny-reading/short-strings/model --letters 1 1 \
      --letters 2 3 --letters 3 7

Results: results/reading[_TAG].json.
"""

from __future__ import annotations

import random

from common import Bench, cli, table


def read_signs(model_dir: str, letters: tuple[int, int], n: int, one_view: bool) -> dict:
    from mm1.config import ImageConfig
    from mm1.data.world.base import HELDOUT
    from mm1.data.world.conversations import sign_reading
    from mm1.eval.harness import generate_texts, inference
    from mm1.model.mllm import MM1Model

    model = MM1Model.from_pretrained(model_dir)
    if one_view:
        model.set_image_config(ImageConfig(size=model.config.image.size))
    rng = random.Random(f"reading:{letters}")
    drawn = [sign_reading(rng, HELDOUT, letters) for _ in range(n)]
    prompts = [model.processor.encode_chat([{"role": "user", "content": conversation[0]["value"]}],
                                           [media["image"]], add_generation_prompt=True)
               for media, conversation in drawn]
    with inference(model):
        said = [text.strip() for text in generate_texts(model, prompts, max_new_tokens=8, batch_size=50)]
    answers = [conversation[1]["value"] for _, conversation in drawn]
    strings = [answer.split(" ")[0] for answer in answers]
    in_place = sum(sum(a == b for a, b in zip(text, string)) for text, string in zip(said, strings))
    views = "tiles + overview" if model.config.image.split.enabled else "one"
    return {"model": model_dir, "letters": f"{letters[0]}-{letters[1]}", "views": views,
            "exact": round(sum(t == a for t, a in zip(said, answers)) / n, 3),
            "string exact": round(sum(t.split(" ")[0] == s for t, s in zip(said, strings)) / n, 3),
            "letters in place": round(in_place / sum(map(len, strings)), 3),
            "examples": " ".join(f"{t or '-'}/{a}" for t, a in zip(said[:3], answers[:3]))}


def main() -> None:
    p = cli(__doc__)
    p.add_argument("models", nargs="+", help="saved model directories")
    p.add_argument("--letters", nargs=2, type=int, action="append", metavar=("FEWEST", "MOST"),
                   help="a range of string lengths (repeatable; default 1 1)")
    p.add_argument("--one-view", action="store_true", help="one view per sign whatever the model's config says")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--tag", default="")
    args = p.parse_args()
    bench = Bench("reading" + (f"_{args.tag}" if args.tag else ""), args)
    n = 40 if args.quick else args.n
    rows = [read_signs(model, tuple(letters), n, args.one_view)
            for model in args.models for letters in (args.letters or [[1, 1]])]
    text = table(rows, f"reading fresh signs of made-up strings ({n} per range, drawn apart from training)")
    print(text)
    bench.save({"rows": rows}, [text])


if __name__ == "__main__":
    main()
