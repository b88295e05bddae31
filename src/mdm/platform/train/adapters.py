"""Models whose base is frozen (adapters: LoRA through PEFT, an engine's `model.lora`), as the training path sees
them: what trains, what a checkpoint holds, what an export writes.

    param_counts(model)                  # {"model/params_total": 28192.0, "model/params_trainable": 4352.0}
    state = trainable_state(model)       # {name: tensor}: what trains (and buffers); every weight when none is frozen
    load_trainable_state(model, state, where="ckpt/model.safetensors")     # CheckpointError on a mismatch
    merged_state_dict(model)             # the base model's state dict with the adapters merged in (CPU tensors)

The rule is the same with and without adapters: a checkpoint keeps the tensors that change in training (the
parameters that require grad, and buffers), and the rest comes back from where the model is built (the
checkpoint directory, or `train.seed` for a random tiny model), exactly as at the run's start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mdm.platform.train.safe_load import CheckpointError

if TYPE_CHECKING:
    import peft

PARAMS_TOTAL, PARAMS_TRAINABLE = "model/params_total", "model/params_trainable"


def param_counts(model: torch.nn.Module) -> dict[str, float]:
    """Parameters of `model` in all and those that train (call it before DeepSpeed partitions them)."""
    params = list(model.parameters())
    return {PARAMS_TOTAL: float(sum(p.numel() for p in params)),
            PARAMS_TRAINABLE: float(sum(p.numel() for p in params if p.requires_grad))}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """{name: tensor} of the parameters that require grad (each shared tensor once) and the buffers."""
    state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    persistent = set(model.state_dict().keys())
    state.update({n: b for n, b in model.named_buffers() if n in persistent})
    return state


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load `state` (from `trainable_state` of the same model) into `model`; CheckpointError naming `where` when
    it holds other tensors than the model trains (a different `model.lora`, or another model)."""
    expected = set(trainable_state(model))
    if set(state) != expected:
        extra, missing = sorted(set(state) - expected), sorted(expected - set(state))
        raise CheckpointError(f"checkpoint {where} holds other weights than this model trains "
                              f"({len(extra)} unexpected, e.g. {extra[:3]}; {len(missing)} missing, e.g. "
                              f"{missing[:3]}): was it written with another model or model.lora section?")
    model.load_state_dict(state, strict=False)


def merged_state_dict(model: peft.PeftModel) -> dict[str, torch.Tensor]:
    """The base model's state dict (its own key names) with each adapted weight replaced by W + delta (PEFT's
    `get_delta_weight` of the active adapters), as CPU tensors; `model` itself is left unchanged."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    out: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        owner = next((n for n in layers if key.startswith(n + ".")), None)
        if owner is None:
            out[key] = value.detach().to("cpu", copy=True).contiguous()
            continue
        rest = key[len(owner) + 1:]
        if not rest.startswith("base_layer."):
            continue  # the adapter's own tensors (lora_A, lora_B, ...)
        name = f"{owner}.{rest[len('base_layer.'):]}"
        if rest == "base_layer.weight":
            layer = layers[owner]
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    value = value + layer.get_delta_weight(adapter).to(value.dtype)
        out[name] = value.detach().to("cpu", copy=True).contiguous()
    return out
