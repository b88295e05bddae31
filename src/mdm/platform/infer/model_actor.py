"""The base of batch inference's model-holding Ray Data actors (generation/actors.py `SamplerActor`,
likelihood/actor.py `LikelihoodActor`): the tokenizer and the model loaded once per actor, on the device
`eval.device` asks for (`pick_device`).

The generation job's two stages, for reference:

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

import os
import time
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from mdm.platform.engine_api import ModelSection



def pick_device(device: str) -> str:
    import torch

    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("eval.device is cuda but this actor sees no CUDA device "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        return "cuda"
    return "cpu"


class ModelActor:
    """Base of the model-holding actors (generation/actors.py's sampler, likelihood/actor.py's scorer): loads the tokenizer
    and the model once per actor, through the engine's `build_model` (`adapter.eval_model`: with `adapter_path`,
    that adapter merged in)."""

    def __init__(self, model_path: str, engine: str, model_cfg: ModelSection, device: str = "auto",
                 auto_import: tuple[str, ...] = (), tracking_uri: Optional[str] = None,
                 adapter_path: Optional[str] = None) -> None:
        import ray
        import torch

        from mdm.platform.adapter import eval_model
        from mdm.platform.infer.model_source import actor_model_path
        from mdm.platform.registry import auto_import as _auto_import
        from mdm.platform.registry import get_registry, load_builtins
        from mdm.platform.tokenizer import load_tokenizer

        load_builtins()
        _auto_import(list(auto_import))
        t0 = time.perf_counter()
        self.device = pick_device(device)
        model_path = actor_model_path(model_path, tracking_uri)  # a URI / runs:/ spec: this node's cached copy
        self.tokenizer = load_tokenizer(model_path, model_cfg.trust_remote_code)
        self.spec = get_registry("engines").get(engine)
        adapter = actor_model_path(adapter_path, tracking_uri) if adapter_path else None
        self.model = eval_model(self.spec, model_cfg, model_path, self.tokenizer, adapter).to(self.device).eval()
        self.load_s = time.perf_counter() - t0
        self.ready_at = time.time()  # wall clock: comparable across actors of one machine/cluster
        ctx = ray.get_runtime_context()
        self.actor_name = f"{ctx.get_node_id()}:{os.getpid()}"
        self._torch = torch
