"""Training checkpoints (every rank, through its updater) reported to Ray Train, and the final HF export.

    state = TrainState(step=120, microbatches=40, epoch=1)
    ckpt = save_checkpoint(updater, objective, state, rank=r)        # -> ray.train.Checkpoint (a temp dir)
    ray.train.report(metrics, checkpoint=ckpt)                       # Ray merges all ranks' files in storage
    state = restore_checkpoint(ray.train.get_checkpoint(), updater, objective, rank=r, generator=gen)
    export_hf(updater, tokenizer, "outputs/run/final", zero_stage=2, rank=r)   # save_pretrained (or s3://...)
    write_export(model, tokenizer, "outputs/trial/final", merge_lora=True)      # one process, a local directory

A checkpoint directory holds the updater's files (DeepSpeed's `ds/` shards, or `model.safetensors` with the
weights that train and `plain_updater.pt` with the optimizer and scheduler state), the
objective's state (`objective.pt`, the P-POTS fit), the data source's (`source.pt`, when it has one: `mdm rl`'s
sampled rollouts) and one `worker_<rank>.pt` per rank with its step counter,
data position and RNG states (torch, numpy, random, and the objective's generator), so the steps after a
resume replay an uninterrupted run. All of it is plain data (tensors, numbers, strings, lists, dicts: numpy's
and Python's RNG states are converted) and is read back with `safe_load.load_plain` (`weights_only=True`):
a file that asks for any other Python object is refused with `CheckpointError` naming it, never unpickled.
With adapters (LoRA: an engine's `model.lora`) the weights in a checkpoint are the adapters' only (adapters.py).

The export is `save_pretrained` of the trained model with its tokenizer: a full Hugging Face model, or for an
adapter model PEFT's adapter directory (`adapter_config.json`, `adapter_model.safetensors`; loaded on top of
the base with `peft.PeftModel.from_pretrained(base, dir)`), plus with `export.merge_lora: true` a full model
with the adapters merged into the base weights in `<export>/merged` (`adapters.merged_state_dict`).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from mdm.platform.adapter import is_adapter_model
from mdm.platform.train.adapters import merged_state_dict
from mdm.platform.train.safe_load import load_plain

if TYPE_CHECKING:
    from ray.train import Checkpoint
    from transformers import PreTrainedTokenizerBase

    from mdm.platform.train.trainer import Objective
    from mdm.platform.train.updater import DeepSpeedUpdater, PlainUpdater


@dataclass
class TrainState:
    """Where a worker is: optimizer steps done, the data epoch, micro-batches of its shard consumed in it."""

    step: int = 0
    microbatches: int = 0
    epoch: int = 0
    eval_loss: Optional[float] = None


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG's state as tensors and plain numbers (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(),
            "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "random": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss_next": gauss_next},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    r = state["random"]
    random.setstate((r["version"], tuple(int(v) for v in r["internal"].tolist()), r["gauss_next"]))
    generator.set_state(state["generator"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(updater: PlainUpdater | DeepSpeedUpdater, objective: Objective, state: TrainState, *, rank: int,
                    generator: torch.Generator, source: Any = None) -> Checkpoint:
    """Write this rank's part of a checkpoint to a fresh temp dir; returns it as a ray.train.Checkpoint.

    Collective: every rank must call it at the same step. The caller reports the checkpoint and then
    deletes the directory (`cleanup`)."""
    from ray.train import Checkpoint

    directory = tempfile.mkdtemp(prefix=f"mdm_ckpt_r{rank}_")
    updater.save(directory, rank)
    torch.save({"state": state.__dict__, "rng": _rng_state(generator)}, os.path.join(directory, f"worker_{rank}.pt"))
    if rank == 0 and hasattr(objective, "state_dict"):
        torch.save(objective.state_dict(), os.path.join(directory, "objective.pt"))
    if rank == 0 and hasattr(source, "state_dict"):  # plain data (mdm rl: the sampled rollouts)
        torch.save(source.state_dict(), os.path.join(directory, "source.pt"))
    return Checkpoint.from_directory(directory)


def cleanup(checkpoint: Checkpoint) -> None:
    shutil.rmtree(checkpoint.path, ignore_errors=True)


def restore_checkpoint(checkpoint: Checkpoint, updater: PlainUpdater | DeepSpeedUpdater, objective: Objective, *,
                       rank: int, generator: torch.Generator, source: Any = None) -> TrainState:
    """Load updater, objective, counters and RNG states from a reported checkpoint (every rank calls it).

    Raises CheckpointError naming the file when any of them is not plain data (see the module docstring)."""
    where = str(checkpoint.path).rstrip("/")  # the address in storage, for messages (as_directory may copy)
    with checkpoint.as_directory() as directory:
        def load(name: str) -> Any:
            return load_plain(os.path.join(directory, name), display=f"{where}/{name}")

        # Our own files first: a planted one is refused before DeepSpeed reads anything.
        own = f"worker_{rank}.pt"
        same_rank = os.path.exists(os.path.join(directory, own))
        # A group grown since the checkpoint: take rank 0's counters, keep this rank's fresh RNG (the data
        # position is then approximate: shards are re-cut for the new world size).
        saved = load(own if same_rank else "worker_0.pt")
        objective_state = load("objective.pt") if os.path.exists(os.path.join(directory, "objective.pt")) else None
        source_state = load("source.pt") if rank == 0 and os.path.exists(os.path.join(directory, "source.pt")) else None
        updater.load(directory, display=where)
        if objective_state is not None and hasattr(objective, "load_state_dict"):
            objective.load_state_dict(objective_state)
        if source_state is not None and hasattr(source, "load_state_dict"):
            source.load_state_dict(source_state)
    if same_rank:
        _set_rng_state(saved["rng"], generator)
    return TrainState(**saved["state"])


MERGED = "merged"  # the subdirectory of an adapter export that holds the merged full model (export.merge_lora)


def export_hf(updater: PlainUpdater | DeepSpeedUpdater, tokenizer: Optional[PreTrainedTokenizerBase], out_dir: str, *,
              zero_stage: int, rank: int, merge_lora: bool = False) -> str:
    """`save_pretrained` the model (+ tokenizer) into `out_dir` on rank 0 (`write_export`); collective under
    ZeRO-3.

    `out_dir` may be a storage URI (`s3://...`): rank 0 writes a local copy on its node, then uploads it.
    Returns the local directory holding the export (on rank 0; `out_dir` itself when it is local)."""
    from mdm.platform import storage

    module = updater.module
    local = out_dir
    if storage.is_uri(out_dir):
        local = os.path.join(tempfile.mkdtemp(prefix="mdm_export_"), "final")

    def save() -> None:
        write_export(module, tokenizer, local, merge_lora=merge_lora)
        if local != out_dir:
            storage.upload(local, out_dir)

    if zero_stage == 3 and getattr(updater, "engine", None) is not None:
        import deepspeed

        # ZeRO-3 partitions every parameter: gather them on all ranks, rank 0 writes.
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            if rank == 0:
                save()
    elif rank == 0:
        save()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return local


def write_export(module: torch.nn.Module, tokenizer: Optional[PreTrainedTokenizerBase], out_dir: str, *,
                 merge_lora: bool = False) -> None:
    """Write the export (see the module docstring) beside the local directory `out_dir`, then move it into
    place: a reader (or a crash) never sees half of it. ValueError when `merge_lora` is asked of a model
    without adapters."""
    adapters = is_adapter_model(module)
    if merge_lora and not adapters:
        raise ValueError("export.merge_lora: true, but the model has no adapters to merge (LoRA is off); "
                         "set export.merge_lora: false")
    out_dir = out_dir.rstrip("/")
    parent = os.path.dirname(out_dir) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}
        extra = {"save_embedding_layers": False} if adapters else {}  # PEFT: the adapters only
        module.save_pretrained(tmp, state_dict=state, safe_serialization=True, **extra)
        if merge_lora:
            merged = os.path.join(tmp, MERGED)
            module.get_base_model().save_pretrained(merged, state_dict=merged_state_dict(module),
                                                    safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(merged)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is meant to be read
        old = None
        if os.path.exists(out_dir):  # a directory cannot be os.replace'd over a non-empty one: swap it aside
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.replace(out_dir, os.path.join(old, "final"))
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
