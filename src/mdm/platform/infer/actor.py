"""The two Ray Data stages of batch inference: a sampler actor class (GPU or CPU) and a CPU scoring function.

    ds.map_batches(SamplerActor, fn_constructor_kwargs=sampler_actor_args(...), batch_size=16,
                   compute=ray.data.ActorPoolStrategy(min_size=1, max_size=4), num_gpus=1)
      .map_batches(Scorer, fn_constructor_kwargs={"task": "gsm8k"}, compute=ActorPoolStrategy(size=1),
                   num_cpus=0.25)

`SamplerActor` loads tokenizer and model once per actor (through the engine's `build_model`, found in the
`engines` registry) and samples each batch of prompt ids through the one generation path
(`mdm.platform.infer.generation.generate`, one sampler call per batch).
Batches are dicts of numpy arrays (Ray Data's "numpy" format); `prompt_ids` is an object array of int
lists. The actor adds `prediction` (decoded text, cut at the first end token: EOS or
`sampler.eot_token_id`), `gen_tokens` (tokens generated before it), `nfe` (model calls for the batch, on
its first row), `actor` ("<node id>:<pid>", so a run can show which actors served it) and
`actor_ready_at` / `sampled_at` (wall clock: model loaded / batch done, for the steady-state throughput
that excludes start-up). `Scorer` adds `extracted` and `score` with the task pack.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

import numpy as np


def _pick_device(device: str) -> str:
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("eval.device is cuda but this actor sees no CUDA device "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        return "cuda"
    return "cpu"


class ModelActor:
    """Base of the model-holding actors (this module's sampler, likelihood_actor's scorer): loads the tokenizer
    and the model once per actor, through the engine's `build_model`."""

    def __init__(self, model_path: str, engine: str, model_cfg: Any, device: str = "auto",
                 auto_import: tuple[str, ...] = (), tracking_uri: Optional[str] = None) -> None:
        import ray
        import torch

        from mdm.platform.infer.model_source import actor_model_path
        from mdm.platform.registry import auto_import as _auto_import
        from mdm.platform.registry import get_registry, load_builtins
        from mdm.platform.tokenizer import load_tokenizer

        load_builtins()
        _auto_import(list(auto_import))
        t0 = time.perf_counter()
        self.device = _pick_device(device)
        model_path = actor_model_path(model_path, tracking_uri)  # a URI / runs:/ spec: this node's cached copy
        self.tokenizer = load_tokenizer(model_path, model_cfg.trust_remote_code)
        self.spec = get_registry("engines").get(engine)
        self.model = self.spec.build_model(model_cfg, model_path, self.tokenizer).to(self.device).eval()
        self.load_s = time.perf_counter() - t0
        self.ready_at = time.time()  # wall clock: comparable across actors of one machine/cluster
        ctx = ray.get_runtime_context()
        self.actor_name = f"{ctx.get_node_id()}:{os.getpid()}"
        self._torch = torch


class SamplerActor(ModelActor):
    """Callable class for `map_batches`: one model per actor, one sampler call per batch."""

    def __init__(self, model_path: str, engine: str, model_cfg: Any, sampler_cfg: Any, device: str = "auto",
                 seed: int = 0, auto_import: tuple[str, ...] = (), tracking_uri: Optional[str] = None) -> None:
        super().__init__(model_path, engine, model_cfg, device, auto_import, tracking_uri)
        self.sampler_cfg = sampler_cfg
        self.seed = seed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from mdm.platform.infer.generation import generate

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
