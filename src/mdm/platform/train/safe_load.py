"""Loading training state from storage without unpickling code: `torch.load(..., weights_only=True)` everywhere.

    state = load_plain(path)                   # tensors, numbers, strings, lists, tuples, dicts; else CheckpointError
    install_safe_deepspeed_loader(engine)      # DeepSpeed's own loads go through weights_only too

Anyone who can write to `ray.storage_path` (a shared bucket, NFS, a shared /tmp) could otherwise plant a
pickle whose `__reduce__` runs on the next resume: run names are deterministic, so the path is guessable.
`torch.load(weights_only=True)` only rebuilds tensors and plain containers, and refuses any other Python
global; the refusal is re-raised as `CheckpointError` naming the file and the global it asked for.

DeepSpeed's default checkpoint engine loads with `weights_only=False` (deepspeed/runtime/checkpoint_engine/
torch_checkpoint_engine.py). Its ZeRO optimizer files hold three DeepSpeed classes besides tensors
(`LossScaler`, `ZeroStageEnum`, `fragment_address`, measured on ZeRO 1-3 in fp32 and bf16; `DynamicLossScaler`
under fp16): plain data classes whose unpickling sets attributes only. `install_safe_deepspeed_loader`
replaces the engine's `load` with a weights_only load that allow-lists exactly those. DeepSpeed's other
checkpoint writers (`checkpoint.writer` / datastates in a `deepspeed.config_path` JSON) are left alone: they
use torch's default, which is weights_only on torch >= 2.6. What a checkpoint may still do once loaded
(weights, optimizer state) is the storage owner's to answer: keep `ray.storage_path` writable only by you.
"""

from __future__ import annotations

import pickle
import re
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from deepspeed.runtime.engine import DeepSpeedEngine
    from torch.serialization import MAP_LOCATION


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be loaded safely; the message names the file and the reason."""


# (module, class) pairs DeepSpeed writes into its optimizer states; imported lazily, only when present.
DEEPSPEED_SAFE_GLOBALS = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


def _refusal(path: str, err: Exception) -> CheckpointError:
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    what = (f"it asks for the Python object {found.group(1)}" if found else
            f"torch's weights_only reader: {detail.group(1).strip()}" if detail else text.splitlines()[0])
    return CheckpointError(
        f"refusing to load checkpoint file {path}: it is not plain data ({what}); mdm never unpickles code from "
        f"storage. Either it was written by something other than this version of mdm, or someone with write access "
        f"to the storage location planted it: check who can write there, then delete the file or the run's "
        f"checkpoints to start the run afresh")


def load_plain(path: str, map_location: MAP_LOCATION = "cpu", allow: tuple = (), display: str | None = None) -> Any:
    """`torch.load(path, weights_only=True)` with `allow` (classes) allow-listed; CheckpointError on refusal.

    `display`: the name to put in messages (e.g. the file's address in storage rather than a local copy)."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(display or path, e) from None


def _deepspeed_allow() -> tuple:
    import importlib

    out = []
    for module, name in DEEPSPEED_SAFE_GLOBALS:
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # a DeepSpeed version without it never writes it either
            continue
    return tuple(out)


def install_safe_deepspeed_loader(engine: DeepSpeedEngine) -> bool:
    """Make `engine.load_checkpoint` read through `load_plain`; False when the engine uses another writer."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    ckpt_engine = getattr(engine, "checkpoint_engine", None)
    if type(ckpt_engine) is not TorchCheckpointEngine:
        return False
    allow = _deepspeed_allow()

    def load(path: str, map_location: MAP_LOCATION = None) -> Any:
        return load_plain(path, map_location=map_location, allow=allow)

    ckpt_engine.load = load  # an instance attribute: only this engine, DeepSpeed's class is unchanged
    return True
