"""The GRPO objective of LLaDA+ (`EngineSpec.build_rl_objective`): what the one Trainer steps in `mdm rl`.

    objective = build_rl_objective(cfg.rl, ref_model=None)      # None: a frozen copy is made at `prepare`
    adv = objective.advantages(rewards)                          # [N] group-normalised (grpo.group_advantages)
    loss, metrics = objective.loss(model, micro_batch, generator)

A rollout micro-batch (from `mdm.platform.rl.source.RolloutSource`) holds `input_ids` [n, P + T] (prompts
left-padded to P, then T completion tokens; with padding also `attention_mask` and `position_ids`, so that
each row is scored as the sampler generated it), `completion_mask` [n, T] (the completion up to and including its
first end token), `advantages` [n], and the scalars `prompt_len`, `iteration` (0 .. `iterations` - 1, mu
unless a resume lands inside a batch), `mask_seed` and `key` (the micro-batch's place in the rollout stream),
plus `stats` (the rollout batch's reward statistics, passed on as metrics). Inner iteration j estimates the
per-token log-probabilities (policy_logp.py, the estimator `rl.logp_estimator`) with the masks of seed
`mask_seed + j`, for the policy, the old policy and the reference alike, as d1 does. The old policy's
estimates for iterations 1 .. mu-1 are taken at iteration 0, before the first update (mu - 1 extra forwards,
without gradients); at iteration 0 they equal the policy's own (detached), so the ratio is 1.

`model` is the Trainer's module (DeepSpeed's and DDP's wrappers already taken off: updater.py). The reference
(beta > 0) is the model as training starts: with LoRA the same model with its adapters
disabled (no copy), else a frozen copy made when the caller passes none. A caller that restores a checkpoint
must pass the reference it built from the initial weights (`ref_model=`), or the copy would be of the
restored weights.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterable, Iterator, Optional

import torch

from mdm.engines.llada_plus.objective import mask_token_id
from mdm.engines.llada_plus.rl.grpo import group_advantages, grpo_loss
from mdm.engines.llada_plus.rl.policy_logp import LOGP_ESTIMATORS, completion_logps

Metrics = dict[str, float]


class GRPOObjective:
    """See the module docstring. `rl_cfg`: the platform's `rl` section (mdm.platform.rl.rl_config.RLConfig)."""

    def __init__(self, rl_cfg: Any, ref_model: Optional[torch.nn.Module] = None) -> None:
        if rl_cfg.logp_estimator not in LOGP_ESTIMATORS:
            raise ValueError(f"rl.logp_estimator: unknown estimator {rl_cfg.logp_estimator!r}; valid: "
                             f"{', '.join(LOGP_ESTIMATORS)}")
        self.cfg = rl_cfg
        self.ref_model = ref_model
        self.old: dict[int, list[torch.Tensor]] = {}  # key -> old-policy estimates of iterations 1 .. mu-1

    # -- the Objective protocol (mdm.platform.train.trainer.Objective) ----------------------------------
    def prepare(self, model: torch.nn.Module, batches: Iterable[Any], device: torch.device) -> Optional[Metrics]:
        if self.cfg.beta and self.ref_model is None and not hasattr(model, "disable_adapter"):
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        return None

    def maybe_reestimate(self, step: int, model: torch.nn.Module, batches: Iterable[Any],
                         device: torch.device) -> Optional[Metrics]:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        return group_advantages(rewards, self.cfg.num_generations, self.cfg.scale_by_std)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any], generator: torch.Generator
             ) -> tuple[torch.Tensor, Metrics]:
        j, key, seed = int(batch["iteration"]), int(batch["key"]), int(batch["mask_seed"])
        mu = int(batch.get("iterations", self.cfg.num_iterations))  # fewer after a resume inside a batch
        if j == 0 and mu > 1:
            with torch.no_grad():
                self.old[key] = [self.logps(model, batch, seed + i) for i in range(1, mu)]
        old = self.old[key][j - 1] if j > 0 else None
        if j == mu - 1:
            self.old.pop(key, None)
        logps = self.logps(model, batch, seed + j)
        ref = self.ref_logps(model, batch, seed + j) if self.cfg.beta else None
        loss, stats = grpo_loss(logps, old, ref, batch["advantages"], batch["completion_mask"],
                                epsilon=self.cfg.epsilon, beta=self.cfg.beta)
        metrics = {"loss": float(loss.detach()), **{f"rl/{k}": v for k, v in stats.items()}}
        metrics.update(batch.get("stats") or {})
        return loss, metrics

    def eval_loss(self, model: torch.nn.Module, batch: dict[str, Any], generator: torch.Generator
                  ) -> tuple[torch.Tensor, Metrics]:
        return self.loss(model, batch, generator)

    # -- the estimates ------------------------------------------------------------------------------------
    def logps(self, model: torch.nn.Module, batch: dict[str, Any], seed: int) -> torch.Tensor:
        ids = batch["input_ids"]
        gen = torch.Generator(device=ids.device).manual_seed(seed)
        return completion_logps(model, ids, prompt_len=int(batch["prompt_len"]), mask_id=mask_token_id(model),
                                estimator=self.cfg.logp_estimator, p_mask_prompt=self.cfg.p_mask_prompt,
                                stratify_t=self.cfg.stratify_t, generator=gen,
                                attention_mask=batch.get("attention_mask"), position_ids=batch.get("position_ids"))

    def ref_logps(self, model: torch.nn.Module, batch: dict[str, Any], seed: int) -> torch.Tensor:
        with torch.no_grad(), self.reference(model) as ref:
            return self.logps(ref, batch, seed)

    @contextlib.contextmanager
    def reference(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        if self.ref_model is not None:
            yield self.ref_model
            return
        if not hasattr(model, "disable_adapter"):
            raise RuntimeError("rl.beta > 0 needs the reference model: call prepare() first or pass ref_model")
        with model.disable_adapter():
            yield model


def build_rl_objective(rl_cfg: Any, ref_model: Optional[torch.nn.Module] = None) -> GRPOObjective:
    return GRPOObjective(rl_cfg, ref_model)
