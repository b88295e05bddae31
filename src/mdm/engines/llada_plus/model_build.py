"""Build the engine's model from the `model` config section: a tiny random LLaDA, or a checkpoint.

    from mdm.engines.llada_plus.model_build import build_model
    model = build_model(ModelConfig(), "tiny", tokenizer)          # random weights, sizes from the section
    model = build_model(ModelConfig(), "/ckpt/LLaDA-8B-Instruct")   # from_pretrained, no remote code

`model.trust_remote_code: true` opts in to loading another diffusion LM through AutoModel with its own
code (its forward must return `.logits`); LLaDA checkpoints never need it. After building,
`model.config.mask_token_id / eos_token_id / pad_token_id` are always set. With `model.lora.r` > 0 the
model comes back wrapped by PEFT (lora.py): only the adapters train; `model.gradient_checkpointing` is turned
on before, so PEFT sees it and makes the inputs of the checkpointed blocks carry gradients. With
`model.load_in_4bit` the base is loaded in NF4 on the worker's GPU first (quantized.py: QLoRA).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Optional

import torch
from transformers import AutoModel

from mdm.engines.llada_plus.config import ModelConfig
from mdm.engines.llada_plus.lora import apply_lora
from mdm.engines.llada_plus.model import LLaDAConfig, LLaDAModelLM
from mdm.engines.llada_plus.quantized import prepare_4bit, quantized_load_kwargs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SPECIAL = ("mask_token_id", "eos_token_id", "pad_token_id")


def _from_tokenizer(tokenizer: Optional[PreTrainedTokenizerBase], key: str) -> Optional[int]:
    if tokenizer is None:
        return None
    if key == "vocab_size":
        return len(tokenizer)
    value = getattr(tokenizer, key, None)
    if value is None and key == "pad_token_id":  # many tokenizers pad with EOS
        value = getattr(tokenizer, "eos_token_id", None)
    return value


def tiny_config(model_cfg: ModelConfig, tokenizer: Optional[PreTrainedTokenizerBase] = None) -> LLaDAConfig:
    """LLaDAConfig from the `model` section; -1 fields come from the tokenizer (error when there is none)."""
    values: dict[str, Any] = {}
    for key in ("vocab_size",) + SPECIAL:
        value = getattr(model_cfg, key)
        if value == -1:
            value = _from_tokenizer(tokenizer, key)
            if value is None:
                raise ValueError(f"model.{key} is -1 (take it from the tokenizer) but "
                                 f"{'no tokenizer was given' if tokenizer is None else 'the tokenizer has none'}; "
                                 f"set model.{key} explicitly")
        values[key] = int(value)
    return LLaDAConfig(d_model=model_cfg.d_model, n_layers=model_cfg.n_layers, n_heads=model_cfg.n_heads,
                       n_kv_heads=model_cfg.n_heads, mlp_hidden_size=model_cfg.mlp_hidden_size,
                       embedding_size=values["vocab_size"], max_sequence_length=model_cfg.max_sequence_length,
                       rope_theta=model_cfg.rope_theta, **values)


def _model_type(path: str) -> Optional[str]:
    cfg_file = os.path.join(path, "config.json")
    if os.path.isfile(cfg_file):
        with open(cfg_file) as f:
            return json.load(f).get("model_type")
    return None  # a hub id: let AutoConfig resolve it


def build_model(model_cfg: ModelConfig, name_or_path: str = "tiny",
                tokenizer: Optional[PreTrainedTokenizerBase] = None) -> torch.nn.Module:
    """The model for `train.model` = "tiny" (random init from `model_cfg`) or a directory / hub id.

    Returns a PreTrainedModel in `model_cfg.dtype`, with gradient checkpointing when asked, wrapped by PEFT
    (a PeftModel around it) when `model.lora.r` > 0."""
    from transformers import AutoConfig

    if model_cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype {model_cfg.dtype!r} unknown; valid: {', '.join(DTYPES)}")
    dtype = DTYPES[model_cfg.dtype]
    if name_or_path == "tiny":
        if model_cfg.load_in_4bit:
            raise ValueError("model.load_in_4bit: true quantizes a pretrained base: set train.model to a checkpoint "
                             "directory or hub id")
        model = LLaDAModelLM(tiny_config(model_cfg, tokenizer)).to(dtype)
    else:
        model_type = _model_type(name_or_path)
        if model_type is None:
            trust = model_cfg.trust_remote_code
            model_type = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust).model_type
        quant = quantized_load_kwargs(model_cfg, dtype)  # model.load_in_4bit (QLoRA): NF4 on this worker's GPU
        if model_type == "llada":  # our registration, never the checkpoint's remote code
            model = LLaDAModelLM.from_pretrained(name_or_path, dtype=dtype, **quant)
        elif model_cfg.trust_remote_code:
            model = AutoModel.from_pretrained(name_or_path, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code,
                                              **quant)
        else:
            raise ValueError(f"{name_or_path}: model_type {model_type!r} is not LLaDA; set "
                             "model.trust_remote_code=true to load it with its own code (only if you trust it)")
        for key in SPECIAL:  # the samplers and the objective rely on these
            if getattr(model.config, key, None) is None:
                value = _from_tokenizer(tokenizer, key)
                if value is None:
                    raise ValueError(f"{name_or_path}: config has no {key} and no tokenizer provides one")
                setattr(model.config, key, int(value))
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model = prepare_4bit(model, model_cfg)
    if model_cfg.lora.r > 0:
        model = apply_lora(model, model_cfg.lora)
    return model
