"""`eval` section: batch inference and scoring (read by `mdm.platform.infer.generation.job`).

    eval:
      task: gsm8k            # or --task
      split: test
      batch_size: 16         # rows per sampler call (one Ray Data batch)
      min_actors: 1          # the autoscaling sampler actor pool: ActorPoolStrategy(min, max, initial)
      max_actors: 4
      gpus_per_actor: null   # null: 1 when the cluster has GPUs, else 0 (CPU actors)
      mode: auto             # generate | likelihood | auto (likelihood for multiple-choice tasks)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mdm.platform.fields import choice, registry_choice


@dataclass
class EvalConfig:
    """Batch inference settings.

    `model`: HF directory, Ray Train run/checkpoint directory (its HF export is found inside), hub id,
    `mlflow:<run_id>` or `runs:/<run_id>/<path>` (`--model` wins). `adapter`: a PEFT adapter (what a LoRA run
    exports) loaded on top of `model` and merged, in the same forms (`--adapter` wins); without `model`, the
    base the adapter records. `prompts`: a JSONL of
    {"prompt", "gold_raw"?, "id"?} rows to use instead of the task's split. The task's raw data comes from
    `data.task_data_dir` / `data.source` (the key `eval.data_dir` moved there).
    `min_actors`/`max_actors`/`initial_actors`: the autoscaling sampler actor pool (initial defaults to min;
    on an autoscaling cluster, initial = max asks for all GPU nodes at once instead of one at a time).
    `wait_for_actors_s` > 0: hold the first batch until the initial actors are up (at most that long, then
    an error); with initial = max this spreads the job over all autoscaled nodes instead of letting the
    first actor that starts take most of it. 0 dispatches as soon as any actor is ready.
    `gpus_per_actor`: null = 1 when the cluster has GPUs now, else 0; set it explicitly on a cluster whose
    GPU nodes the autoscaler adds on demand (it starts with none). `cpus_per_actor`: fractions are fine
    (keep a CPU free for Ray Data's own tasks on small machines). `max_restarts`/`max_task_retries`: a dead
    actor is restarted and its batches retried (-1 = forever), so every row is still scored exactly once.
    `seed`: the sampler's generator for a batch is seeded with seed + the batch's first row index.
    `metrics_out`: default `<out>.metrics.json`. `log_mlflow`: log metrics + predictions (also needs
    tracking.enabled) to the training run when the model came from one, else to a new run `eval_run_name`.
    `progress`: one bar of scored rows on stderr (Ray Data's per-operator bars stay off).
    `mode`: generate (sample and extract an answer), likelihood (score each example's choices, or its reference
    response, by the engine's likelihood hook with the engine's `likelihood` section: likelihood/job.py), or
    auto (likelihood when the task declares `multiple_choice`, else generate). `mc_shards` (likelihood mode):
    split each example's `likelihood.mc_num` samples into this many independent rows, so that few examples
    still spread over many actors; the parts are combined weighted by their sample counts.
    """

    task: Optional[str] = registry_choice(None, "tasks")
    split: str = "test"
    limit: Optional[int] = None
    prompts: Optional[str] = None
    model: Optional[str] = None
    adapter: Optional[str] = None
    out: Optional[str] = None
    metrics_out: Optional[str] = None
    batch_size: int = 16
    min_actors: int = 1
    max_actors: int = 1
    initial_actors: Optional[int] = None
    gpus_per_actor: Optional[float] = None
    cpus_per_actor: float = 1.0
    max_tasks_in_flight_per_actor: Optional[int] = None
    wait_for_actors_s: int = 0
    max_restarts: int = -1
    max_task_retries: int = -1
    score_cpus: float = 0.25
    device: str = choice("auto", ("auto", "cpu", "cuda"))
    seed: int = 0
    log_mlflow: bool = True
    eval_run_name: Optional[str] = None
    progress: bool = True
    mode: str = choice("auto", ("auto", "generate", "likelihood"))
    mc_shards: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        if self.min_actors < 1 or self.max_actors < self.min_actors:
            raise ValueError(f"eval.min_actors must be >= 1 and <= eval.max_actors, got "
                             f"{self.min_actors}, {self.max_actors}")
        if self.initial_actors is not None and not self.min_actors <= self.initial_actors <= self.max_actors:
            raise ValueError(f"eval.initial_actors must be within [min_actors, max_actors], got "
                             f"{self.initial_actors}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"eval.limit must be >= 1 or null, got {self.limit}")
        if self.mc_shards < 1:
            raise ValueError(f"eval.mc_shards must be >= 1, got {self.mc_shards}")
        if self.cpus_per_actor < 0 or (self.gpus_per_actor is not None and self.gpus_per_actor < 0):
            raise ValueError("eval.cpus_per_actor / eval.gpus_per_actor must be >= 0")
