"""The embedded default, end to end: synthesise the world, train the recipe's stages, evaluate, report, answer.

Everything is generated here, so it runs on a fresh machine with no downloads.  The recipe's data paths point into
its world folder (`world:`, default `<run_dir>/world`), where the world is written when it is not there yet.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from mm1.config import MM1Config
from mm1.data.coords import box_to_text, draw_regions, parse_regions
from mm1.data.world import ensure as ensure_world
from mm1.eval.probe import probe
from mm1.eval.report import format_table
from mm1.model.mllm import MM1Model
from mm1.train.trainer import Trainer


def stage_rows(run_dir: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / stage / "metrics.jsonl").read_text().splitlines()]


def answer_grounding_question(model: MM1Model, world: Path, out_png: Path) -> dict:
    """Ask for a box on the first held-out grounding image and draw the answer."""
    ref = json.loads((world / "eval" / "refcoco.json").read_text())[0]
    image_path = world / "eval" / ref["image"]
    question = f"Where is {ref['sentences'][0]}? Answer with a bounding box."
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n" + question}]}]
    answer = model.chat(messages, [image_path])
    regions, errors = parse_regions(answer)
    image = model.processor.load_image(image_path)
    draw_regions(image, regions).save(out_png)
    x, y, w, h = ref["bbox"]
    return {"image": str(image_path), "question": question, "answer": answer,
            "truth": box_to_text((x, y, x + w, y + h), image.size), "parse_errors": [str(e) for e in errors],
            "drawn": str(out_png)}


def probe_stages(cfg: MM1Config, run_dir: Path) -> dict[str, dict]:
    """Linear probes of each stage's model (eval/probe.py): which attributes its image tokens carry."""
    return {stage.name: probe(MM1Model.from_pretrained(run_dir / stage.name / "model")) for stage in cfg.stages}


def probe_lines(probes: dict[str, dict]) -> list[str]:
    stages = list(probes)
    attributes = probes[stages[0]]
    lines = ["## What the image tokens carry", "",
             "Linear probes fitted on one-object scenes of the training pairs, scored on the held-out pairs (`mm1 "
             "probe`): encoder features / image tokens, and in brackets the same on new scenes of the training pairs. "
             "An attribute the tokens do not carry cannot be answered; one they carry but the answers miss is the "
             "LLM's to learn; one carried on seen pairs only is tied to the colours it was seen with. The two "
             "colour rows read one patch / one token at a time in scenes of 1-5 objects: the colour of the object "
             "centred in its cell, and of another object (local features read the first and not the second). The "
             "letter row tells single capitals apart on signs, fitted at the signs' font sizes and scored at a size "
             "between them (seen: new signs at the fitted sizes).", "",
             "| attribute | majority class | " + " | ".join(stages) + " |", "|---" * (len(stages) + 2) + "|"]
    for name in attributes:
        cells = [f"{p['encoder']:.2f} / {p['connector']:.2f} (seen {p['encoder_seen']:.2f} / {p['connector_seen']:.2f})"
                 for p in (probes[s][name] for s in stages)]
        lines.append(f"| {name} | {attributes[name]['majority']:.2f} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot_scores(rows: dict[str, dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.5), squeeze=False)
    for ax, (stage, scores) in zip(axes[0], rows.items()):
        ax.bar(range(len(scores)), list(scores.values()))
        ax.set_xticks(range(len(scores)), list(scores), rotation=45, ha="right", fontsize=8)
        ax.set(title=f"after {stage}", ylim=(0, max(1.0, *scores.values())))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_report(cfg: MM1Config, run_dir: Path, scores: dict[str, dict[str, float]], probes: dict[str, dict],
                 example: dict, seconds: float) -> Path:
    lines = [f"# mm1 demo report ({cfg.run_dir})", "",
             f"Wall time {seconds / 60:.1f} min. Recipe stages, each from the previous stage's model:", "",
             "| stage | steps | final loss | tokens/s | skipped records |", "|---|---|---|---|---|"]
    for stage in cfg.stages:
        last = [r for r in stage_rows(run_dir, stage.name) if "loss" in r][-1]
        lines.append(f"| {stage.name} | {last['step']} | {last['loss']:.3f} | {last['tokens_per_s']:.0f} | "
                     f"{last['skipped_records']} |")
    lines += ["", "Loss curves: " + " ".join(f"![{s.name}]({s.name}/loss.png)" for s in cfg.stages), "",
              "## Held-out scores", "", "Unseen (colour, shape) pairs, unseen OCR words, unseen seeds. Details hold "
              "partial credit (mean IoU, character similarity, accuracy per answer type) and `same_answer`: over "
              "questions asked of several images, the share answered with the question's commonest answer (1.0 for a "
              "model that ignores the image; `same_answer_refs` is the targets' share).", ""]
    for stage, stage_scores in scores.items():
        saved = run_dir / stage / "eval" / "summary.json"
        if saved.is_file():
            lines += [f"After {stage} (predictions in `{stage}/eval/predictions/`):", "",
                      format_table(json.loads(saved.read_text())["results"]), ""]
        else:  # a stage finished by an older mm1 kept its scores only
            lines += [f"After {stage}: " + ", ".join(f"{task} {v:.3f}" for task, v in stage_scores.items()), ""]
    lines += ["![scores](scores.png)", "", *probe_lines(probes), "## One held-out question", "",
              f"Q: {example['question']}  ", f"A: `{example['answer']}` (truth: `{example['truth']}`)", "",
              "![answer](answer.png)", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def run_demo(cfg: MM1Config, world_size: str = "default", log: Callable[[str], None] = print) -> dict:
    start = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    world = ensure_world(cfg.world_dir(), cfg.seed, world_size, log)
    final = Trainer(cfg, log=log).run()
    scores = {stage.name: row["eval"] for stage in cfg.stages
              for row in stage_rows(run_dir, stage.name)[-1:] if "eval" in row}
    plot_scores(scores, run_dir / "scores.png")
    example = answer_grounding_question(MM1Model.from_pretrained(final), world, run_dir / "answer.png")
    log(f"held-out question: {example['question']}\n  answer: {example['answer']} -> {example['drawn']}")
    probes = probe_stages(cfg, run_dir)
    report = write_report(cfg, run_dir, scores, probes, example, time.perf_counter() - start)
    summary = {"model": str(final), "scores": scores, "probes": probes, "example": example, "report": str(report),
               "minutes": (time.perf_counter() - start) / 60}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"report: {report}")
    return summary
