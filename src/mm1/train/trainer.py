"""`mm1 train`: the stages of a recipe in order, each starting from the previous stage's exported model.

Per stage: freeze what the stage does not train, wrap for DDP/FSDP2 when launched by torchrun, build the
optimizer and schedule, resume from the stage's latest checkpoint if there is one, then loop: micro-batches ->
loss normalised by the step's global target-token count -> clip -> step.  Metrics go to `metrics.jsonl` (and
TensorBoard if asked), checkpoints every `checkpoint_every` steps, and the trained model is exported to
`<run_dir>/<stage>/model` for the next stage, `mm1.load` and the server.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm import tqdm
from transformers import AutoTokenizer

from mm1.config import MM1Config, StageConfig, load_config, save_config, to_dict
from mm1.data.mixture import StageData
from mm1.data.processor import IGNORE_INDEX
from mm1.data.readers import READERS, open_reader
from mm1.data.tokenizer import build_tokenizer
from mm1.model.mllm import CONFIG, MM1Model
from mm1.train import checkpoint
from mm1.train.contrastive import ContrastiveModel, swap_groups
from mm1.train.distributed import World, all_reduce_sum, barrier, init_world, wrap
from mm1.train.optim import build_optimizer, build_scheduler, format_trainable, set_trainable

Evaluator = Callable[[MM1Model], dict]


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class StepResult:
    loss: float
    lm_loss: float
    grad_norm: float
    tokens: int
    finite: bool
    balance: float | None = None
    z_loss: float | None = None
    expert_load: list[float] | None = None
    retrieval_accuracy: float | None = None  # contrastive stages: image -> caption within the batch


def autocast(stage: StageConfig, world: World):
    return torch.autocast(world.device.type, dtype=torch.bfloat16) if stage.bf16 else nullcontext()


def optimizer_step(module: torch.nn.Module, batches: list[dict], optimizer: torch.optim.Optimizer,
                   stage: StageConfig, world: World = World()) -> StepResult:
    """One optimizer step over `batches` (the micro-batches of this rank).  The summed token loss is divided by the
    target tokens of the whole step on all ranks, so gradients equal those of one big batch."""
    local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    targets = all_reduce_sum(torch.tensor(float(local)), world).item()
    per_rank = max(targets, 1.0) / world.size  # DDP and FSDP2 average gradients over ranks
    total = lm_total = 0.0
    aux: list = []
    for batch in batches:
        batch = {k: v.to(world.device) for k, v in batch.items()}
        with autocast(stage, world):
            out = module(**batch, num_target_tokens=per_rank, run_vision=world.active)
        # Auxiliary MoE losses are per micro-batch means: average them over the accumulation steps.
        loss = out.lm_loss + (out.loss - out.lm_loss) / len(batches)
        loss.backward()
        total += loss.item()
        lm_total += out.lm_loss.item()
        aux.append(out)
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batches)
    result = finish_step(optimizer, stage, world, total, lm_total, tokens)
    if aux[0].balance_loss is not None:
        result.balance = sum(o.balance_loss.item() for o in aux) / len(aux)
        result.z_loss = sum(o.z_loss.item() for o in aux) / len(aux)
        result.expert_load = (sum(o.expert_load for o in aux) / len(aux)).tolist()
    return result


def finish_step(optimizer: torch.optim.Optimizer, stage: StageConfig, world: World, total: float, lm_total: float,
                tokens: int) -> StepResult:
    """Clip, check every rank's loss and gradient are finite, step (or not), and average the logged losses."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, stage.grad_clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    # Each rank's loss is its share of the global mean scaled by the number of ranks: average to log the mean.
    stats = torch.tensor([total, lm_total, float(math.isfinite(total) and math.isfinite(grad_norm))])
    total, lm_total, finite_ranks = (all_reduce_sum(stats, world) / torch.tensor([world.size, world.size, 1])).tolist()
    finite = finite_ranks == world.size
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(total, lm_total, grad_norm, tokens, finite)


def contrastive_step(module: torch.nn.Module, batches: list[dict], optimizer: torch.optim.Optimizer,
                     stage: StageConfig, world: World = World()) -> StepResult:
    """One optimizer step of a contrastive stage: the mean InfoNCE loss of the micro-batches (each its own set of
    negatives); DDP averages it over ranks."""
    total = accuracy = 0.0
    for batch in batches:
        batch = {k: v.to(world.device) for k, v in batch.items()}
        with autocast(stage, world):
            loss, correct = module(**batch)
        (loss / len(batches)).backward()
        total += loss.item() / len(batches)
        accuracy += correct.item() / len(batches)
    tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    result = finish_step(optimizer, stage, world, total, total, tokens)
    result.retrieval_accuracy = all_reduce_sum(torch.tensor(accuracy), world).item() / world.size
    return result


def corpus_texts(cfg: MM1Config, per_source: int = 2000) -> Iterator[str]:
    """Text of the first records of every file-backed source (of every source when none is), to train the run's
    tokenizer on."""
    sources = [source for stage in cfg.stages for source in stage.data]
    files = [source for source in sources if READERS.get(source.format).file_backed]
    for source in files or sources:
        for i, record in enumerate(open_reader(source.format, source.path, sharded=False, **source.options)):
            if i >= per_source:
                break
            if record.text is not None:
                yield record.text
            for message in record.messages or []:
                yield message["content"]


def stage_evaluator(stage: StageConfig, out_dir: Path | None) -> Evaluator:
    """The stage's `eval:` block as a hook; with `out_dir`, each evaluation also leaves its predictions and details
    (partial credit, `same_answer`) there, the last one overwriting earlier ones."""
    from mm1.eval import evaluate

    return lambda model: evaluate(model, **to_dict(stage.eval), log=None, out_dir=out_dir)["scores"]


class MetricsLog:
    def __init__(self, path: Path, resume_step: int, tensorboard: bool):
        self.path = path
        lines = path.read_text().splitlines() if path.is_file() else []
        # Steps logged after the checkpoint we resume from will be run again: drop them.
        path.write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= resume_step))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError("tensorboard: true needs the tensorboard package (pip install 'mm1[tensorboard]')") from None
            self.writer = SummaryWriter(str(path.parent / "tensorboard"))

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, row["step"])


def plot_losses(metrics: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in map(json.loads, metrics.read_text().splitlines()) if "loss" in row]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
    ax.set(xlabel="step", ylabel="loss", title=out.parent.name, yscale="log")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


class Trainer:
    def __init__(self, cfg: MM1Config, world: World | None = None, log: Callable[[str], None] = print,
                 evaluator: Evaluator | None = None, progress: bool = True):
        self.cfg = cfg
        self.world = world or init_world(cfg.distributed)
        self.log = log if self.world.is_main else (lambda _: None)
        self.evaluator = evaluator
        self.progress = progress and self.world.is_main
        self.run_dir = Path(cfg.run_dir)

    def run(self, only_stage: str | None = None) -> Path:
        """Run every stage not yet finished (or just `only_stage`); returns the last exported model directory (with
        `only_stage`, that stage's)."""
        if only_stage is not None and only_stage not in [s.name for s in self.cfg.stages]:
            raise ValueError(f"no stage {only_stage!r} in the recipe; stages: {[s.name for s in self.cfg.stages]}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.world.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
        previous = exported = None
        for index, stage in enumerate(self.cfg.stages):
            export = self.run_dir / stage.name / "model"
            finished = (export / "model.safetensors").is_file()
            if (only_stage is None and not finished) or stage.name == only_stage:
                if only_stage is not None and index > 0 and previous is None:
                    raise ValueError(f"stage {stage.name} starts from stage {self.cfg.stages[index - 1].name}, "
                                     "which has not been run yet")
                self.train_stage(index, stage, previous)
            elif finished:
                self.log(f"stage {stage.name}: already finished ({export})")
            previous = export if (export / "model.safetensors").is_file() else None
            if previous is not None and only_stage in (None, stage.name):
                exported = previous
        return exported

    def tokenizer(self):
        """Built once per run (on rank 0) and saved, so every rank and every resumed run uses the same one."""
        folder = self.run_dir / "tokenizer"
        if self.world.is_main and not (folder / "tokenizer_config.json").is_file():
            corpus = None if self.cfg.tokenizer.path else corpus_texts(self.cfg)
            build_tokenizer(self.cfg.tokenizer, corpus).save_pretrained(folder)
        barrier(self.world)
        return AutoTokenizer.from_pretrained(folder)

    def initial_model(self, index: int, previous: Path | None) -> MM1Model:
        """Stage `index`'s model: new, or the previous stage's export with this stage's connector change made."""
        config = dataclasses.replace(self.cfg, model=self.cfg.stage_model(index))
        if previous is None:
            torch.manual_seed(self.cfg.seed)
            return MM1Model(config, self.tokenizer())
        before = self.cfg.stage_model(index - 1)
        saved, wanted = to_dict(load_config(previous / CONFIG).model), to_dict(before)
        if saved != wanted:  # else the run's config would describe weights the model does not have
            changed = {k: {"saved": saved.get(k), "recipe": v} for k, v in wanted.items() if saved.get(k) != v}
            raise ValueError(f"{previous} was built with another model than the recipe's: {changed}. A run's stages "
                             "share one architecture (but for each stage's `connector` changes); train the changed "
                             "model in a new run_dir")
        grows = config.model.connector != before.connector
        if grows:
            torch.manual_seed(self.cfg.seed + index)  # draws what the change adds
            self.log(f"stage {self.cfg.stages[index].name} changes the connector: {self.cfg.stages[index].connector}")
        model = MM1Model.from_pretrained(previous, config.model.connector if grows else None)
        model.config = config  # the run's config (this stage's model) carries the stages' settings on
        return model

    def train_stage(self, index: int, stage: StageConfig, previous: Path | None) -> None:
        world, stage_dir = self.world, self.run_dir / stage.name
        stage_dir.mkdir(parents=True, exist_ok=True)
        model = self.initial_model(index, previous)
        model.set_image_config(stage.image or self.cfg.image)
        self.log(f"stage {stage.name} ({index + 1}/{len(self.cfg.stages)}): from "
                 f"{previous or 'initialisation'}; {stage.steps} steps x {stage.grad_accum} x {stage.batch_size} "
                 f"{'packed sequences' if stage.packing else 'samples'} x {world.size} processes, peak lr {stage.lr:g}\n"
                 + format_trainable(set_trainable(model, stage)))
        if stage.activation_checkpointing:
            model.encoder.vision.activation_checkpointing_enable()
            model.llm.activation_checkpointing_enable()
        if stage.compile:
            model.llm.compile()
        model.to(world.device)
        if stage.objective == "contrastive":
            tokenizer = model.processor.tokenizer
            trained = ContrastiveModel(model.encoder, stage.contrastive, len(tokenizer), stage.seq_len,
                                       (self.cfg.model.encoder.image_mean, self.cfg.model.encoder.image_std),
                                       swap_groups(tokenizer, stage.contrastive.swap_words))
            trained.to(world.device)
            module = wrap(trained, self.cfg.distributed, world, stage.bf16)
            optimizer, step_fn = build_optimizer(trained, stage, beside=trained.head), contrastive_step
        else:
            module = wrap(model, self.cfg.distributed, world, stage.bf16)
            optimizer, step_fn = build_optimizer(model, stage), optimizer_step
        scheduler = build_scheduler(optimizer, stage)
        # Each rank draws its own source sequence (and reads its own share of every source's records).
        data = StageData(stage, model.processor, seed=self.cfg.seed + index + 1000 * world.rank)
        total_steps = self.steps(stage, data, world)
        step = 0
        saved = checkpoint.checkpoints(stage_dir / "checkpoints")
        if saved:
            extra, exact = checkpoint.load(saved[-1], module, optimizer, world)
            scheduler.load_state_dict(extra["scheduler"])
            step = extra["step"]
            if exact:
                data.load_state_dict(extra["data"])
                checkpoint.set_rng_state(extra["rng"])
            else:
                self.log("warning: the number of processes changed; data streams restart from their beginning")
            self.log(f"resumed {stage.name} from {saved[-1]} at step {step}")
        evaluator = self.evaluator or (stage_evaluator(stage, stage_dir / "eval" if world.is_main else None)
                                       if stage.eval and stage.eval.tasks else None)
        metrics = MetricsLog(stage_dir / "metrics.jsonl", step, self.cfg.tensorboard) if world.is_main else None
        module.train()
        bar = tqdm(total=total_steps, initial=step, desc=stage.name, disable=not self.progress, dynamic_ncols=True)
        start, tokens_done, skipped = time.perf_counter(), 0, 0
        while step < total_steps:
            result = step_fn(module, [next(data) for _ in range(stage.grad_accum)], optimizer, stage, world)
            if not result.finite:
                where = f"stage {stage.name} step {step + 1}: loss {result.loss}, gradient norm {result.grad_norm}"
                if stage.on_nonfinite == "stop":
                    last = checkpoint.checkpoints(stage_dir / "checkpoints")
                    raise NonFiniteLossError(f"{where}; stopped without updating. Last good checkpoint: "
                                             f"{last[-1] if last else 'none'}")
                skipped += 1
                self.log(f"warning: {where}; step skipped ({skipped} so far)")
            scheduler.step()
            step += 1
            tokens_done += result.tokens
            elapsed = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{result.loss:.3f}", tok_s=f"{tokens_done * world.size / elapsed:.0f}")
            if metrics and (step % stage.log_every == 0 or step == total_steps):
                metrics.write(self.metrics_row(stage, step, result, scheduler, tokens_done, elapsed, data, skipped))
            if step % stage.checkpoint_every == 0 or step == total_steps:
                extra = {"step": step, "scheduler": scheduler.state_dict(), "data": data.state_dict(),
                         "rng": checkpoint.rng_state()}
                checkpoint.save(stage_dir / "checkpoints", step, module, optimizer, extra, world, stage.keep_checkpoints)
            if evaluator and stage.eval_every and step % stage.eval_every == 0 and step < total_steps:
                self.evaluate(evaluator, model, stage, step, metrics)
        bar.close()
        model.eval()
        if evaluator:
            self.evaluate(evaluator, model, stage, step, metrics)
        self.export(model, stage_dir / "model")
        barrier(world)
        if world.is_main:
            plot_losses(stage_dir / "metrics.jsonl", stage_dir / "loss.png")
            self.log(f"stage {stage.name}: done; {data.mixture.stats.report()}")

    def steps(self, stage: StageConfig, data: StageData, world: World) -> int:
        if stage.epochs is None:
            return stage.steps
        records = sum(sum(1 for _ in open_reader(s.format, s.path, sharded=False, **s.options)) for s in stage.data)
        per_step = stage.batch_size * stage.grad_accum * world.size
        if stage.packing:  # samples per packed sequence, measured on the stream's first sequences
            probe = StageData(stage, data.processor, seed=self.cfg.seed)
            [next(probe) for _ in range(4)]
            per_step *= probe.packer.stats.samples / max(probe.packer.stats.sequences, 1)
        return max(1, math.ceil(stage.epochs * records / per_step))

    def metrics_row(self, stage, step, result: StepResult, scheduler, tokens, elapsed, data, skipped) -> dict:
        row = {"stage": stage.name, "step": step, "loss": result.loss, "lm_loss": result.lm_loss,
               "grad_norm": result.grad_norm, "lr": scheduler.get_last_lr()[0],
               "tokens_per_s": tokens * self.world.size / elapsed, "skipped_steps": skipped,
               "skipped_records": data.mixture.stats.skipped}
        if data.packer is not None:
            row["packing_efficiency"] = data.packer.stats.efficiency(stage.seq_len)
        if result.retrieval_accuracy is not None:
            row["retrieval_accuracy"] = result.retrieval_accuracy
        if result.balance is not None:
            row.update(balance_loss=result.balance, z_loss=result.z_loss,
                       expert_load_max=max(result.expert_load), expert_load_min=min(result.expert_load))
        return row

    def evaluate(self, evaluator: Evaluator, model: MM1Model, stage: StageConfig, step: int,
                 metrics: MetricsLog | None) -> None:
        scores = evaluator(model)
        if metrics:
            metrics.write({"stage": stage.name, "step": step, "eval": scores})
            self.log(f"eval at {stage.name} step {step}: {scores}")
        model.train()

    def export(self, model: MM1Model, path: Path) -> None:
        """The full model on rank 0 (gathered from FSDP2 shards) as an `mm1.load`-able directory."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.world.is_main:
            plain = MM1Model(model.config, model.processor.tokenizer, model.hf_configs(), load_weights=False)
            plain.load_state_dict(state)
            plain.set_image_config(model.config.image)
            plain.save_pretrained(path)
