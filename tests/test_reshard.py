"""Scale-out: a run launched by scripts/torchrun-multinode.sh (c10d rendezvous, 2 processes, FSDP2, gloo) is lost
after its step-3 checkpoint, then resumes in 1 process: DCP reshards model and optimizer exactly, the data streams
restart (with a warning) and training finishes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict import get_state_dict

from conftest import TINY, png, write_shard
from mm1.config import config_from_dict
from mm1.train import checkpoint
from mm1.train.trainer import Trainer

SCRIPT = Path(__file__).parent.parent / "scripts" / "torchrun-multinode.sh"
LOST_AFTER = 3  # the node loss happens right after this step's checkpoint

# Loaded by every Python process through PYTHONPATH; in torchrun's workers it turns the first optimizer step after
# LOST_AFTER into a SIGKILL, as if the node had gone away.
SITECUSTOMIZE = textwrap.dedent("""
    import os, signal
    if "LOCAL_RANK" in os.environ:
        import mm1.train.trainer as trainer
        real, calls = trainer.optimizer_step, [0]
        def optimizer_step(*args, **kwargs):
            calls[0] += 1
            if calls[0] > int(os.environ["MM1_LOST_AFTER"]):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        trainer.optimizer_step = optimizer_step
""")


@pytest.fixture
def recipe(tmp_path) -> dict:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 30)]
    (tmp_path / "caps").mkdir()
    items = []
    for i in range(24):
        items += [(f"{i:05d}.png", png(colours[i % 4], (16 + i, 12))), (f"{i:05d}.txt", f"a box, number {i}.".encode())]
    write_shard(tmp_path / "caps" / "train-000000.tar", items)
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": f"{a} plus {a} is {2 * a}."}) + "\n"
                                                 for a in range(9)))
    stage = {"name": "pretrain", "steps": 6, "batch_size": 2, "seq_len": 64, "lr": 3e-3, "warmup_steps": 2,
             "checkpoint_every": LOST_AFTER, "data": [
                 {"name": "captions", "format": "webdataset", "path": str(tmp_path / "caps"), "weight": 3},
                 {"name": "text", "format": "text", "path": str(tmp_path / "text.jsonl"), "weight": 1}]}
    return json.loads(json.dumps(TINY)) | {"stages": [stage], "run_dir": str(tmp_path / "run"), "seed": 5,
                                           "distributed": {"strategy": "fsdp2"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_checkpoint_resumes_in_one_process(recipe, tmp_path, monkeypatch):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(os.environ, NNODES="1", NPROC_PER_NODE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               RDZV_ID="reshard-test", PYTHON=sys.executable, OMP_NUM_THREADS="1", MM1_LOST_AFTER=str(LOST_AFTER),
               PYTHONPATH=os.pathsep.join([str(tmp_path / "hook"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "recipe.yaml")], env=env, capture_output=True,
                          text=True, timeout=300)
    stage_dir = tmp_path / "run" / "pretrain"
    saved = checkpoint.checkpoints(stage_dir / "checkpoints")
    assert proc.returncode != 0 and [p.name for p in saved] == ["step-00000003"], proc.stderr[-3000:]
    assert json.loads((saved[0] / "meta.json").read_text())["world_size"] == 2
    assert not (stage_dir / "model").exists()

    # The checkpoint as plain full tensors, read independently of the trainer.
    dcp_to_torch_save(saved[0], tmp_path / "step3.pt")
    reference = torch.load(tmp_path / "step3.pt", weights_only=False)

    restored = {}
    real_load = checkpoint.load

    def load_and_capture(path, module, optimizer, world):
        extra, exact = real_load(path, module, optimizer, world)
        model_state, optim_state = get_state_dict(module, optimizer)
        restored.update(model={k: v.clone() for k, v in model_state.items()}, exact=exact, world=world.size,
                        optim={k: {n: t.clone() for n, t in v.items()} for k, v in optim_state["state"].items()})
        return extra, exact

    monkeypatch.setattr(checkpoint, "load", load_and_capture)
    log = []
    Trainer(config_from_dict(recipe), progress=False, log=log.append).run()

    assert restored["world"] == 1 and restored["exact"] is False  # resharded 2 -> 1; data position not carried over
    assert restored["model"].keys() == reference["model"].keys()
    for key, value in restored["model"].items():
        assert torch.equal(value, reference["model"][key]), key
    assert restored["optim"].keys() == reference["optim"]["state"].keys()
    for key, state in restored["optim"].items():
        assert float(state["step"]) == LOST_AFTER
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[name], reference["optim"]["state"][key][name]), (key, name)

    assert any("number of processes changed; data streams restart" in line for line in log)
    assert any(f"resumed pretrain from {saved[0]} at step {LOST_AFTER}" in line for line in log)
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # 1-3 from the 2-process run, 4-6 after the resume
    assert (stage_dir / "model" / "model.safetensors").is_file()
