"""The Ray Data stage of likelihood scoring: an actor that scores each row's continuations with the engine's
likelihood hook.

    ds.map_batches(LikelihoodActor, fn_constructor_kwargs={"model_path": ..., "engine": "llada_plus",
                   "model_cfg": cfg.model, "likelihood_cfg": cfg.likelihood, "mc_shards": 1, "seed": 0},
                   batch_size=16, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=4), num_gpus=1)

A row is one (example, shard): `prompt_ids` (object array of int lists) and `items_json` (a JSON list of the
continuations' token id lists); `shard` in [0, mc_shards). The actor adds `scores_json` (a JSON list of
[value, stderr, n_samples] per continuation), `actor` and the `actor_ready_at` / `scored_at` wall clocks.
All rows of one shard in a batch go to one hook call, so their Monte Carlo rows share packed forwards; the
hook's generator is seeded by (eval.seed, shard) only and the engine seeds each item from it and the item's
tokens, so a continuation's estimate does not depend on the batch, the actor or a retry.
Shard s of S runs mc_num // S samples, plus one when s < mc_num % S (`shard_mc_num`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from mdm.platform.infer.model_actor import ModelActor

if TYPE_CHECKING:
    from mdm.platform.engine_api import LikelihoodSection, ModelSection


def shard_mc_num(mc_num: int, shard: int, shards: int) -> int:
    """Samples run by `shard` of `shards` when an item's `mc_num` samples are split."""
    return mc_num // shards + (1 if shard < mc_num % shards else 0)


def shard_seed(seed: int, shard: int) -> int:
    """The generator seed of one shard: distinct shards get independent draws."""
    return seed * 1_000_003 + shard


class LikelihoodActor(ModelActor):
    """Callable class for `map_batches`: one model per actor, one hook call per shard present in a batch."""

    def __init__(self, model_path: str, engine: str, model_cfg: ModelSection, likelihood_cfg: LikelihoodSection, mc_shards: int = 1,
                 device: str = "auto", seed: int = 0, auto_import: tuple[str, ...] = (),
                 tracking_uri: Optional[str] = None, adapter_path: Optional[str] = None) -> None:
        super().__init__(model_path, engine, model_cfg, device, auto_import, tracking_uri, adapter_path)
        self.spec.require_likelihood(engine)
        self.likelihood_cfg, self.mc_shards, self.seed = likelihood_cfg, mc_shards, seed

    def _cfg_for(self, shard: int) -> Any:
        if self.mc_shards == 1:
            return self.likelihood_cfg
        mc = shard_mc_num(self.likelihood_cfg.mc_num, shard, self.mc_shards)
        return dataclasses.replace(self.likelihood_cfg, mc_num=mc)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["index"])
        prompts = [[int(t) for t in ids] for ids in batch["prompt_ids"]]
        conts = [json.loads(str(c)) for c in batch["items_json"]]
        scores: list[list[list[float]]] = [[] for _ in range(n)]
        for shard in sorted({int(s) for s in batch["shard"]}):
            rows = [r for r in range(n) if int(batch["shard"][r]) == shard]
            items = [(prompts[r], c) for r in rows for c in conts[r]]
            gen = self._torch.Generator().manual_seed(shard_seed(self.seed, shard))
            with self._torch.inference_mode():
                out = self.spec.loglikelihood(self.model, items, self._cfg_for(shard), gen)
            if len(out) != len(items):
                raise RuntimeError(f"the likelihood hook returned {len(out)} scores for {len(items)} items")
            k = 0
            for r in rows:
                for _ in conts[r]:
                    scores[r].append([float(out[k].value), float(out[k].stderr), int(out[k].n_samples)])
                    k += 1
        batch["scores_json"] = np.array([json.dumps(s) for s in scores], dtype=object)
        batch["actor"] = np.array([self.actor_name] * n, dtype=object)
        batch["actor_ready_at"] = np.full(n, self.ready_at, dtype=np.float64)
        batch["scored_at"] = np.full(n, time.time(), dtype=np.float64)
        return batch
