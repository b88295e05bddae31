"""The two Ray Data stages of batch generation: a sampler actor class (GPU or CPU) and a CPU scorer.

    ds.map_batches(SamplerActor, ..., compute=ray.data.ActorPoolStrategy(min_size=1, max_size=4), num_gpus=1)
      .map_batches(Scorer, fn_constructor_kwargs={"task": "gsm8k"}, compute=ActorPoolStrategy(size=1))

`SamplerActor` (a `model_actor.ModelActor`) samples each batch of prompt ids through the one generation
path (`generate.generate`, one sampler call per batch); `Scorer` adds `extracted` and `score` with the task
pack. The columns each adds are listed in `mdm.platform.infer.model_actor`'s docstring.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from mdm.platform.infer.model_actor import ModelActor

if TYPE_CHECKING:
    from mdm.platform.engine_api import ModelSection, SamplerSection


class SamplerActor(ModelActor):
    """Callable class for `map_batches`: one model per actor, one sampler call per batch."""

    def __init__(self, model_path: str, engine: str, model_cfg: ModelSection, sampler_cfg: SamplerSection, device: str = "auto",
                 seed: int = 0, auto_import: tuple[str, ...] = (), tracking_uri: Optional[str] = None,
                 adapter_path: Optional[str] = None) -> None:
        super().__init__(model_path, engine, model_cfg, device, auto_import, tracking_uri, adapter_path)
        self.sampler_cfg = sampler_cfg
        self.seed = seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from mdm.platform.infer.generation.generate import generate

        prompts = [[int(t) for t in ids] for ids in batch["prompt_ids"]]
        first = int(np.min(batch["index"]))
        gen = self._torch.Generator(device=self.device).manual_seed(self.seed + first)
        one_call = dataclasses.replace(self.sampler_cfg, batch_size=max(1, len(prompts)))  # the Ray batch
        with self._torch.inference_mode():
            out = generate(self.model, self.spec, one_call, prompts, tokenizer=self.tokenizer, generator=gen)
        n = len(prompts)
        batch["prediction"] = np.array(out.texts, dtype=object)
        batch["gen_tokens"] = np.array([len(ids) for ids in out.ids], dtype=np.int64)
        batch["nfe"] = np.array([int(out.nfe)] + [0] * (n - 1), dtype=np.int64)
        batch["actor"] = np.array([self.actor_name] * n, dtype=object)
        batch["actor_ready_at"] = np.full(n, self.ready_at, dtype=np.float64)
        batch["sampled_at"] = np.full(n, time.time(), dtype=np.float64)
        return batch


class Scorer:
    """Callable class for the CPU scoring stage: one task pack instance per (small) actor.

    Adds `extracted` (the task's answer in the prediction, "" when none) and `score` (1.0 = correct; NaN
    when the row has no gold answer). An actor rather than tasks: each fresh task worker would pay the
    Python start-up again for a few microseconds of regex work."""

    def __init__(self, task: str, data_dir: Optional[str] = None, auto_import: tuple[str, ...] = ()) -> None:
        from mdm.platform.registry import auto_import as _auto_import
        from mdm.platform.registry import get_registry

        # Only the task packs (not the engines, which would import torch) -- by module name, as
        # load_builtins does, so the platform still imports no task module directly.
        _auto_import(["mdm.tasks", *auto_import])
        self.task = get_registry("tasks").get(task)(data_dir=data_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = self.task
        preds = [str(p) for p in batch["prediction"]]
        golds = [str(g) for g in batch["gold_raw"]]
        batch["extracted"] = np.array([t.extract(p) or "" for p in preds], dtype=object)
        batch["score"] = np.array([float(t.score(p, g)) if g else float("nan") for p, g in zip(preds, golds)],
                                  dtype=np.float64)
        return batch
