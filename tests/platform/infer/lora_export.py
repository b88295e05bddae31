"""What a LoRA run exports, for the evaluation paths' `--adapter` tests, without training one (the training path's
own LoRA tests are tests/platform/train/test_adapters.py).

    out = make_lora_export(base_dir, tmp / "final")   # PEFT's adapter directory + merged/ (export.merge_lora)
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from mdm.platform.config import load_config
from mdm.platform.registry import get_registry, load_builtins
from mdm.platform.train.checkpoint import write_export


def make_lora_export(base_dir: str, out: Path, seed: int = 1) -> Path:
    """The trainer's `write_export` (with `merge_lora`) of a rank-4 LoRA on `base_dir` whose adapters are random,
    not zero as at a run's start, so that they change what the model says."""
    load_builtins()
    tok = AutoTokenizer.from_pretrained(base_dir)
    cfg = load_config([], ["model.lora.r=4", "model.lora.alpha=8"])
    model = get_registry("engines").get("llada_plus").build_model(cfg.model, base_dir, tok)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.5)
    write_export(model, tok, str(out), merge_lora=True)
    return out
