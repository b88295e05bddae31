"""What an engine plugs into the platform: its config sections and its training/model hooks.

An engine registers one `EngineSpec` in the `engines` registry:

    get_registry("engines").register("llada_plus", EngineSpec(
        train_config=TrainConfig, model_config=ModelConfig, sampler_config=SamplerConfig,
        build_model=..., build_objective=..., load_tokenizer=...))

The platform (config loader, Ray trainer, batch inference) reaches the engine only through this spec,
so it never imports an engine module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from mdm.platform.config import choice, registry_choice


@dataclass
class BaseTrainConfig:
    """The seed's engine-agnostic `train.*` keys (names and meanings unchanged).

    `model` is "tiny" (a small model built from the `model` section, no download), a local directory or a
    hub id. `max_steps` > 0 stops training after that many optimizer steps (overrides `epochs`).
    """

    task: Optional[str] = registry_choice(None, "tasks")
    model: str = "tiny"
    train_data_path: Optional[str] = None
    output_dir: str = "outputs"
    seed: int = 42
    batch_size_per_gpu: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = choice("cosine", ("constant", "linear", "cosine"))
    warmup_steps: int = 0
    epochs: int = 1
    max_steps: int = -1
    train_ratio: float = 0.95
    max_len: int = 1024
    eval_strategy: str = choice("epoch", ("epoch", "steps", "no"))
    eval_steps: int = 500
    save_strategy: str = choice("last", ("last", "epoch", "steps", "no"))
    save_steps: int = 500
    logging_steps: int = 10

    def __post_init__(self) -> None:
        for key in ("batch_size_per_gpu", "grad_accum", "epochs", "max_len", "eval_steps", "save_steps",
                    "logging_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 < self.train_ratio <= 1.0:
            raise ValueError(f"train.train_ratio must be in (0, 1], got {self.train_ratio}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class EngineSpec:
    """An engine's sections and hooks.

    build_model(model_cfg, model_name_or_path, vocab_size) -> torch.nn.Module (a transformers PreTrainedModel)
    build_objective(train_cfg) -> an object with
        prepare(model, sequences_iter, device) -> None      # e.g. P-POTS estimation before training
        loss(model, batch, generator) -> (loss, metrics)   # batch: {"input_ids", "labels", "attention_mask"}
        state_dict() / load_state_dict(d)                  # restored on resume
    """

    train_config: type
    model_config: type
    sampler_config: type
    build_model: Callable[..., Any]
    build_objective: Callable[..., Any]
