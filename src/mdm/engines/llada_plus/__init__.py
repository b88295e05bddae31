"""LLaDA+ engine: the LLaDA model, masked-diffusion objective (Normal/MIRROR), P-POTS, samplers, likelihood.

Importing this package registers the engine `llada_plus` (its `EngineSpec`), its p_models (ppots/time_sampling.py)
and its samplers `llada` (sampling/sampler.py) and `fast` (sampling/fast.py). Heavy modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional

from mdm.engines.llada_plus.config import (CONDITIONS, LABEL_KEYS, LikelihoodConfig, ModelConfig, SamplerConfig,
                                           TrainConfig, forwards_per_sequence, label)
from mdm.engines.llada_plus.ppots import time_sampling  # noqa: F401  (registers the p_models)
from mdm.engines.llada_plus.sampling import fast, sampler  # noqa: F401  (they register the samplers)
from mdm.platform.engine_api import EngineSpec, LoglikScore, ModelMemory
from mdm.platform.registry import get_registry

if TYPE_CHECKING:
    import torch

    from mdm.engines.llada_plus.objective import LLaDAPlusObjective


def _build_model(*args: object, **kwargs: object) -> torch.nn.Module:
    from mdm.engines.llada_plus.model_build import build_model

    return build_model(*args, **kwargs)


def _model_memory(*args: object, **kwargs: object) -> ModelMemory:
    from mdm.engines.llada_plus.memory import model_memory

    return model_memory(*args, **kwargs)


def _memory_knobs(flat: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    from mdm.engines.llada_plus.memory import memory_knobs

    return memory_knobs(flat)


def _register_auto_classes() -> None:
    import mdm.engines.llada_plus.model  # noqa: F401  (registers model_type "llada" with AutoConfig/AutoModel)


def _build_objective(*args: object, **kwargs: object) -> LLaDAPlusObjective:
    from mdm.engines.llada_plus.objective import build_objective

    return build_objective(*args, **kwargs)


def _build_rl_objective(*args: Any, **kwargs: Any) -> Any:
    from mdm.engines.llada_plus.rl.objective import build_rl_objective

    return build_rl_objective(*args, **kwargs)


def _sample(model: torch.nn.Module, prompts: list[list[int]], sampler_cfg: SamplerConfig,
            generator: Optional[torch.Generator] = None) -> sampler.SampleOutput:
    """The sampler named `sampler_cfg.name`, with [MASK] and EOS ids from the model's config."""
    mask_id = getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        raise ValueError("model.config.mask_token_id is not set; the sampler needs the [MASK] id")
    return get_registry("samplers").get(sampler_cfg.name)(
        model, prompts, sampler_cfg, mask_id=int(mask_id), eos_id=getattr(model.config, "eos_token_id", None),
        generator=generator)


def _end_token_ids(model: torch.nn.Module, sampler_cfg: SamplerConfig) -> list[int]:
    return sampler.end_ids(sampler_cfg, getattr(model.config, "eos_token_id", None))


def _loglikelihood(*args: object, **kwargs: object) -> list[LoglikScore]:
    from mdm.engines.llada_plus.likelihood.hooks import loglikelihood

    return loglikelihood(*args, **kwargs)


def _loglikelihood_rolling(*args: object, **kwargs: object) -> list[LoglikScore]:
    from mdm.engines.llada_plus.likelihood.hooks import loglikelihood_rolling

    return loglikelihood_rolling(*args, **kwargs)


def _check_model(*args: Any, **kwargs: Any) -> None:
    from mdm.engines.llada_plus.quantized import check_model

    check_model(*args, **kwargs)


get_registry("engines").register("llada_plus", EngineSpec(
    train_config=TrainConfig, model_config=ModelConfig, sampler_config=SamplerConfig,
    build_model=_build_model, build_objective=_build_objective, sample=_sample, end_token_ids=_end_token_ids,
    conditions=CONDITIONS, label=label, label_keys=LABEL_KEYS, forwards_per_sequence=forwards_per_sequence,
    likelihood_config=LikelihoodConfig, loglikelihood=_loglikelihood, loglikelihood_rolling=_loglikelihood_rolling,
    register_auto_classes=_register_auto_classes, model_memory=_model_memory, memory_knobs=_memory_knobs,
    check_model=_check_model, build_rl_objective=_build_rl_objective))
