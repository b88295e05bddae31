"""LoRA adapters on a built model through PEFT (`model.lora`): the base frozen, rank-r adapters trained.

    model = apply_lora(model, model_cfg.lora)          # a peft.PeftModel (model_build.build_model calls it)
    lora_targets(model, ["q_proj", "ff_out"])          # the modules PEFT adapts; ValueError naming the key

`target_modules` are names of Linear layers, matched as PEFT matches a list (the full module name, or its
last dotted parts). The output head is never adapted: LLaDA's head is `model.transformer.ff_out`, which shares
its last name with the blocks' MLP output `...blocks.{i}.ff_out`, so it is passed to PEFT as an excluded
module. The model that comes back forwards like the base one (`out.logits`, `model.config` is the base's), so
the objective and the Trainer need not know; only the adapters require grad, and the Trainer's optimizer
takes only what requires grad. A fresh adapter's B matrix is zero: until trained it changes no output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mdm.engines.llada_plus.config import LoRAConfig


def output_head_name(model: torch.nn.Module) -> str | None:
    """The full module name of the model's output head (`get_output_embeddings`), or None."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return next((name for name, m in model.named_modules() if m is head), None) if head is not None else None


def lora_targets(model: torch.nn.Module, names: list[str]) -> list[str]:
    """The full names of the Linear modules `names` select (PEFT's rule), the output head left out.

    ValueError naming `model.lora.target_modules` when a name selects none, with the names that would."""
    head = output_head_name(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != head]
    chosen: list[str] = []
    for name in names:
        hits = [n for n in linears if n == name or n.endswith("." + name)]
        if not hits:
            valid = sorted({n.rsplit(".", 1)[-1] for n in linears})
            raise ValueError(f"model.lora.target_modules: {name!r} names no Linear layer of the model "
                             f"(the output head is never adapted); valid names: {', '.join(valid)}")
        chosen += [n for n in hits if n not in chosen]
    return chosen


def apply_lora(model: torch.nn.Module, cfg: LoRAConfig) -> torch.nn.Module:
    """`model` wrapped by PEFT with rank-`cfg.r` adapters on `cfg.target_modules` (cfg.r > 0)."""
    import peft

    if cfg.r <= 0:
        raise ValueError(f"model.lora.r is {cfg.r}: LoRA is off, nothing to apply")
    lora_targets(model, list(cfg.target_modules))  # a clear error before PEFT's own
    head = output_head_name(model)
    peft_cfg = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                               target_modules=list(cfg.target_modules), bias="none",
                               exclude_modules=[head] if head else None)
    return peft.get_peft_model(model, peft_cfg)
