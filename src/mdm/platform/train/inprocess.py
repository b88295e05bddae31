"""Training in this process, without a Ray Train worker group: the same objective, updater and LR schedule as
the Ray Train workers (one `trainer.Trainer`), on data validated once and held in memory.

    data = load_memory_data(cfg, pad_id=tok.pad_token_id, vocab_size=len(tok))   # once (needs Ray: Ray Data)
    fit = fit_in_process(cfg, tokenizer, data, log=lambda step, metrics: ...)    # per trial, any process
    fit.model, fit.final["eval/loss"], fit.history, fit.timings["train_s"]

For small models a worker group costs more than the training (bench/tune_overhead.py: ~78% of a tiny
sweep trial is outside training), so a comparison of many short trials runs each trial here, in its Tune
trial process (`mdm.platform.compare.compare`). What is the same as on Ray Train, by construction: the
validation and the train/eval split (`ingest.build_datasets`, with the same `data.*` rules and the hash
split on the base `train.seed`), the model build (`EngineSpec.build_model` after
`torch.manual_seed(train.seed)`), the step plan (`workload.plan_steps`) and the Trainer itself (objective,
updater, eval loss, metrics). What differs: one process (world size 1), no checkpoints, and the data
source (`sources.MemoryBatches`: a permutation per epoch from `train.seed` and the epoch instead of Ray
Data's shuffle, each micro-batch cut to its longest row). `FitResult.timings["setup_s"]` is the model
build, the updater and the objective's `prepare`; the other timings are the Trainer's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch

from mdm.platform.train.reporters import CallbackReporter
from mdm.platform.train.sources import MemoryBatches
from mdm.platform.train.trainer import Trainer

if TYPE_CHECKING:
    import ray.data
    from transformers import PreTrainedTokenizerBase

    from mdm.platform.config import RunConfig


@dataclass
class MemoryData:
    """Validated processed rows collated once: `train` / `eval` are {input_ids, labels, attention_mask} [N, L]
    int64 arrays (padded to the longest row); `summary` is the ingest's counts line."""

    train: dict[str, np.ndarray]
    eval: Optional[dict[str, np.ndarray]]
    summary: str

    @property
    def n_train(self) -> int:
        return len(self.train["input_ids"])

    @property
    def n_eval(self) -> int:
        return 0 if self.eval is None else len(self.eval["input_ids"])


def load_memory_data(cfg: RunConfig, *, pad_id: int, vocab_size: Optional[int]) -> MemoryData:
    """Validate and split `train.train_data_path` as the Ray Train path does, then collate it in memory."""
    from mdm.platform.train.data_config import row_schema
    from mdm.platform.train.ingest import build_datasets

    tcfg = cfg.train
    ingest = build_datasets(cfg.data, train_path=tcfg.train_data_path, seed=tcfg.seed, train_ratio=tcfg.train_ratio,
                            max_len=tcfg.max_len, batch_size=tcfg.batch_size_per_gpu, pad_id=pad_id,
                            vocab_size=vocab_size)
    collate = row_schema(cfg.data).collate

    def arrays(rows: ray.data.Dataset) -> dict[str, np.ndarray]:
        plain = [{"input_ids": list(r["input_ids"]), "prompt_length": int(r["prompt_length"])} for r in rows.take_all()]
        return collate(plain, pad_id=pad_id)

    return MemoryData(train=arrays(ingest.train_rows), eval=arrays(ingest.eval_rows) if ingest.n_eval else None,
                      summary=ingest.summary())


@dataclass
class FitResult:
    """The trained model (eval mode), the last logged metrics, the (step, metrics) history, and timings
    (`setup_s`: model, updater and P-POTS prepare; `train_s`: the steps; `eval_s`: eval-loss passes;
    `train_cpu_s`: CPU time of the steps, a cost that does not depend on what else the machine runs)."""

    model: torch.nn.Module
    final: dict[str, float]
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)      # digests.INIT_TAG / DATA_TAG: what pairs runs


def fit_in_process(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, data: MemoryData, *,
                   log: Optional[Callable[[int, dict[str, float]], None]] = None) -> FitResult:
    """Train `cfg.train` on `data` on the CPU of this process; `log(step, metrics)` at every logging step."""
    from mdm.platform.registry import get_registry
    from mdm.platform.train.workload import plan_steps

    t0 = time.perf_counter()
    tcfg = cfg.train
    spec = get_registry("engines").get(cfg.engine)
    total, per_epoch, _ = plan_steps(data.n_train, tcfg, 1)
    # Copies: arrays from Ray's object store are read-only, and torch warns about wrapping them.
    train = {k: torch.tensor(v) for k, v in data.train.items()}
    evals = None if data.eval is None else {k: torch.tensor(v) for k, v in data.eval.items()}
    torch.manual_seed(tcfg.seed)  # the same initial weights as a Ray Train run of this config
    model = spec.build_model(cfg.model, tcfg.model, tokenizer)
    source = MemoryBatches(train, evals, batch_size=tcfg.batch_size_per_gpu, seed=tcfg.seed)
    reporter = CallbackReporter(log)
    trainer = Trainer(model, spec.build_objective(tcfg), train_cfg=tcfg, ds_cfg=cfg.deepspeed, total_steps=total,
                      steps_per_epoch=per_epoch, source=source, reporter=reporter, device=torch.device("cpu"))
    trainer.start()
    setup_s = time.perf_counter() - t0
    trainer.train()
    final = {"step": float(total), **trainer.last}
    if trainer.state.eval_loss is not None:
        final["eval/loss"] = trainer.state.eval_loss
    trainer.module.eval()
    return FitResult(model=trainer.module, final=final, history=reporter.history,
                     timings={"setup_s": setup_s, **trainer.timings}, tags=reporter.tags_seen)
