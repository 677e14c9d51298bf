"""Tiny random-weight models that build and run on a CPU in well under a second."""

from __future__ import annotations

import copy
import io
import tarfile

import pytest
import torch
from PIL import Image

from mm1.config import config_from_dict
from mm1.data.tokenizer import build_tokenizer
from mm1.model.mllm import MM1Model

TINY = {
    "model": {
        "encoder": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "layers": 2, "heads": 2,
                    "intermediate_size": 64},
        "connector": {"type": "c-abstractor", "tokens": 4, "depth": 1},
        "llm": {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 1024},
    },
    "tokenizer": {"vocab_size": 300},
}
MOE = {"type": "qwen3-moe", "moe": {"experts": 4, "every": 2, "expert_intermediate_size": 32}}
CONNECTORS = ["c-abstractor", "avg-pool", "attn-pool", "mlp"]
CORPUS = ["a red circle on the left.", "a blue square.", "What colour is the shape?", "3 plus 4 is 7."] * 20


def tiny_config(connector: str = "c-abstractor", moe: bool = False, **sections):
    tree = copy.deepcopy(TINY)
    tree["model"]["connector"]["type"] = connector
    if moe:
        tree["model"]["llm"].update(copy.deepcopy(MOE))
    for key, value in sections.items():
        tree[key] = value
    return config_from_dict(tree)


def tiny_model(connector: str = "c-abstractor", moe: bool = False, seed: int = 0, **sections) -> MM1Model:
    cfg = tiny_config(connector, moe, **sections)
    torch.manual_seed(seed)
    return MM1Model(cfg, build_tokenizer(cfg.tokenizer, CORPUS))


def image(width: int = 40, height: int = 24, colour=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def user(text: str, images: int = 1) -> dict:
    return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="session")
def model() -> MM1Model:
    return tiny_model().eval()


def png(colour=(200, 0, 0), size=(20, 12)) -> bytes:
    buf = io.BytesIO()
    image(*size, colour=colour).save(buf, "PNG")
    return buf.getvalue()


def write_shard(path, items):
    with tarfile.open(path, "w") as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
