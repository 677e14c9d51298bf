"""lmms-eval adapter: lmms-eval's benchmarks on an mm1 model, a saved directory or the live model in a training loop.

    pip install 'mm1[lmms-eval]'
    python -m lmms_eval --model mm1 --model_args pretrained=runs/tiny/model --tasks mme --batch_size 8

lmms-eval finds the model through the `lmms_eval.models` entry point (`manifest`, declared in pyproject.toml); in
a training loop, pass `lmms_class()(model=model)` to `lmms_eval.evaluator.simple_evaluate(model=...)`.  lmms-eval is
imported only there, so mm1 never needs it: its ~90 dependencies (torchvision, opencv, datasets, wandb, ...) resolve
with mm1's torch pin, but are not part of mm1's own environment.

Written against lmms-eval 0.7.3's "simple" model interface (`lmms_eval.api.model.lmms`): each request is an
`Instance` whose `args` are
    generate_until: (context, gen_kwargs, doc_to_visual, doc_id, task, split)
    loglikelihood:  (context, continuation or doc_to_target, doc_to_visual, doc_id, task, split)
and `doc_to_visual(self.task_dict[task][split][doc_id])` gives PIL images, or video paths (sampled into frames).
The context is the user turn of the model's chat template, after one <image> per visual unless it places its own.

Limitations: `generate_until_multi_round` is not supported; of gen_kwargs only until, max_new_tokens, temperature
and top_p are used (no beam search); one process (rank 0 of 1); loglikelihood scores one request at a time.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Sequence

import torch

from mm1.data.image import sample_frames
from mm1.data.tokenizer import IMAGE_TOKEN
from mm1.eval.harness import inference
from mm1.model.mllm import MM1Model


def cut_at(text: str, until: Sequence[str]) -> str:
    """The text before the first stop string."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


class MM1Requests:
    """Answers lmms-eval requests with an MM1Model; independent of lmms-eval, which `lmms_class` mixes in."""

    def __init__(self, model: MM1Model | None = None, pretrained: str | None = None, batch_size: int | str = 8,
                 device: str | None = None, max_new_tokens: int | str = 128, video_frames: int | str = 8):
        if model is None:
            from mm1 import load

            if pretrained is None:
                raise ValueError("give model= (a live MM1Model) or pretrained= (a saved model directory)")
            model = load(pretrained).to(device or "cpu")
        self.model = model
        self.batch_size = int(batch_size)  # lmms-eval passes model_args as strings
        self.max_new_tokens = int(max_new_tokens)
        self.video_frames = int(video_frames)
        self.task_dict: dict = {}  # filled by lmms-eval: task -> split -> docs

    def _inputs(self, context: str, doc_to_visual, doc_id, task, split):
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        images = [frame for v in visuals or []
                  for frame in (sample_frames(v, self.video_frames) if isinstance(v, str) else [v])]
        text = context if IMAGE_TOKEN in context else IMAGE_TOKEN * len(images) + context
        return self.model.processor.encode_chat([{"role": "user", "content": text}], images,
                                                add_generation_prompt=True)

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        with inference(self.model):
            return self._generate_until(requests)

    def _generate_until(self, requests: Sequence[Any]) -> list[str]:
        processor, device = self.model.processor, next(self.model.parameters()).device
        groups: dict[str, list[int]] = {}  # one generate call needs one setting: group requests by gen_kwargs
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        out = [""] * len(requests)
        for indices in groups.values():
            kwargs = requests[indices[0]].args[1]
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else until
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                encoded = [self._inputs(requests[i].args[0], *requests[i].args[2:6]) for i in chunk]
                batch = processor.collate(encoded, padding_side="left")
                pixels = batch.get("pixel_values")
                tokens = self.model.generate(
                    batch["input_ids"].to(device), batch["attention_mask"].to(device),
                    None if pixels is None else pixels.to(device),
                    max_new_tokens=int(kwargs.get("max_new_tokens", self.max_new_tokens)),
                    temperature=float(kwargs.get("temperature") or 0.0), top_p=float(kwargs.get("top_p") or 1.0))
                for i, ids in zip(chunk, tokens.tolist()):
                    out[i] = cut_at(processor.decode(ids), until)
        return out

    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether greedy decoding gives exactly the continuation) per request."""
        with inference(self.model):
            return [self._loglikelihood(request) for request in requests]

    def _loglikelihood(self, request: Any) -> tuple[float, bool]:
        tokenizer, device = self.model.processor.tokenizer, next(self.model.parameters()).device
        context, target, doc_to_visual, doc_id, task, split = request.args
        continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
        prompt = self._inputs(context, doc_to_visual, doc_id, task, split)
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt.input_ids + cont], device=device)
        pixels = None if prompt.pixel_values is None else prompt.pixel_values.to(device)
        logits = self.model(ids, pixels).logits[0, len(prompt.input_ids) - 1:-1].float()
        targets = torch.tensor(cont, dtype=torch.long, device=device)
        logprob = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).sum()
        return float(logprob), bool((logits.argmax(-1) == targets).all())

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError("mm1's lmms-eval adapter does not support multi-round generation")


@functools.cache
def lmms_class() -> type:
    """The lmms-eval model class (`lmms` subclass); importing lmms-eval happens here and only here."""
    from lmms_eval.api.model import lmms

    class MM1(MM1Requests, lmms):
        is_simple = True

        def __init__(self, **kwargs):
            lmms.__init__(self)
            MM1Requests.__init__(self, **kwargs)

    return MM1


def __getattr__(name: str):
    # lmms-eval imports the class path "mm1.eval.lmms_adapter.MM1"; build it on that first access.
    if name == "MM1":
        return lmms_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def manifest():
    """Entry point `lmms_eval.models`: registers the model name `mm1`."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="mm1", simple_class_path=f"{__name__}.MM1")
