"""What a training run trains on and which per-worker function runs it: the one place `mdm train` and
`mdm rl` differ (the driver, checkpoints, tracking, leases and faults are shared: driver.py).

    work = sft_workload(cfg, tokenizer)     # the processed JSONL through Ray Data (ingest.py), train_fn_per_worker
    work.total, work.per_epoch, work.epochs, work.datasets, work.summary
    train_driver(cfg, workload=rl_workload)  # mdm.platform.rl.driver: rollouts instead of a dataset

`loop_config` is merged into the TorchTrainer's `train_loop_config` next to the worker sections and the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mdm.platform.config import RunConfig
    from mdm.platform.engine_api import BaseTrainConfig


@dataclass
class Workload:
    """The data side of a run: step plan, Ray datasets, the per-worker function and its extra config."""

    total: int
    per_epoch: int
    epochs: int
    summary: str                                   # one line: what the run trains on
    train_fn: Callable[[dict[str, Any]], None]
    datasets: dict[str, Any] = field(default_factory=dict)
    n_rows: Optional[int] = None                   # rows of the tracked dataset (None: nothing to describe)
    n_eval: int = 0
    loop_config: dict[str, Any] = field(default_factory=dict)

    @property
    def has_eval(self) -> bool:
        return "eval" in self.datasets


def plan_steps(n_train: int, train_cfg: BaseTrainConfig, world: int) -> tuple[int, int, int]:
    """(total optimizer steps, steps per epoch, epochs to stream) for `n_train` rows on `world` workers.

    A worker gets at least floor(ceil(n_train / batch) / world) micro-batches an epoch (Ray Data may add a few
    partial ones); `train.max_steps` > 0 overrides `train.epochs`, iterating as many epochs as it needs."""
    per_epoch = math.ceil(n_train / train_cfg.batch_size_per_gpu)
    per_worker = per_epoch // world  # the equal split drops the remainder
    steps_per_epoch = per_worker // train_cfg.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(f"{n_train} training rows make {per_epoch} micro-batches of train.batch_size_per_gpu="
                         f"{train_cfg.batch_size_per_gpu}, fewer than one step of train.grad_accum="
                         f"{train_cfg.grad_accum} on {world} workers")
    if train_cfg.max_steps > 0:
        return train_cfg.max_steps, steps_per_epoch, math.ceil(train_cfg.max_steps * train_cfg.grad_accum / per_worker)
    return train_cfg.epochs * per_worker // train_cfg.grad_accum, steps_per_epoch, train_cfg.epochs


def sft_workload(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase) -> Workload:
    """Supervised fine-tuning: the processed JSONL validated and split by Ray Data (ingest.py)."""
    from mdm.platform.train.ingest import build_datasets
    from mdm.platform.train.worker import train_fn_per_worker

    tcfg = cfg.train
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = build_datasets(cfg.data, train_path=tcfg.train_data_path, seed=tcfg.seed, train_ratio=tcfg.train_ratio,
                          max_len=tcfg.max_len, batch_size=tcfg.batch_size_per_gpu, pad_id=pad_id,
                          vocab_size=len(tokenizer))
    total, per_epoch, epochs = plan_steps(data.n_train, tcfg, cfg.ray.num_workers)
    return Workload(total=total, per_epoch=per_epoch, epochs=epochs, summary=data.summary(),
                    train_fn=train_fn_per_worker, datasets=data.datasets(), n_rows=data.n_rows, n_eval=data.n_eval)
