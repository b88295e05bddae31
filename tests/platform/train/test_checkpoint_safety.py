"""Checkpoints are plain data, read back with `weights_only=True`: a planted pickle is refused, never run.

- A checkpoint written by `save_checkpoint` (plain-torch updater, the LLaDA+ objective with a P-POTS fit, every
  RNG) restores exactly: the next draws of torch, numpy, random and the objective's generator, the optimizer
  state and the fitted density equal those of the process that wrote it.
- Each file of it replaced by a pickle whose `__reduce__` would write a marker is refused with CheckpointError
  naming the file's address and the object it asked for; the marker never appears.
- DeepSpeed's own loader (which unpickles: weights_only=False) is replaced by ours: a genuine ZeRO-2
  checkpoint still loads, a planted optimizer-state file is refused (one DeepSpeed process on CPU/gloo, in a
  child process so this one keeps no process group).
The end-to-end refusal on a resumed `train_driver` run is in test_rerun_safety.py.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mdm.platform.config import load_config
from mdm.platform.train.checkpoint import TrainState, cleanup, restore_checkpoint, save_checkpoint
from mdm.platform.train.safe_load import CheckpointError
from mdm.platform.train.updater import PlainUpdater


class Payload:
    """What an attacker plants: unpickling it would run `exec` and write the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _parts(seed: int):
    from mdm.engines.llada_plus.objective import build_objective

    cfg = load_config([], ["train.lr=0.01", "train.PPOTS=true"])
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    updater = PlainUpdater(model, cfg.deepspeed, cfg.train, total_steps=20, world_size=1)
    objective = build_objective(cfg.train)
    return model, updater, objective, torch.Generator().manual_seed(seed)


def _train(model, updater, steps: int) -> None:
    for _ in range(steps):
        updater.backward(model(torch.randn(4, 6)).pow(2).mean())
        updater.step()


def _draws(gen: torch.Generator) -> list[float]:
    return [float(torch.rand(1)), float(np.random.rand()), random.random(), float(torch.rand(1, generator=gen))]


@pytest.fixture()
def written():
    """Checkpoints made by a test (save_checkpoint writes a temp dir; the trainer deletes it after reporting)."""
    made: list = []
    yield made
    for ckpt in made:
        cleanup(ckpt)


def _checkpoint(made: list):
    """A checkpoint after 3 steps with a fitted density, and what the writer draws right after saving it."""
    from mdm.engines.llada_plus.ppots.density import PiecewiseLinearDensity

    model, updater, objective, gen = _parts(0)
    _train(model, updater, 3)
    density = PiecewiseLinearDensity(np.linspace(0, 1, 5), np.array([0.5, 1.0, 1.5, 1.0, 1.0]))
    objective.load_state_dict({"rounds": 2, "density": density.state_dict(), "fitted": density.state_dict(),
                               "stats": None})
    np.random.seed(5)
    random.seed(6)
    ckpt = save_checkpoint(updater, objective, TrainState(step=3, microbatches=3), rank=0, generator=gen)
    made.append(ckpt)
    return ckpt, _draws(gen), updater.optimizer.state_dict(), objective.state_dict()


def test_checkpoint_restores_exactly(written):
    ckpt, expected, opt_state, obj_state = _checkpoint(written)
    random.seed(99)
    np.random.seed(99)
    model, updater, objective, gen = _parts(1)  # other weights, other RNG states
    state = restore_checkpoint(ckpt, updater, objective, rank=0, generator=gen)
    assert (state.step, state.microbatches, updater.global_step) == (3, 3, 3)
    assert _draws(gen) == expected
    got = updater.optimizer.state_dict()
    for k, v in opt_state["state"].items():
        assert torch.equal(got["state"][k]["exp_avg"], v["exp_avg"])
    assert objective.state_dict() == obj_state and objective.rounds == 2


@pytest.mark.parametrize("name", ["objective.pt", "worker_0.pt", "plain_updater.pt"])
def test_planted_pickle_is_refused_naming_the_file(tmp_path, written, name):
    ckpt, *_ = _checkpoint(written)
    marker = tmp_path / "marker"
    torch.save({"state": Payload(marker)}, os.path.join(ckpt.path, name))
    model, updater, objective, gen = _parts(1)
    with pytest.raises(CheckpointError) as e:
        restore_checkpoint(ckpt, updater, objective, rank=0, generator=gen)
    msg = str(e.value)
    assert msg.startswith(f"refusing to load checkpoint file {ckpt.path}/{name}: it is not plain data "
                          f"(it asks for the Python object exec)"), msg
    assert not marker.exists()


DEEPSPEED_CHILD = textwrap.dedent("""
    import os, sys, torch
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch.distributed as dist
    dist.init_process_group("gloo", rank=0, world_size=1)
    from mdm.platform.config import load_config
    from mdm.platform.train.updater import DeepSpeedUpdater
    from mdm.platform.train.safe_load import CheckpointError

    cfg = load_config([], ["deepspeed.enabled=true", "deepspeed.zero_stage=2", "train.lr=0.01"])
    def updater(seed):
        torch.manual_seed(seed)
        return DeepSpeedUpdater(torch.nn.Linear(4, 2), cfg.deepspeed, cfg.train, total_steps=10, world_size=1)
    a = updater(0)
    a.backward(a.module(torch.randn(3, 4)).sum()); a.step()
    a.save(sys.argv[1], 0)
    b = updater(1)
    b.load(sys.argv[1])  # genuine: loads through the allow-list (LossScaler, ZeroStageEnum, fragment_address)
    assert torch.equal(b.module.weight, a.module.weight) and b.global_step == 1
    class Payload:
        def __reduce__(self):
            return exec, (f"open({sys.argv[3]!r}, 'w').write('pwned')",)
    optim = [f for f in os.listdir(os.path.join(sys.argv[1], "ds")) if "optim_states" in f][0]
    torch.save({"x": Payload()}, os.path.join(sys.argv[1], "ds", optim))
    try:
        updater(2).load(sys.argv[1])
    except CheckpointError as e:
        print("REFUSED", e)
    """)


@pytest.mark.slow
def test_deepspeed_checkpoints_load_through_the_allow_list_only(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    marker = tmp_path / "marker"
    out = subprocess.run([sys.executable, "-c", DEEPSPEED_CHILD, str(tmp_path / "ckpt"), str(port), str(marker)],
                         capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    text = out.stdout.decode()
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    refused = [line for line in text.splitlines() if line.startswith("REFUSED")]
    assert refused and "zero_pp_rank_0_mp_rank_00_optim_states.pt: it is not plain data" in refused[0], text
    assert "Python object exec" in refused[0] and not marker.exists()



def test_export_replaces_whole_and_a_failed_export_keeps_the_old(tmp_path, arithmetic_data, monkeypatch):
    """The HF export is written beside <output_dir>/<run>/final and moved into place: a reader never sees a
    mix of two exports, and an export that fails half-way leaves the previous one as it was."""
    from transformers import AutoTokenizer

    from mdm.platform.registry import get_registry, load_builtins
    from mdm.platform.train.checkpoint import export_hf

    load_builtins()
    tok = AutoTokenizer.from_pretrained(arithmetic_data["tokenizer"])
    cfg = load_config([], ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.mlp_hidden_size=64"])
    model = get_registry("engines").get("llada_plus").build_model(cfg.model, "tiny", tok)

    class Holder:
        module = model

    final = tmp_path / "out" / "run" / "final"
    final.mkdir(parents=True)
    (final / "stale.bin").write_text("from an older export")
    export_hf(Holder(), tok, str(final), zero_stage=0, rank=0)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in final.iterdir()}
    assert not (final / "stale.bin").exists() and os.listdir(final.parent) == ["final"]
    before = {p.name: p.read_bytes() for p in final.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tok, "save_pretrained", broken)  # the weights are written, then the tokenizer fails
    with pytest.raises(OSError, match="disk full"):
        export_hf(Holder(), tok, str(final), zero_stage=0, rank=0)
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before  # untouched
    assert os.listdir(final.parent) == ["final"]  # no half-written directory left beside it
