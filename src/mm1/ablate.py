"""`mm1 ablate`: MM1's and MM1.5's key ablations at the embedded default's scale, as data.

A spec (`recipes/ablations/tiny.yaml`) names a base recipe, seeds and studies.  A study runs some of the recipe's
stages with fixed step counts and evaluates the last stage's model; its arms differ only by `set`, the dotted
overrides `mm1 train --set` takes (stages and sources addressed by name, `null` removes one), and may leave stages
out (continual pre-training off).  Each arm x seed trains in-process with `Trainer` and is scored with `evaluate`.

Shared across arms, so that they differ only in what is ablated: the world (the base recipe's `world:`
folder, the demo's; written when missing, as the demo does) and the tokenizer (trained once
on the whole base recipe's text into `<out>/tokenizer`; otherwise a captions-only arm would get its own vocabulary).
An arm's run directory is `<out>/runs/<hash of its resolved config>-s<seed>`, so an arm that several studies share
(the baseline) trains once per seed, and a rerun skips every evaluation whose summary exists.  Leading stages that
runs have in common (the same config up to that stage and the same seed: the contrastive encoder of arms that
differ only in pre-training) train once and are copied into the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from mm1.config import ConfigError, EvalConfig, MM1Config, _format_errors, _strict, load_config, to_dict
from mm1.data.world import ensure as ensure_world

Log = Callable[[str], None]


# ---- the spec -------------------------------------------------------------------------------------------------
@dataclass(config=_strict)
class Arm:
    name: str
    set: dict[str, Any] = dataclasses.field(default_factory=dict)  # dotted key -> value, as `--set key=value`
    stages: Optional[list[str]] = None  # a subset of the study's stages (default: all of them)


@dataclass(config=_strict)
class Expect:
    """The paper's direction: arm `better` scores above arm `worse`, or the `similar` arms score alike."""

    better: Optional[str] = None
    worse: Optional[str] = None
    similar: Optional[list[str]] = None
    metrics: Optional[list[str]] = None  # e.g. world-vqa/4-shot; default: every metric of the study

    def __post_init__(self):
        pair, group = self.better is not None and self.worse is not None, self.similar is not None
        if pair == group or (self.better is None) != (self.worse is None):
            raise ValueError("give either better and worse, or similar")
        if group and len(self.similar) < 2:
            raise ValueError(f"similar needs at least 2 arms, got {self.similar}")

    def arms(self) -> list[str]:
        return self.similar or [self.better, self.worse]

    def label(self) -> str:
        return " ≈ ".join(self.similar) if self.similar else f"{self.better} > {self.worse}"


@dataclass(config=_strict)
class Quick:
    steps: dict[str, int]
    limit: Optional[int] = None  # evaluation samples per task


@dataclass(config=_strict)
class Study:
    name: str
    finding: str  # the paper's sentence this study tests, with its direction
    stages: list[str]  # the base recipe's stages that run, in the recipe's order
    steps: dict[str, int]  # per stage
    quick: Quick
    eval: EvalConfig  # scores the model of the arm's last stage
    arms: list[Arm]
    expect: list[Expect] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        for field, steps in (("steps", self.steps), ("quick.steps", self.quick.steps)):
            if set(steps) != set(self.stages) or min(steps.values()) < 1:
                raise ValueError(f"study {self.name}: {field} needs a positive count for each of the stages "
                                 f"{self.stages}, got {steps}")
        names = [arm.name for arm in self.arms]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"study {self.name}: arms need at least 2 distinct names, got {names}")
        for arm in self.arms:
            if arm.stages is not None and not (arm.stages and set(arm.stages) <= set(self.stages)):
                raise ValueError(f"study {self.name}: arm {arm.name}: stages {arm.stages} must be a non-empty "
                                 f"subset of the study's {self.stages}")
        unknown = {name for expect in self.expect for name in expect.arms()} - set(names)
        if unknown:
            raise ValueError(f"study {self.name}: expect names unknown arms {sorted(unknown)}; arms: {names}")


@dataclass(config=_strict)
class AblationSpec:
    recipe: str  # relative to the working directory, like the recipes' own data paths
    studies: list[Study]
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
    world_size: str = "default"  # of the synthetic world written when the recipe's world is missing

    def __post_init__(self):
        names = [study.name for study in self.studies]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"studies need distinct names, got {names}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and not empty, got {self.seeds}")


def load_spec(path: str | Path) -> AblationSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ablation spec {path} does not exist")
    try:
        spec = TypeAdapter(AblationSpec).validate_python(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    except ValidationError as err:
        raise ConfigError(_format_errors(err, str(path))) from None
    if not Path(spec.recipe).is_file():
        raise ConfigError(f"{path}: recipe: {spec.recipe} does not exist (relative to the working directory)")
    return spec


def select(spec: AblationSpec, studies: list[str] | None, seeds: list[int] | None) -> AblationSpec:
    """The spec restricted to the named studies and with other seeds (the command line's --studies, --seeds)."""
    known = [study.name for study in spec.studies]
    unknown = set(studies or []) - set(known)
    if unknown:
        raise ConfigError(f"unknown studies {sorted(unknown)}; the spec has {known}")
    chosen = [study for study in spec.studies if not studies or study.name in studies]
    return dataclasses.replace(spec, studies=chosen, seeds=seeds or spec.seeds)


# ---- from a spec to runs --------------------------------------------------------------------------------------
@dataclasses.dataclass
class ArmRun:
    """One study's arm at one seed: the run that trains it and the evaluation that scores it."""

    study: str
    arm: str
    seed: int
    cfg: MM1Config
    eval: EvalConfig

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def summary(self) -> Path:
        return self.run_dir / f"eval-{digest(to_dict(self.eval))}" / "summary.json"


def digest(tree: Any) -> str:
    return hashlib.sha1(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:10]


def arm_overrides(base: MM1Config, study: Study, arm: Arm, quick: bool, tokenizer: Path) -> list[str]:
    """`--set` strings that turn the base recipe into this arm: the study's stages and steps (warm-up scaled with
    them, in-training evaluation off), then the arm's own overrides, then the stages it leaves out removed."""
    steps = study.quick.steps if quick else study.steps
    keep = arm.stages or study.stages
    sets: dict[str, Any] = {"tokenizer.path": str(tokenizer)}
    for stage in base.stages:
        if stage.name in keep:
            n = steps[stage.name]
            sets |= {f"stages.{stage.name}.steps": n, f"stages.{stage.name}.eval": None,
                     f"stages.{stage.name}.warmup_steps": round(stage.warmup_steps * n / stage.steps)}
    sets |= arm.set
    sets |= {f"stages.{stage.name}": None for stage in base.stages if stage.name not in keep}
    return [f"{key}={json.dumps(value)}" for key, value in sets.items()]  # JSON is YAML, as --set values are


def study_eval(study: Study, quick: bool, world: Path) -> EvalConfig:
    limit = study.quick.limit if quick and study.quick.limit else study.eval.limit
    return dataclasses.replace(study.eval, limit=limit, data_root=study.eval.data_root or str(world / "eval"))


def plan(spec: AblationSpec, source: str, out: Path, quick: bool, tokenizer: Path) -> list[ArmRun]:
    """Every study x arm x seed, resolved and validated before anything trains."""
    base = load_config(spec.recipe)
    recipe_stages = [stage.name for stage in base.stages]
    runs = []
    for i, study in enumerate(spec.studies):
        missing = set(study.stages) - set(recipe_stages)
        if missing:
            raise ConfigError(f"{source}: studies.{i}.stages: {sorted(missing)} not in {spec.recipe} "
                              f"(stages {recipe_stages})")
        evaluation = study_eval(study, quick, base.world_dir())
        check_metrics(study, evaluation, f"{source}: studies.{i}.expect")
        for arm in study.arms:
            try:
                cfg = load_config(spec.recipe, arm_overrides(base, study, arm, quick, tokenizer))
            except ConfigError as err:
                raise ConfigError(f"{source}: study {study.name}, arm {arm.name}: {err}") from None
            key = digest({k: v for k, v in to_dict(cfg).items() if k not in ("seed", "run_dir")})
            for seed in spec.seeds:
                run_cfg = dataclasses.replace(cfg, seed=seed, run_dir=str(out / "runs" / f"{key}-s{seed}"))
                runs.append(ArmRun(study.name, arm.name, seed, run_cfg, evaluation))
        check_compute([run for run in runs if run.study == study.name], source)
    return runs


def metric_names(evaluation: EvalConfig) -> list[str]:
    """The keys `evaluate` gives its scores."""
    from mm1.eval.tasks import load_task

    return [f"{load_task(task).config.name}/{k}-shot" for task in evaluation.tasks for k in evaluation.shots]


def check_metrics(study: Study, evaluation: EvalConfig, where: str) -> None:
    known = metric_names(evaluation)
    unknown = {m for expect in study.expect for m in expect.metrics or []} - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown metrics {sorted(unknown)}; the study's evaluation gives {known}")


def check_compute(runs: list[ArmRun], source: str) -> None:
    """Same compute per arm: every stage two arms share has the same steps, batch, accumulation and length."""
    seen: dict[str, tuple[str, tuple]] = {}
    for run in runs:
        for stage in run.cfg.stages:
            budget = (stage.steps, stage.batch_size, stage.grad_accum, stage.seq_len)
            first = seen.setdefault(stage.name, (run.arm, budget))
            if first[1] != budget:
                raise ConfigError(f"{source}: study {run.study}: arms {first[0]} and {run.arm} train stage "
                                  f"{stage.name} with different (steps, batch_size, grad_accum, seq_len): "
                                  f"{first[1]} vs {budget}; arms may differ only in what they ablate")


# ---- running --------------------------------------------------------------------------------------------------
def ensure_tokenizer(base: MM1Config, out: Path) -> Path:
    """The base recipe's tokenizer, trained as `Trainer` trains it, in `<out>/tokenizer`."""
    from mm1.train.trainer import Trainer

    Trainer(dataclasses.replace(base, run_dir=str(out)), log=lambda _: None).tokenizer()
    return out / "tokenizer"


def train_and_evaluate(group: list[ArmRun]) -> None:
    """Train one run (resuming whatever is done) and write each evaluation its arms ask for that is missing."""
    from mm1.eval import evaluate
    from mm1.model.mllm import MM1Model
    from mm1.train.trainer import Trainer

    run_dir = group[0].run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "a") as log_file:
        final = Trainer(group[0].cfg, log=lambda line: print(line, file=log_file, flush=True), progress=False).run()
    model = MM1Model.from_pretrained(final)
    for run in {run.summary: run for run in group if not run.summary.is_file()}.values():
        evaluate(model, **to_dict(run.eval), out_dir=run.summary.parent, model_name=str(final), log=None)


def stage_keys(cfg: MM1Config) -> list[str]:
    """Per stage, a digest of what its exported model depends on: the config but the run directory, with the stages
    up to that one.  Two runs of an ablation (one shared tokenizer) with equal keys train that stage identically."""
    tree = {key: value for key, value in to_dict(cfg).items() if key != "run_dir"}
    return [digest(tree | {"stages": tree["stages"][:k + 1]}) for k in range(len(cfg.stages))]


def finished_stages(cfgs: list[MM1Config]) -> dict[str, Path]:
    """Stage key -> a finished stage folder with that key, among the given runs."""
    return {key: Path(cfg.run_dir) / stage.name for cfg in cfgs
            for key, stage in zip(stage_keys(cfg), cfg.stages)
            if (Path(cfg.run_dir) / stage.name / "model" / "model.safetensors").is_file()}


def share_stages(cfg: MM1Config, finished: dict[str, Path], log: Log) -> None:
    """Copy in the leading stages another run has already trained the same way (the contrastive encoder and
    pre-training that arms differing only later have in common), so each trains once per seed."""
    for key, stage in zip(stage_keys(cfg), cfg.stages):
        target = Path(cfg.run_dir) / stage.name
        if (target / "model" / "model.safetensors").is_file():
            continue
        if key not in finished:
            return  # this stage trains, and so does every later one (they start from it)
        shutil.rmtree(target, ignore_errors=True)  # an interrupted attempt at this stage
        shutil.copytree(finished[key], target, ignore=shutil.ignore_patterns("checkpoints"))
        log(f"  stage {stage.name}: the same as in {finished[key].parent}, copied")


def run_all(runs: list[ArmRun], log: Log) -> None:
    """Train and evaluate every run whose evaluations are not all written, seed by seed, with progress lines."""
    groups: dict[Path, list[ArmRun]] = {}
    for run in sorted(runs, key=lambda r: r.seed):  # every arm at the first seed before any at the next
        groups.setdefault(run.run_dir, []).append(run)
    todo = [group for group in groups.values() if not all(run.summary.is_file() for run in group)]
    log(f"{len(groups)} distinct runs for {len(runs)} study arms x seeds; {len(groups) - len(todo)} already done")
    start = time.perf_counter()
    for done, group in enumerate(todo):
        names = ", ".join(sorted({f"{run.study}/{run.arm}" for run in group}))
        log(f"[{done + 1}/{len(todo)}] {names} seed {group[0].seed} -> {group[0].run_dir}")
        t0 = time.perf_counter()
        share_stages(group[0].cfg, finished_stages([other[0].cfg for other in groups.values()]), log)
        train_and_evaluate(group)
        elapsed = time.perf_counter() - start
        eta = elapsed / (done + 1) * (len(todo) - done - 1)
        log(f"[{done + 1}/{len(todo)}] done in {time.perf_counter() - t0:.0f} s; elapsed {elapsed / 60:.1f} min, "
            f"ETA {eta / 60:.1f} min")


# ---- results --------------------------------------------------------------------------------------------------
def arm_stats(per_seed: dict[int, dict[str, float]]) -> dict:
    """Mean and sample standard deviation over seeds of each metric (std 0 with a single seed)."""
    metrics = list(next(iter(per_seed.values())))
    values = {m: [scores[m] for scores in per_seed.values()] for m in metrics}
    return {"mean": {m: statistics.fmean(v) for m, v in values.items()},
            "std": {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in values.items()},
            "n": len(per_seed)}


def check(expect: Expect, arms: dict[str, dict], metric: str) -> dict:
    """Whether the paper's direction holds on `metric`, from the arms' means.  A difference no larger than the
    seeds' spread (the two arms' standard deviations combined, sqrt(s1² + s2²)) is noise, not a direction."""
    if expect.similar:  # the extreme pair decides: the best and the worst of the arms named
        ranked = sorted(expect.similar, key=lambda a: arms[a]["mean"][metric])
        hi, lo = ranked[-1], ranked[0]
    else:
        hi, lo = expect.better, expect.worse
    difference = arms[hi]["mean"][metric] - arms[lo]["mean"][metric]
    noise = math.hypot(arms[hi]["std"][metric], arms[lo]["std"][metric])
    if expect.similar:
        verdict = "yes (within noise)" if difference <= noise else f"no ({hi} ahead of {lo})"
    else:
        verdict = "within noise" if abs(difference) <= noise else ("yes" if difference > 0 else "no (opposite)")
    return {"expected": expect.label(), "metric": metric, "difference": difference, "noise": noise,
            "reproduced": verdict}


def summarise(study: Study, runs: list[ArmRun]) -> dict:
    """A study's scores per arm and seed, their statistics and the paper's directions checked."""
    arms: dict[str, dict] = {}
    for run in runs:
        entry = arms.setdefault(run.arm, {"runs": {}, "scores": {}})
        entry["runs"][run.seed] = str(run.run_dir)
        entry["scores"][run.seed] = json.loads(run.summary.read_text())["scores"]
    for entry in arms.values():
        entry |= arm_stats(entry["scores"])
    metrics = metric_names(runs[0].eval)
    checks = [check(expect, arms, metric) for expect in study.expect for metric in expect.metrics or metrics]
    return {"finding": study.finding, "stages": study.stages, "eval": to_dict(runs[0].eval), "metrics": metrics,
            "arms": arms, "checks": checks}


def markdown(results: dict) -> str:
    lines = [f"# MM1 ablations ({results['spec']}{', quick' if results['quick'] else ''})", "",
             f"Base recipe {results['recipe']}, seeds {results['seeds']}, {results['minutes']:.1f} min. "
             "Scores are mean ± standard deviation over seeds; a difference no larger than the seeds' spread "
             "(√(s₁² + s₂²)) is reported as within noise.", ""]
    for name, study in results["studies"].items():
        metrics, ev = study["metrics"], study["eval"]
        lines += [f"## {name}", "", f"Finding: {study['finding']}", "",
                  "Steps: " + ", ".join(f"{stage} {results['steps'][name][stage]}" for stage in study["stages"])
                  + f"; evaluated as {ev['mode']} model, {ev['limit'] or 'all'} samples per task.", "",
                  "| arm | " + " | ".join(metrics) + " | seeds |", "|---" * (len(metrics) + 2) + "|"]
        for arm, entry in study["arms"].items():
            cells = [f"{entry['mean'][m]:.3f} ± {entry['std'][m]:.3f}" for m in metrics]
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {entry['n']} |")
        if study["checks"]:
            lines += ["", "| expected | metric | difference | noise | reproduced |", "|---|---|---|---|---|"]
            lines += [f"| {c['expected']} | {c['metric']} | {c['difference']:+.3f} | {c['noise']:.3f} | "
                      f"{c['reproduced']} |" for c in study["checks"]]
        lines.append("")
    return "\n".join(lines + ["![ablations](ablations.png)", ""])


def plot(results: dict, out: Path) -> None:
    """One panel per study: a group of bars per metric, one bar per arm, standard deviation over seeds as error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    studies = results["studies"]
    cols = min(3, len(studies))
    rows = math.ceil(len(studies) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, (name, study) in zip(axes.flat, studies.items()):
        width = 0.8 / len(study["arms"])
        for i, (arm, entry) in enumerate(study["arms"].items()):
            xs = [j + (i - (len(study["arms"]) - 1) / 2) * width for j in range(len(study["metrics"]))]
            ax.bar(xs, [entry["mean"][m] for m in study["metrics"]], width,
                   yerr=[entry["std"][m] for m in study["metrics"]], capsize=2, label=arm)
        ax.set_xticks(range(len(study["metrics"])), study["metrics"], rotation=30, ha="right", fontsize=8)
        ax.set(title=name, ylabel="score, mean ± std over seeds")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(studies):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def run_ablations(spec_path: str | Path, out: str | Path | None = None, quick: bool = False,
                  seeds: list[int] | None = None, studies: list[str] | None = None, log: Log = print) -> dict:
    """Run (or resume) the spec's studies; write results.json, ablations.md and ablations.png to `out`."""
    start = time.perf_counter()
    spec = select(load_spec(spec_path), studies, seeds)
    out = Path(out or ("runs/ablate-quick" if quick else "runs/ablate"))
    base = load_config(spec.recipe)
    ensure_world(base.world_dir(), base.seed, spec.world_size, log)
    runs = plan(spec, str(spec_path), out, quick, ensure_tokenizer(base, out))
    run_all(runs, log)
    results = {"spec": str(spec_path), "recipe": spec.recipe, "quick": quick, "seeds": spec.seeds,
               "steps": {s.name: s.quick.steps if quick else s.steps for s in spec.studies},
               "studies": {s.name: summarise(s, [r for r in runs if r.study == s.name]) for s in spec.studies},
               "minutes": (time.perf_counter() - start) / 60}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "ablations.md").write_text(markdown(results))
    plot(results, out / "ablations.png")
    log(markdown(results))
    log(f"wrote {out}/results.json, ablations.md and ablations.png")
    return results
