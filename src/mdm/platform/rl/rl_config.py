"""`rl` section: reinforcement learning on verifiable rewards (`mdm rl`), GRPO as d1's diffu-GRPO defines it.

    mdm rl --config experiments/configs/rl_arithmetic.yaml --set rl.num_generations=8

`mdm rl` is `mdm train` with `rl.enabled: true`: the same driver, worker group, Trainer, checkpoints, MLflow
run and faults, with rollouts in place of the JSONL data and the engine's GRPO objective in place of its SFT
one. `train.max_steps` counts optimizer steps (each rollout batch gives `num_iterations` of them); prompts come
from `train.task`'s `rl.split`, the task built with `rl.task_args` (e.g. {max_operand: 12} for `arithmetic`;
its held-out `rl.eval_split` too). The defaults are d1's (`diffu-grpo/`: num_generations 6, beta 0.04, epsilon
0.2, num_iterations 1, p_mask_prompt 0.3, advantages not divided by the group's std).

- num_generations (G): completions per prompt; a group's advantages are its rewards minus their mean.
- prompts_per_step: prompts per rollout batch; prompts_per_step x G sequences are split over the workers in
  micro-batches of `train.batch_size_per_gpu`, `train.grad_accum` of them per worker per optimizer step.
- num_iterations (mu): optimizer steps on each rollout batch (old-policy ratio, clipped at 1 +- epsilon).
- beta: weight of the KL to the frozen reference (the initial model; with LoRA, the base without adapters).
- scale_by_std: divide advantages by the group's std (DeepSeekMath), off in d1.
- logp_estimator, p_mask_prompt, stratify_t: the policy log-probability estimate (the engine's; LLaDA+: "d1",
  "mirror", "coupled": engines/llada_plus/rl/policy_logp.py).
- format_reward: added to the task's reward when its extractor finds an answer in the completion.
- rollout_actors, actor_cpus, actor_gpus: the rollout actor pool (Ray actors, sampling with the `sampler`
  section); a dead actor is replaced and its prompts issued again.
- max_staleness: 0 = on-policy (the learner waits for each batch); 1 = the actors generate batch k+1 with
  the weights of step k while the learner trains on batch k.
- eval_steps, eval_prompts: held-out exact match (`rl.eval_split`, one sample per prompt) every so many
  optimizer steps and at the end (0: never).
- table_steps: a rollout table (prompt, completions, rewards) logged to MLflow every so many steps (0: never).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from mdm.platform.fields import ConfigError


@dataclass
class RLConfig:
    enabled: bool = False
    split: str = "train"
    task_args: Dict[str, Any] = field(default_factory=dict)
    num_generations: int = 6
    prompts_per_step: int = 4
    num_iterations: int = 1
    beta: float = 0.04
    epsilon: float = 0.2
    scale_by_std: bool = False
    logp_estimator: str = "d1"
    p_mask_prompt: float = 0.3
    stratify_t: bool = False
    format_reward: float = 0.0
    rollout_actors: int = 1
    actor_cpus: float = 0.5
    actor_gpus: float = 0.0
    max_staleness: int = 1
    eval_split: str = "test"
    eval_steps: int = 0
    eval_prompts: int = 64
    table_steps: int = 0

    def __post_init__(self) -> None:
        positive = {"num_generations": self.num_generations, "prompts_per_step": self.prompts_per_step,
                    "num_iterations": self.num_iterations, "rollout_actors": self.rollout_actors}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"rl.{key} must be >= 1, got {value}")
        for key, value in {"beta": self.beta, "epsilon": self.epsilon, "eval_steps": self.eval_steps,
                           "eval_prompts": self.eval_prompts, "table_steps": self.table_steps,
                           "actor_cpus": self.actor_cpus, "actor_gpus": self.actor_gpus}.items():
            if value < 0:
                raise ConfigError(f"rl.{key} must be >= 0, got {value}")
        if not 0.0 <= self.p_mask_prompt <= 1.0:
            raise ConfigError(f"rl.p_mask_prompt must be in [0, 1], got {self.p_mask_prompt}")
        if self.max_staleness not in (0, 1):
            raise ConfigError(f"rl.max_staleness must be 0 (on-policy) or 1 (one batch ahead), got "
                              f"{self.max_staleness}")

    @property
    def rollout_size(self) -> int:
        """Sequences per rollout batch."""
        return self.prompts_per_step * self.num_generations


@dataclass
class RLSections:
    """What an `mdm rl` worker reads beyond the training sections (train_loop_config["rl"]): plain values."""

    rl: RLConfig
    sampler: Any                    # the engine's sampler section: the rollout actors sample with it
    task: str
    data_dir: Optional[str]
