"""Typed configuration: dataclasses validated by pydantic, loaded from YAML recipes, overridable from the CLI.

A recipe is a YAML file whose keys mirror these dataclasses.  Unknown keys, wrong types and impossible
combinations raise `ConfigError` naming the file and the dotted key.  `--set model.connector.tokens=64`
style overrides are applied on top of the YAML before validation.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

_strict = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A recipe or override that cannot describe a valid run."""


@dataclass(config=_strict)
class EncoderConfig:
    """CLIP-style ViT.  With `path`, weights and shape come from a local Hugging Face directory."""

    type: str = "clip"  # registry name: clip | siglip
    path: Optional[str] = None
    image_size: int = 378  # native resolution; other view sizes use position-embedding interpolation
    patch_size: int = 14
    hidden_size: int = 1280
    layers: int = 32
    heads: int = 16
    intermediate_size: int = 5120
    # Which hidden state feeds the connector (LLaVA convention: -1 last layer, -2 penultimate).
    # Layers after it are removed at build time, so they cost nothing and hold no unused parameters.
    feature_layer: int = -1
    # How pixels become patch tokens: "patch", CLIP's linear embedding of each patch; "conv", stride-2 3x3
    # convolutions down to the patch size (Xiao et al. 2021, "Early convolutions help transformers see better"):
    # with it, a patch-8 ViT from random weights learns from labels the shape of 9-26 px objects and letters, as a
    # patch-4 one does at four times the tokens (README).  From-scratch encoders only: a pre-trained CLIP comes with
    # its linear one.
    stem: Literal["patch", "conv"] = "patch"
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP statistics
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.feature_layer == 0 or abs(self.feature_layer) > self.layers:
            raise ValueError(f"feature_layer {self.feature_layer} is outside 1..{self.layers} (or -1..-{self.layers})")
        if self.stem == "conv" and self.path:
            raise ValueError(f"stem 'conv' is for encoders trained from scratch; {self.path} brings its own linear "
                             f"patch embedding (use stem 'patch')")
        if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
            raise ValueError(f"stem 'conv' halves the resolution per layer, so patch_size must be a power of two; "
                             f"got {self.patch_size}")


@dataclass(config=_strict)
class ConnectorConfig:
    """One block fully describes the connector: `{type: c-abstractor, tokens: 144}`."""

    type: str = "c-abstractor"  # registry name: c-abstractor | avg-pool | attn-pool | mlp
    tokens: int = 144  # output tokens per image view (ignored by mlp, which keeps every patch)
    depth: int = 3  # c-abstractor: ResNet blocks before and after pooling; attn-pool: attention layers
    mlp_depth: int = 2  # layers of the final projection into the LLM width
    hidden_size: Optional[int] = None  # inner width; default: the encoder width
    # Add a learned embedding of each image token's (row, column) in its view to the token (model/connector.py).
    # Not in MM1 (NS); Honeybee's C-Abstractor adds one to its input.  Needs a grid-shaped connector.
    position_embedding: bool = False
    # RMS-normalise the image tokens with a learnt gain that starts at the LLM's token-embedding scale (NS in MM1).
    # A from-scratch connector's tokens are otherwise tens of times larger than the text tokens beside them, so the
    # LLM's layers barely change them (their residual updates are small next to the input).
    output_norm: bool = False

    def __post_init__(self):
        if self.position_embedding and self.type == "attn-pool":
            raise ValueError("connector.position_embedding needs tokens laid out on the view's grid; attn-pool's "
                             "tokens are learned queries (use c-abstractor, avg-pool or mlp)")


@dataclass(config=_strict)
class MoEConfig:
    """Sparse FFNs in the LLM (GShard / ST-MoE style, as in MM1 / MM1.5)."""

    # Layout; None takes the checkpoint's value with llm.path, else the MM1 default (64 experts, top-2, every 2nd
    # layer, experts as wide as the dense FFN).
    experts: Optional[int] = None
    top_k: Optional[int] = None
    every: Optional[int] = None  # a sparse FFN replaces the dense one in every `every`-th layer
    expert_intermediate_size: Optional[int] = None
    balance_loss: float = 0.01
    z_loss: float = 0.001


@dataclass(config=_strict)
class LLMConfig:
    """A decoder LLM that `transformers` builds.  With `path`, weights and shape come from a local directory."""

    type: str = "llama"  # registry name: llama | qwen2 | qwen3 | qwen3-moe | mixtral
    path: Optional[str] = None
    hidden_size: int = 2048
    layers: int = 24
    heads: int = 16
    kv_heads: Optional[int] = None
    intermediate_size: int = 5632
    vocab_size: int = 32000  # replaced by the tokenizer's size at build time
    max_positions: int = 4096
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    # sdpa-per-sample (ours: packed rows attend within each sample) or any transformers attn_implementation
    # (sdpa, eager, flash_attention_2, flex_attention)
    attention: str = "sdpa-per-sample"
    moe: Optional[MoEConfig] = None


@dataclass(config=_strict)
class ModelConfig:
    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    connector: ConnectorConfig = dataclasses.field(default_factory=ConnectorConfig)
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig)

    def __post_init__(self):
        # Validated here (not in ConnectorConfig) because the token grid depends on the encoder.
        from mm1.model.connector import CONNECTORS

        CONNECTORS.get(self.connector.type)  # raises with the registered names
        if self.connector.type != "mlp" and math.isqrt(self.connector.tokens) ** 2 != self.connector.tokens:
            raise ValueError(f"connector.tokens={self.connector.tokens} must be a square (e.g. 64, 144)")


@dataclass(config=_strict)
class SplitConfig:
    """MM1.5 dynamic image splitting ("AnyRes", spec section 4).  Disabled: one view per image (MM1 static mode).

    Defaults are the MM1.5 training recipe: 4..9 tiles, overview after the tiles, "(k,i,j)" index indicators.
    """

    enabled: bool = False
    min_tiles: int = 4
    max_tiles: int = 9  # MM1.5 raises this (e.g. 16) at inference; keep min_tiles as in training
    overview: Literal["after", "before"] = "after"
    indicators: Literal["index", "seps", "none"] = "index"
    max_images: int = 2  # split only samples with at most this many images (MM1.5: fewer than 3)

    def __post_init__(self):
        if not 1 <= self.min_tiles <= self.max_tiles:
            raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {self.min_tiles}..{self.max_tiles}")


@dataclass(config=_strict)
class ImageConfig:
    """How the processor turns an image into encoder views."""

    size: Optional[int] = None  # view resolution; default: the encoder's native image_size
    max_pixels: int = 89_478_485  # Pillow's own decompression-bomb limit
    resample: Literal["bicubic", "bilinear", "lanczos"] = "bicubic"
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)


@dataclass(config=_strict)
class TokenizerConfig:
    """`path`: a local tokenizer directory; without it a small BPE is trained on the text of the run's sources
    (`train.trainer.corpus_texts`)."""

    path: Optional[str] = None
    vocab_size: int = 2048
    chat_template: str = "chatml"  # file name in mm1/templates, or a path to a .jinja file


@dataclass(config=_strict)
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0


@dataclass(config=_strict)
class SourceConfig:
    """One data source of a stage's mixture: `{name: captions, format: webdataset, path: data/captions, weight: 45}`."""

    name: str
    format: str  # registry name (data/readers.py): webdataset | interleaved | text | llava | world-questions | ...
    path: str
    weight: float = 1.0  # relative share of the samples drawn (MM1: captions 45, interleaved 45, text 10)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # reader options, e.g. {category: math}

    def __post_init__(self):
        if self.weight <= 0:
            raise ValueError(f"source {self.name}: weight must be positive, got {self.weight}")


@dataclass(config=_strict)
class EvalConfig:
    """Benchmarks for `mm1 eval` and in-training evaluation: `mm1.eval.evaluate(model, **to_dict(cfg.eval))`."""

    tasks: list[str] = dataclasses.field(default_factory=list)  # built-in task names or task YAML paths
    shots: list[int] = dataclasses.field(default_factory=lambda: [0])
    mode: Literal["auto", "base", "chat"] = "auto"  # auto: few-shot -> base, 0-shot -> chat (mm1.eval.fewshot)
    limit: Optional[int] = None  # the first N samples of each task
    batch_size: int = 8
    seed: int = 0  # few-shot support sampling
    data_root: Optional[str] = None  # relative task data paths resolve here

    def __post_init__(self):
        if any(k < 0 for k in self.shots) or (self.limit is not None and self.limit < 1) or self.batch_size < 1:
            raise ValueError(f"need shots >= 0, limit >= 1, batch_size >= 1; got shots={self.shots}, "
                             f"limit={self.limit}, batch_size={self.batch_size}")


@dataclass(config=_strict)
class ContrastiveConfig:
    """The text side of a CLIP-style stage (`objective: contrastive`): a small transformer over the caption's
    tokens, trained with the image encoder and then discarded, as CLIP's text tower is when MM1 uses its encoder."""

    width: int = 128  # text tower width and the shared embedding size
    layers: int = 2
    heads: int = 4
    temperature: float = 0.07  # initial softmax temperature, learnt (CLIP)
    # NegCLIP-style hard negatives: each group lists interchangeable words (e.g. shape names); every caption holding
    # one also meets itself with each such word replaced by another of its group, so that the encoder has to tell
    # them apart instead of telling images apart by whatever else differs in the batch.  Each word must be a single
    # token after a space.
    swap_words: list[list[str]] = dataclasses.field(default_factory=list)
    # Share of the images shown in greyscale, so that colour alone cannot pick an image's caption out of the batch
    # (SimCLR: without colour distortion a contrastive encoder matches by colour histograms and learns little else).
    greyscale: float = 0.0


@dataclass(config=_strict)
class StageConfig:
    """One training stage.  MM1 pre-training trains every module; `trainable` makes freezing a choice."""

    name: str = "pretrain"
    data: list[SourceConfig] = dataclasses.field(default_factory=list)
    steps: int = 100
    batch_size: int = 8  # sequences per step (packed sequences of seq_len tokens when packing)
    seq_len: int = 2048
    packing: bool = True  # several samples per sequence, attention kept within each sample
    max_images_per_sequence: int = 16  # MM1 pre-training
    lr: float = 1e-4
    lr_multipliers: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. {encoder: 0.1}
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # MM1: cosine decay to 10% of the peak
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    trainable: list[Literal["encoder", "connector", "llm"]] = dataclasses.field(
        default_factory=lambda: ["encoder", "connector", "llm"]
    )
    optimizer: Literal["adamw", "adafactor"] = "adamw"  # MM1.5 used AdaFactor (torch.optim.Adafactor here)
    grad_accum: int = 1  # micro-batches per optimizer step
    epochs: Optional[float] = None  # if set, the stage ends after this many passes over its records, not `steps`
    bf16: bool = False  # autocast to bfloat16 (CPU and GPU)
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile the LLM
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss or gradient stops the run, or skips the step
    image: Optional[ImageConfig] = None  # the stage's image settings (e.g. high-res splitting); default: top level
    # Connector changes from this stage on, e.g. `{position_embedding: true}`: the weights carry over by name and
    # what the change adds is drawn new (`MM1Model.from_pretrained`).  Encoder and LLM stay as the run builds them.
    connector: dict[str, Any] = dataclasses.field(default_factory=dict)
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 1
    eval: Optional[EvalConfig] = None  # evaluation during and after the stage (e.g. few-shot after pre-training)
    eval_every: int = 0  # steps between evaluations; 0: only at the end of the stage
    # lm: next-token loss on the multimodal sequence (every MM1 stage).  contrastive: CLIP-style image-caption
    # matching that trains the encoder alone, for models whose encoder starts from scratch (`mm1.train.contrastive`).
    objective: Literal["lm", "contrastive"] = "lm"
    contrastive: ContrastiveConfig = dataclasses.field(default_factory=ContrastiveConfig)

    def __post_init__(self):
        unknown = set(self.lr_multipliers) - {"encoder", "connector", "llm"}
        if unknown:
            raise ValueError(f"lr_multipliers has unknown modules {sorted(unknown)}; use encoder, connector, llm")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} exceeds steps={self.steps}")
        if not self.trainable:
            raise ValueError(f"stage {self.name} trains nothing: trainable is empty")
        if self.objective == "contrastive" and (self.packing or self.trainable != ["encoder"]):
            raise ValueError(f"stage {self.name}: a contrastive stage trains the encoder on one caption per image: "
                             f"set packing: false and trainable: [encoder] (got packing={self.packing}, "
                             f"trainable={self.trainable})")


@dataclass(config=_strict)
class DistributedConfig:
    """How `mm1 train` uses several processes (launched by torchrun); ignored in a single process."""

    strategy: Literal["ddp", "fsdp2"] = "fsdp2"
    backend: Optional[str] = None  # default: nccl on GPU, gloo on CPU


@dataclass(config=_strict)
class MM1Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    image: ImageConfig = dataclasses.field(default_factory=ImageConfig)
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    stages: list[StageConfig] = dataclasses.field(default_factory=lambda: [StageConfig()])
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    tensorboard: bool = False
    seed: int = 0
    run_dir: str = "runs/default"
    # The synthetic world a recipe's data paths point into: `mm1 demo` and `mm1 ablate` write it there when it is
    # missing.  None: <run_dir>/world.
    world: Optional[str] = None

    def world_dir(self) -> Path:
        return Path(self.world) if self.world else Path(self.run_dir) / "world"

    def __post_init__(self):
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for index in range(len(self.stages)):
            self.stage_model(index)

    def stage_model(self, index: int) -> ModelConfig:
        """The model stage `index` trains: `model` with the connector changes of that stage and the ones before."""
        connector = to_dict(self.model.connector)
        for stage in self.stages[: index + 1]:
            connector.update(stage.connector)
        if connector == to_dict(self.model.connector):
            return self.model
        try:
            return TypeAdapter(ModelConfig).validate_python({**to_dict(self.model), "connector": connector})
        except ValidationError as err:
            raise ValueError(_format_errors(err, f"stages.{self.stages[index].name}.connector")) from None


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "unexpected_keyword_argument" else e["msg"]
        got = f" (got {e['input']!r})" if e["type"] not in ("unexpected_keyword_argument", "value_error") else ""
        lines.append(f"  {key}: {msg}{got}")
    return f"invalid config in {source}:\n" + "\n".join(lines)


def _list_index(items: list, part: str, dotted: str) -> int:
    """A list item by position (`stages.0`) or, for lists of named items, by name (`stages.pretrain`)."""
    if part.lstrip("-").isdigit():
        return int(part)
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if part not in names:
        raise ConfigError(f"override {dotted!r}: no item named {part!r}; names: {[n for n in names if n]}")
    return names.index(part)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c`; list items are addressed by index or by `name`, and a named item set to null is removed
    (`stages.cpt=null` drops that stage, `stages.pretrain.data.text=null` that source)."""
    *parents, leaf = dotted.split(".")
    node = tree
    for i, part in enumerate(parents):
        if isinstance(node, list):
            node = node[_list_index(node, part, dotted)]
            continue
        child = node.setdefault(part, {})
        if not isinstance(child, (dict, list)):
            raise ConfigError(f"override {dotted!r}: {'.'.join(parents[:i + 1])} is a value, not a section")
        node = child
    if not isinstance(node, list):
        node[leaf] = value
    elif value is None and not leaf.lstrip("-").isdigit():
        del node[_list_index(node, leaf, dotted)]
    else:
        node[_list_index(node, leaf, dotted)] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """`key.sub=value` strings; values are parsed as YAML so `64`, `true`, `[a, b]` get their types."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        parsed.append((key.strip(), yaml.safe_load(raw)))
    return parsed


def config_from_dict(tree: dict, source: str = "<dict>", overrides: list[str] = ()) -> MM1Config:
    tree = dict(tree or {})
    for key, value in parse_overrides(list(overrides)):
        _set_dotted(tree, key, value)
    try:
        return TypeAdapter(MM1Config).validate_python(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def _named(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and "name" in v for v in value)


def merge_trees(base: Any, over: Any) -> Any:
    """`over` on top of `base`: mappings merge key by key; lists of named mappings (stages, data sources) merge by
    `name`, so a variant can change one stage's lr or add a stage: a new name goes right after the one listed before
    it in `over` (at the end when it is listed first); other values replace."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: merge_trees(base[k], v) if k in base else v for k, v in over.items()}}
    if _named(base) and _named(over):
        merged = list(base)
        for previous, item in zip([None] + over[:-1], over):
            names = [m["name"] for m in merged]
            if item["name"] in names:
                at = names.index(item["name"])
                merged[at] = merge_trees(merged[at], item)
            else:
                merged.insert(names.index(previous["name"]) + 1 if previous is not None else len(merged), item)
        return merged
    return over


def _read_recipe(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A recipe's tree with its `base:` recipe (a path relative to this file) merged underneath, recursively."""
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist" + (f" (base of {chain[-1]})" if chain else ""))
    if path.resolve() in [p.resolve() for p in chain]:
        raise ConfigError(f"recipe bases form a cycle: {' -> '.join(map(str, chain + (path,)))}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(tree).__name__}")
    base = tree.pop("base", None)
    return merge_trees(_read_recipe(path.parent / base, chain + (path,)), tree) if base else tree


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> MM1Config:
    """Load a YAML recipe (or the defaults when `path` is None) and apply overrides.

    A recipe may start from another one: `base: ../tiny.yaml` (see `merge_trees` for how the two combine)."""
    tree: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        tree = _read_recipe(path)
    return config_from_dict(tree, source, overrides)


def to_dict(cfg: Any) -> dict:
    return TypeAdapter(type(cfg)).dump_python(cfg, mode="json")


def save_config(cfg: MM1Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
