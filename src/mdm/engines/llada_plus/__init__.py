"""LLaDA+ engine: the LLaDA model, masked-diffusion objective (Normal/MIRROR), P-POTS, samplers.

Importing this package registers the engine `llada_plus` and its p_models and samplers.
"""

from __future__ import annotations

from typing import Any

from mdm.platform.engine_api import EngineSpec
from mdm.platform.registry import get_registry
from mdm.engines.llada_plus.config import ModelConfig, SamplerConfig, TrainConfig


def _build_model(*args: Any, **kwargs: Any) -> Any:
    from mdm.engines.llada_plus.model import build_model

    return build_model(*args, **kwargs)


def _build_objective(*args: Any, **kwargs: Any) -> Any:
    from mdm.engines.llada_plus.objective import build_objective

    return build_objective(*args, **kwargs)


get_registry("engines").register("llada_plus", EngineSpec(
    train_config=TrainConfig, model_config=ModelConfig, sampler_config=SamplerConfig,
    build_model=_build_model, build_objective=_build_objective))

# Registration of p_models and samplers happens in their modules; import them if present.
for _mod in ("time_sampling", "sampler"):
    try:
        __import__(f"mdm.engines.llada_plus.{_mod}")
    except ModuleNotFoundError as _e:  # only while the module is not written yet
        if _e.name != f"mdm.engines.llada_plus.{_mod}":
            raise
