"""QLoRA: a pretrained LLaDA base loaded with its block weights in 4 bits (bitsandbytes NF4), LoRA on top.

    check_model(model_cfg, "GSAI-ML/LLaDA-8B-Instruct", use_gpu=True, zero_stage=2)   # the driver, before work
    kwargs = quantized_load_kwargs(model_cfg, dtype)     # {"quantization_config": ..., "device_map": ...} or {}
    model = LLaDAModelLM.from_pretrained(path, dtype=dtype, **kwargs)
    model = prepare_4bit(model, model_cfg)                # peft.prepare_model_for_kbit_training

`model.load_in_4bit: true` needs adapters (`model.lora.r` > 0: a 4-bit weight does not train), a pretrained
base (`train.model`, not the random tiny model) and a CUDA GPU on every worker (bitsandbytes' 4-bit kernels);
each missing piece is one ValueError line, from the driver before Ray starts (`check_model`, EngineSpec's hook)
and again in the worker that loads it. Not run in this project's CI (no GPU there): see the README.
"""

from __future__ import annotations

from typing import Any

import torch

from mdm.engines.llada_plus.config import ModelConfig

NO_GPU = ("model.load_in_4bit: true needs CUDA GPUs (bitsandbytes' 4-bit kernels) and {where} has none: run on GPU "
          "workers (ray.use_gpu: true) or set model.load_in_4bit: false")


def check_model(model_cfg: ModelConfig, name_or_path: str, *, use_gpu: bool, zero_stage: int) -> None:
    """ValueError (one line) for a 4-bit config that cannot train here; nothing for any other model section."""
    if not model_cfg.load_in_4bit:
        return
    if model_cfg.lora.r <= 0:
        raise ValueError("model.load_in_4bit: true trains LoRA adapters on a frozen 4-bit base: set model.lora.r > 0 "
                         "(e.g. 16)")
    if name_or_path == "tiny":
        raise ValueError("model.load_in_4bit: true quantizes a pretrained base: set train.model to a checkpoint "
                         "directory or hub id (the random tiny model has nothing to keep)")
    if not use_gpu:
        raise ValueError(NO_GPU.format(where="this run (ray.use_gpu: false)"))
    if zero_stage == 3:
        raise ValueError("model.load_in_4bit: true with DeepSpeed ZeRO-3 is not supported here (it would partition "
                         "the 4-bit weights): use deepspeed.zero_stage 0-2")


def quantized_load_kwargs(model_cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """`from_pretrained` keyword arguments that load the base in NF4 on this worker's GPU ({} when off)."""
    if not model_cfg.load_in_4bit:
        return {}
    if not torch.cuda.is_available():
        raise ValueError(NO_GPU.format(where="this worker"))
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ValueError("model.load_in_4bit: true needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if dtype == torch.float32 else dtype
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                               bnb_4bit_use_double_quant=False)
    return {"quantization_config": quant, "device_map": {"": torch.cuda.current_device()}}


def prepare_4bit(model: torch.nn.Module, model_cfg: ModelConfig) -> torch.nn.Module:
    """PEFT's preparation of a 4-bit base for training (layer norms in float32, input gradients for
    checkpointing); the model itself when off."""
    if not model_cfg.load_in_4bit:
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=model_cfg.gradient_checkpointing)
