"""What an evaluation run leaves behind: predictions/<task>_<k>shot.jsonl, summary.json, report.md, scores.png."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

LISTED_SKIPS = 50  # report.md names this many skipped records; summary.json names all


def _details(details: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in details.items())


def format_table(rows: list[dict]) -> str:
    """A markdown table (readable as plain text too); scores x100, as the papers print CIDEr and accuracies."""
    lines = ["| task | shots | mode | metric | score x100 | n | skipped | details |", "|---" * 8 + "|"]
    for r in rows:
        skipped = sum(r.get("skipped", {}).values())
        lines.append(f"| {r['task']} | {r['shots']} | {r['mode']} | {r['metric']} | {100 * r['score']:.1f} | {r['n']} "
                     f"| {skipped} | {_details(r['details'])} |")
    return "\n".join(lines)


def plot_scores(rows: list[dict], path: Path) -> None:
    """One panel per task: score x100 against the number of shots, one line per prompting mode."""
    from matplotlib.figure import Figure  # Figure renders with Agg by itself: no pyplot, no global backend

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig = Figure(figsize=(3.2 * len(tasks), 3), layout="constrained")
    for ax, task in zip(fig.subplots(1, len(tasks), squeeze=False)[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        for mode in dict.fromkeys(r["mode"] for r in mine):
            points = sorted((r["shots"], 100 * r["score"]) for r in mine if r["mode"] == mode)
            ax.plot(*zip(*points), marker="o", label=mode)
        ax.set(title=task, xlabel="shots", ylabel=f"{mine[0]['metric']} x100", ylim=(0, None))
        ax.set_xticks(sorted({r["shots"] for r in mine}))
        ax.legend()
    fig.savefig(path, dpi=100)


def write_report(summary: dict, predictions: dict[str, list[dict]], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    for name, records in predictions.items():
        with open(out / "predictions" / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    plot_scores(summary["results"], out / "scores.png")
    settings = summary["settings"]
    lines = ["# mm1 evaluation", "", f"Model: `{summary['model']}`  ",
             f"Shots {settings['shots']}, mode {settings['mode']}, limit {settings['limit']}, seed {settings['seed']}, "
             f"greedy decoding; {summary['seconds']} s.", "",
             "Scores x100 (CIDEr as papers print it, accuracies in percent). Per-sample predictions are in "
             "`predictions/`, all numbers in `summary.json`.", "", format_table(summary["results"]), "",
             "![scores](scores.png)", ""]
    skipped = summary["skipped"]
    if skipped:
        counts = Counter((s["task"], s["reason"]) for s in skipped)
        lines += ["## Skipped records", "", f"{len(skipped)} records or samples were left out:", ""]
        lines += [f"- {task}: {reason} x{n}" for (task, reason), n in sorted(counts.items())]
        lines += ["", f"The first {min(LISTED_SKIPS, len(skipped))} (all in `summary.json`):", ""]
        lines += [f"- `{s['file']}` {s['record']}: {s['reason']} ({s['detail']})" for s in skipped[:LISTED_SKIPS]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out
