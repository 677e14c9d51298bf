"""Tasks are data: a YAML file names the reader, the files, the metric, the prompts and the answer clean-up.

Built-in tasks live in `mm1/eval/tasks/*.yaml` and are named by file stem (`vqav2`); any other YAML file is given
by path.  Relative data paths resolve against the data root (`--data-root`; default: the folder of a task file
given by path, the current directory for a built-in task).

Prompt templates are Python format strings with the fields {images} (one <image> marker per image or video frame),
{numbered_images} ("Image 1: <image>\nImage 2: <image>\n", how multi-image data names its images), {question},
{options} ("A. ...\nB. ...") and, in `fewshot_format`, {answer}.
"""

from __future__ import annotations

import dataclasses
import string
from importlib import resources
from pathlib import Path
from typing import Callable, Literal, Optional

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from mm1.config import ConfigError, _format_errors
from mm1.data.annotations import READERS, Annotations, Sample, read_annotations
from mm1.eval.metrics import METRICS
from mm1.registry import Registry

_strict = ConfigDict(extra="forbid", validate_assignment=True)
TEMPLATE_FIELDS = {"images", "numbered_images", "question", "options", "answer"}

# Answer clean-up applied to the decoded text, in the order a task lists them.
FILTERS: Registry[Callable[[str], str]] = Registry("answer filter")
FILTERS.register("first-line")(lambda text: text.split("\n", 1)[0].strip())
# "Answer: yes" / "The answer is yes." -> "yes." (chat models often restate the question's frame).
FILTERS.register("answer-prefix")(
    lambda text: text.strip().removeprefix("The answer is").removeprefix("Answer:").strip()
)


@dataclass(config=_strict)
class DataConfig:
    """Where a task's samples come from; `format` is a reader name (see `mm1.data.annotations`)."""

    format: str  # coco-captions | vqav2 | refcoco | jsonl
    annotations: str
    images: Optional[str] = None  # folder image paths are relative to; default: the annotation file's folder
    questions: Optional[str] = None  # vqav2: the questions file
    image_pattern: str = "{image_id}.jpg"  # vqav2: image file name from the image id
    split: Optional[str] = None  # refcoco: keep only this split
    direction: Literal["ground", "refer"] = "ground"  # refcoco: expression -> box, or box -> expression

    def __post_init__(self):
        READERS.get(self.format)  # raises with the registered names

    def read(self, root: Path) -> Annotations:
        def resolve(path: str | None) -> str | None:
            return None if path is None else str(root / Path(path).expanduser())  # an absolute path stays as it is

        return read_annotations(self.format, resolve(self.annotations), resolve(self.images),
                                questions=resolve(self.questions), image_pattern=self.image_pattern,
                                split=self.split, direction=self.direction)


@dataclass(config=_strict)
class TaskConfig:
    name: str
    data: DataConfig
    metric: str  # METRICS name: cider | vqa-accuracy | anls | grounding-accuracy | exact-match | mc-accuracy
    fewshot_format: str  # base models: one example with its {answer}; the query is the same with an empty answer
    instruction: str  # chat (fine-tuned) models: the user turn
    # chat models, a sample with options: its user turn, which lists them (as multiple-choice benchmarks do);
    # default: `instruction` for every sample
    choice_instruction: Optional[str] = None
    zero_shot_prompt: Optional[str] = None  # base models with 0 shots; default: fewshot_format with an empty answer
    separator: str = "\n"  # between few-shot examples in the base-model document
    support: Optional[DataConfig] = None  # few-shot pool (e.g. the train split); default: the evaluated samples
    max_new_tokens: int = 16
    postprocess: list[str] = dataclasses.field(default_factory=list)  # FILTERS names, in order
    frames: int = 8  # video samples: frames sampled per clip

    def __post_init__(self):
        METRICS.get(self.metric)
        for name in self.postprocess:
            FILTERS.get(name)
        for key in ("fewshot_format", "instruction", "choice_instruction", "zero_shot_prompt"):
            template = getattr(self, key)
            fields = {f for _, f, _, _ in string.Formatter().parse(template or "") if f is not None}
            if fields - TEMPLATE_FIELDS:
                raise ValueError(f"{key} uses {sorted(fields - TEMPLATE_FIELDS)}; the fields are "
                                 f"{sorted(TEMPLATE_FIELDS)}")
        if "{answer}" not in self.fewshot_format:
            raise ValueError("fewshot_format must contain {answer}")

    def user_turn(self, sample: Sample) -> str:
        """The chat template for this sample's user turn."""
        return self.choice_instruction if sample.options and self.choice_instruction else self.instruction

    def clean(self, text: str) -> str:
        for name in self.postprocess:
            text = FILTERS.get(name)(text)
        return text


@dataclasses.dataclass
class Task:
    config: TaskConfig
    root: Path  # data root the config's relative paths resolve against

    @property
    def name(self) -> str:
        return self.config.name


def builtin_tasks() -> list[str]:
    folder = resources.files("mm1.eval").joinpath("tasks")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_task(spec: str | Path | TaskConfig, data_root: str | Path | None = None) -> Task:
    """A built-in task name, a YAML path, or a TaskConfig (its paths relative to `data_root` or the cwd)."""
    if isinstance(spec, TaskConfig):
        return Task(spec, Path(data_root or "."))
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"task file {path} does not exist")
        text, source, root = path.read_text(), str(path), path.parent
    else:
        if str(spec) not in builtin_tasks():
            raise ConfigError(f"unknown task {spec!r}; built-in: {', '.join(builtin_tasks())} (or give a .yaml path)")
        text = resources.files("mm1.eval").joinpath("tasks", f"{spec}.yaml").read_text()
        source, root = f"built-in task {spec}", Path(".")
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source} is not valid YAML: {err}") from None
    try:
        config = TypeAdapter(TaskConfig).validate_python(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None
    return Task(config, Path(data_root) if data_root else root)
