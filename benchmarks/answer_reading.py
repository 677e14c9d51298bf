"""Can the LLM learn to read an attribute its image tokens carry?  Single-turn VQA from a trained model directory.

`mm1 probe` found the background colour in the image tokens (0.7-1.0 held out), yet the SFT model of the default
with its encoder trained in every stage answered "What colour is the background?" with one word whatever the image.
This measures how many questions the LLM needs to learn such a reading.  It trains a model (default: the
demo's CPT model, `runs/tiny/cpt/model`) on single-turn questions of new one- to five-object scenes of the
training (colour, shape) pairs, batch 32, AdamW with gradient clipping at 1.0, and scores greedy answers on
scenes of the held-out pairs.  Arms: the background question alone with every module trained; the same with the
encoder and connector frozen (what the LLM alone can learn from the tokens as they are); every question type of
the world (count, colour, shape, existence, position, size, background) with every module trained; and every type
in the binding family's setting (the overview alone with the grid position embedding, connector and LLM trained):
does the lookup still form when the questions that name an object are a few kinds among seven?

`--family grounding` asks the same of place: "Where is the red circle? Answer with a bounding box.", scored as
the grounding task is (a box is right at IoU >= 0.5; mean IoU as partial credit).  Arms: the connector and LLM
trained (what the default's SFT trains); the same with a learnt grid position embedding added to the image tokens
(`connector.position_embedding`, new weights), so that place is in the tokens the LLM reads; every module trained
(an encoder that may learn to locate); and, since split tiles share one grid embedding (only the overview's
tokens say where in the image they are), the first two on the overview view alone.

`--family grounding-long` trains the first grounding arm for longer (1,500 steps unless `--steps`), beside the
same on one-object scenes, where "the red circle" is the only thing in the picture: no referring is needed, only
turning place into coordinates, so the two arms separate finding the object from writing where it is.

`--family grounding-curriculum` (1,000 steps unless `--steps`) asks whether writing boxes first helps finding the
object: the first arm again, then the same with the first half of its steps on one-object scenes (MM1.5's
curricula go from easy data to hard), and that with the grid position embedding, so that the token the LLM
attends to says where it is (rotary positions enter attention scores, not what a head reads).  Box scores are
given apart for the held-out scenes of one object and of 2-5.

`--family grounding-colour` (1,000 steps) is the curriculum arm with the object named by its colour alone ("the
red shape"), which every held-out scene makes unique (training questions where it is not are left out): is the
colour word the one the LLM fails to follow, or the two-word name?
`--family binding` (1,600 steps unless `--steps`) asks where the LLM looks: "Where is the red circle?" answered
with its place in thirds ("top left", ...), on the overview view alone (16 tokens) with the grid position embedding,
so that the named object's tokens say where it is.  After training, for each head, from the position that writes
the first answer token, its attention on the named object's tokens as a share of its attention on all objects'
tokens, divided by the named object's share of those tokens: 1 for a head that looks at the objects with no
preference for the named one, more for one that picks it out (`selectivity`).  Its second arm asks the same with
no image, the scene told in words first ("Imagine a picture. ... There is a small red circle at the top left. ..."
as in the world's text data): is the lookup hard on image tokens, or for the LLM whatever it reads?  Its third
arm is the first with the LLM's weights drawn anew: is it the LLM's pre-training that keeps it from the lookup?
The fourth draws a Qwen3 LLM of the same shape anew, whose RMSNorm on queries and keys (QK-norm) shortens the
plateau before the lookup on perfect image tokens (`recall.py --family cells-plateau`): does it on the real ones?
Results: results/answer_reading[_grounding|_grounding-long|_grounding-curriculum|_grounding-colour|_binding][_TAG].json.
"""

from __future__ import annotations

import dataclasses
import random
import time

from common import REPO, Bench, add_family_options, box_cells, chosen_arms, cli, table

@dataclasses.dataclass(frozen=True)
class Arm:
    kinds: list[str] | None  # question kinds trained and scored; None: every VQA kind
    trained: list[str]  # modules trained
    position: bool = False  # a grid position embedding added to the image tokens (new weights)
    split: bool = True  # views as the model's config makes them (the CPT model: tiles + overview); False: one view
    objects: int | None = None  # objects per scene; None: 1-5, as the world samples them
    share: float = 1.0  # of the family's steps: one VQA kind is learnt in fewer steps or not at all
    one_object_first: float = 0.0  # a curriculum: this share of the steps on one-object scenes, the rest as `objects`
    colour_only: bool = False  # "the red shape" for "the red circle"; questions whose colour is not unique dropped
    question_first: bool = False  # the question before the image (LLaVA's data has both orders)
    attention: bool = False  # also measure each head's `selectivity` after training (needs split=False)
    in_words: bool = False  # no image: the scene told in words first (the world's dense caption, as in its text data)
    fresh_llm: bool = False  # the LLM re-initialised (encoder and connector as trained): is its pre-training the cause?
    llm_type: str | None = None  # with fresh_llm: an LLM of this registry type instead of the model's


ALL, CONNECTOR_LLM = ["encoder", "connector", "llm"], ["connector", "llm"]
BOX = Arm(["ground-box"], CONNECTOR_LLM)  # what the default's SFT trains, asked of place
FAMILIES = {
    "vqa": {
        "background, all modules": Arm(["background"], ALL, share=0.5),
        "background, LLM only": Arm(["background"], ["llm"], share=0.5),
        "every kind, all modules": Arm(None, ALL),
        "every kind, connector + LLM, overview, grid position": Arm(None, CONNECTOR_LLM, position=True, split=False),
    },
    "grounding": {
        "box, connector + LLM": BOX,
        "box, connector + LLM, grid position": dataclasses.replace(BOX, position=True),
        "box, all modules": dataclasses.replace(BOX, trained=ALL),
        "box, connector + LLM, overview only": dataclasses.replace(BOX, split=False),
        "box, connector + LLM, grid position, overview only": dataclasses.replace(BOX, position=True, split=False),
    },
    "grounding-long": {
        "box, connector + LLM": BOX,
        "box, connector + LLM, one object per scene": dataclasses.replace(BOX, objects=1),
    },
    "grounding-curriculum": {
        "box, connector + LLM": BOX,
        "box, connector + LLM, one object per scene for the first half": dataclasses.replace(BOX, one_object_first=0.5),
        "box, connector + LLM, grid position, one object first": dataclasses.replace(
            BOX, position=True, one_object_first=0.5),
    },
    "grounding-colour": {
        "box, connector + LLM, one object first, named by colour alone": dataclasses.replace(
            BOX, one_object_first=0.5, colour_only=True),
    },
    "grounding-question-first": {
        "box, connector + LLM, question first, one object first": dataclasses.replace(
            BOX, one_object_first=0.5, question_first=True),
        "box, connector + LLM, question first": dataclasses.replace(BOX, question_first=True),
    },
    "binding": {
        "position, connector + LLM, overview, grid position": Arm(["position"], CONNECTOR_LLM, position=True,
                                                                   split=False, attention=True),
        "position, LLM, scene in words": Arm(["position"], ["llm"], in_words=True),
        "position, connector + fresh LLM, overview, grid position": Arm(["position"], CONNECTOR_LLM, position=True,
                                                                         split=False, attention=True, fresh_llm=True),
        "position, connector + fresh qwen3 LLM, overview, grid position": Arm(
            ["position"], CONNECTOR_LLM, position=True, split=False, attention=True, fresh_llm=True, llm_type="qwen3"),
    },
}
DEFAULT_STEPS = {"vqa": 400, "grounding": 400, "grounding-long": 1500, "grounding-curriculum": 1000,
                 "grounding-colour": 1000, "grounding-question-first": 1000, "binding": 1600}


def rebuilt(model, config, new: str):
    """A model of `config` with `model`'s weights copied except those whose names start with `new`, which are
    drawn anew (as `MM1Model` initialises them); any other weight that does not fit is an error."""
    from mm1.model.mllm import MM1Model

    hf_configs = model.hf_configs()
    if config.model.llm.type != model.config.model.llm.type:  # an LLM of another type: built from `config` alone
        del hf_configs["llm"]
    out = MM1Model(config, model.processor.tokenizer, hf_configs, load_weights=False)
    kept = {name: value for name, value in model.state_dict().items() if not name.startswith(new)}
    missing, unexpected = out.load_state_dict(kept, strict=False)
    if unexpected or not all(name.startswith(new) for name in missing):
        raise ValueError(f"unexpected weights: missing {missing}, unexpected {unexpected}")
    return out


def with_grid_position(model):
    """The same model with `connector.position_embedding` on: every trained weight copied, the embedding new."""
    cfg = model.config
    connector = dataclasses.replace(cfg.model.connector, position_embedding=True)
    return rebuilt(model, dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, connector=connector)),
                   new="connector.position.")


def selectivity(model, prompts: list, test: list) -> list[dict]:
    """Per LLM layer and head: how much more its attention from the last prompt position picks the named object's
    tokens than the objects' tokens at large (see the module docstring), over the test scenes of 2-5 objects.
    Assumes one view per image (the overview), whose token grid `box_cells` maps."""
    import torch

    side = round(model.processor.tokens_per_view ** 0.5)
    implementation = model.llm.config._attn_implementation
    model.llm.config._attn_implementation = "eager"  # the only implementation that returns attention weights
    model.eval()
    shares: dict[tuple[int, int], list[float]] = {}
    for encoded, (_, question, _, _, scene) in zip(prompts, test):
        if len(scene.objects) < 2:
            continue
        named = next(o for o in scene.objects if f" {o.name}" in question)
        target = sorted(box_cells(named.box, max(scene.size), side))
        objects = sorted(set().union(*(box_cells(o.box, max(scene.size), side) for o in scene.objects)))
        batch = model.processor.collate([encoded], padding_side="left")
        with torch.no_grad():
            out = model.llm(inputs_embeds=model.embed(batch["input_ids"], batch.get("pixel_values")),
                            attention_mask=batch["attention_mask"], output_attentions=True)
        image = (batch["input_ids"][0] == model.image_token_id).nonzero().flatten()
        for layer, weights in enumerate(out.attentions):
            on_image = weights[0, :, -1, image]  # (heads, image tokens)
            picked = on_image[:, target].sum(-1) / on_image[:, objects].sum(-1).clamp(min=1e-9)
            for head, share in enumerate(picked.tolist()):
                shares.setdefault((layer, head), []).append(share * len(objects) / len(target))
    model.llm.config._attn_implementation = implementation
    model.train()
    return [{"layer": layer, "head": head, "selectivity": round(sum(v) / len(v), 2)}
            for (layer, head), v in sorted(shares.items())]


def run_arm(model_dir: str, arm: Arm, steps: int, every: int, lr: float, test_samples: int,
            seed: int = 0) -> list[dict]:
    import torch

    from mm1.config import StageConfig
    from mm1.data.annotations import Sample
    from mm1.data.coords import box_to_text, text_to_box
    from mm1.data.world.base import HELDOUT, TRAIN
    from mm1.data.world.scenes import dense_caption, grounding, questions, render, sample_scene
    from mm1.eval.metrics import grounding as grounding_metric
    from mm1.model.mllm import MM1Model
    from mm1.train.optim import set_trainable

    torch.manual_seed(seed)
    model = MM1Model.from_pretrained(model_dir)
    if arm.fresh_llm:
        config = model.config
        if arm.llm_type:
            llm = dataclasses.replace(config.model.llm, type=arm.llm_type)
            config = dataclasses.replace(config, model=dataclasses.replace(config.model, llm=llm))
        model = rebuilt(model, config, new="llm.")
    if arm.position:
        model = with_grid_position(model)
    if not arm.split:
        image = model.config.image
        model.set_image_config(dataclasses.replace(image, split=dataclasses.replace(image.split, enabled=False)))
    set_trainable(model, StageConfig(trainable=arm.trained))
    processor, kinds = model.processor, arm.kinds
    boxes = kinds is not None and all(kind.startswith("ground") for kind in kinds)

    def by_colour(qa, scene):
        """The box question with the object named by its colour alone; None where another object shares it."""
        obj = next(o for o in scene.objects if box_to_text(o.box, scene.size) == qa.answer)
        if sum(o.colour == obj.colour for o in scene.objects) > 1:
            return None
        return dataclasses.replace(qa, question=qa.question.replace(obj.name, f"{obj.colour} shape"))

    def samples(split, rng: random.Random, n: int, objects: int | None = arm.objects) -> list[tuple]:
        out = []
        while len(out) < n:
            scene = sample_scene(rng, split, objects)
            asked = grounding(scene, rng) if boxes else questions(scene, rng, split)
            asked = [qa for qa in asked if kinds is None or qa.task in kinds]
            if arm.colour_only:
                asked = [qa for qa in (by_colour(qa, scene) for qa in asked) if qa is not None]
            # the media: the rendered scene, or the scene told in words
            media = f"Imagine a picture. {dense_caption(scene, rng)}" if arm.in_words else render(scene)
            out += [(media, qa.question, qa.answer, qa.task, scene) for qa in asked]
        return out[:n]

    def encode(media, question: str, answer: str | None):
        if arm.in_words:
            content, images = f"{media}\n{question}", []
        else:
            content = f"{question}\n<image>" if arm.question_first else f"<image>\n{question}"
            images = [media]
        messages = [{"role": "user", "content": content}]
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return processor.encode_chat(messages, images, add_generation_prompt=answer is None)

    test = samples(HELDOUT, HELDOUT.rng(0, "answer-reading"), test_samples)
    prompts = [encode(image, question, None) for image, question, *_ in test]
    if boxes:  # scored by the grounding task's own metric; the answer is the object's box
        targets = [Sample(str(i), box=text_to_box(answer, scene.size), size=scene.size)
                   for i, (_, _, answer, _, scene) in enumerate(test)]

    def accuracy() -> dict[str, float]:
        model.eval()
        predictions = []
        for start in range(0, len(test), 64):
            batch = processor.collate(prompts[start:start + 64], padding_side="left")
            out = model.generate(batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"),
                                 max_new_tokens=24 if boxes else 6)
            predictions += [processor.decode(ids).split("\n")[0].strip() for ids in out.tolist()]
        model.train()
        # Overall, and apart on one-object scenes, where no object has to be told from another (for box questions
        # and single-kind arms; with every kind, the table would triple).
        one = [len(scene.objects) == 1 for *_, scene in test]
        groups = {"": [True] * len(test)}
        if (boxes or len(kinds or ()) == 1) and any(one) and not all(one):
            groups |= {", 1 object": one, ", 2-5 objects": [not x for x in one]}
        scores = {}
        for name, keep in groups.items():
            if boxes:
                result = grounding_metric([pred for pred, k in zip(predictions, keep) if k],
                                          [t for t, k in zip(targets, keep) if k])
                scores |= {f"IoU>=0.5{name}": result.score, f"mean IoU{name}": result.details.get("mean_iou", 0.0)}
                continue
            right: dict[str, list[bool]] = {}
            for prediction, (_, _, answer, task, _), k in zip(predictions, test, keep):
                if k:
                    right.setdefault(task, []).append(prediction == answer)
            scores |= {f"{task}{name}": sum(v) / len(v) for task, v in sorted(right.items())}
        return scores

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = TRAIN.rng(seed, "answer-reading")
    rows, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        objects = 1 if step <= arm.one_object_first * steps else arm.objects
        batch = processor.collate([encode(image, q, a) for image, q, a, *_ in samples(TRAIN, rng, 32, objects)])
        loss = model(batch["input_ids"], batch.get("pixel_values"), attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % every == 0:
            scores = accuracy()
            rows.append({"step": step, "train loss": round(loss.item(), 3),
                         **{k: round(v, 2) for k, v in scores.items()}, "s": round(time.perf_counter() - start)})
    return rows, (selectivity(model, prompts, test) if arm.attention else [])


def main() -> None:
    p = cli(__doc__)
    p.add_argument("--model", default=str(REPO / "runs" / "tiny" / "cpt" / "model"))
    add_family_options(p, FAMILIES, default="vqa")
    p.add_argument("--steps", type=int, help=f"steps per arm (default per family: {DEFAULT_STEPS})")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0, help="the new weights' and the training questions' seed (the test "
                   "set's is fixed)")
    args = p.parse_args()
    name, arms = chosen_arms(args, FAMILIES, "vqa", "answer_reading")
    bench = Bench(name, args)
    steps = 40 if args.quick else args.steps or DEFAULT_STEPS[args.family]
    results, text = {}, []
    for name, arm in arms.items():
        arm_steps = max(1, int(steps * arm.share))
        rows, heads = run_arm(args.model, arm, arm_steps, max(1, arm_steps // 4), args.lr,
                              test_samples=32 if args.quick else 400, seed=args.seed)
        results[name] = rows
        text.append(table(rows, f"{name}: held-out scores ({args.model})"))
        if heads:
            results[f"{name}: attention"] = heads
            text.append(table(heads, f"{name}: attention on the named object, 2-5 objects"))
    bench.save({"model": args.model, "family": args.family, "lr": args.lr, "seed": args.seed, "arms": results}, text)

if __name__ == "__main__":
    main()
