"""Training in this process, without a Ray Train worker group: the same objective, updater and LR schedule as
the Ray Train workers, on data validated once and held in memory.

    data = load_memory_data(cfg, pad_id=tok.pad_token_id, vocab_size=len(tok))   # once (needs Ray: Ray Data)
    fit = fit_in_process(cfg, tokenizer, data, log=lambda step, metrics: ...)    # per trial, any process
    fit.model, fit.final["eval/loss"], fit.history, fit.timings["train_s"]

For small models a worker group costs more than the training (bench/tune_overhead.py: ~78% of a tiny
sweep trial is outside training), so a comparison of many short trials runs each trial here, in its Tune
trial process (`mdm.platform.tune.compare`). What is the same as on Ray Train: the validation and the
train/eval split (`ingest.build_datasets`, with the same `data.*` rules and the hash split on the base
`train.seed`), the model build (`EngineSpec.build_model` after `torch.manual_seed(train.seed)`), the
objective's `prepare` (P-POTS, on the training rows in file order) and `loss`, the updater
(`build_updater`: AdamW, clipping, `train.lr_scheduler_type`), the step plan (`driver.plan_steps`), the
eval loss (fixed noise, seed + 7) and the metrics, `diag/` window included (`step_window.py`). What differs:
one process (world size 1), and the data order, a permutation per epoch from `train.seed` and the epoch
instead of Ray Data's shuffle. Each micro-batch is cut to its longest row (padding columns dropped).
tests/platform/test_tune.py checks it against train_driver: with weights that cannot move (lr 1e-12) both
log the same eval/loss, P-POTS fit and train/lr at every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from mdm.platform.train.digests import DATA_TAG, INIT_TAG, batch_digest, weights_digest


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


def load_memory_data(cfg: Any, *, pad_id: int, vocab_size: Optional[int]) -> MemoryData:
    """Validate and split `train.train_data_path` as the Ray Train path does, then collate it in memory."""
    from mdm.platform.train.data_config import row_schema
    from mdm.platform.train.ingest import build_datasets

    tcfg = cfg.train
    ingest = build_datasets(cfg.data, train_path=tcfg.train_data_path, seed=tcfg.seed, train_ratio=tcfg.train_ratio,
                            max_len=tcfg.max_len, batch_size=tcfg.batch_size_per_gpu, pad_id=pad_id,
                            vocab_size=vocab_size)
    collate = row_schema(cfg.data).collate

    def arrays(rows: Any) -> dict[str, np.ndarray]:
        rows = [{"input_ids": list(r["input_ids"]), "prompt_length": int(r["prompt_length"])} for r in rows.take_all()]
        return collate(rows, pad_id=pad_id)

    return MemoryData(train=arrays(ingest.train_rows), eval=arrays(ingest.eval_rows) if ingest.n_eval else None,
                      summary=ingest.summary())


@dataclass
class FitResult:
    """The trained model (eval mode), the last logged metrics, the (step, metrics) history, and timings
    (`setup_s`: model, updater and P-POTS prepare; `train_s`: the steps; `eval_s`: eval-loss passes;
    `train_cpu_s`: CPU time of the steps, a cost that does not depend on what else the machine runs)."""

    model: Any
    final: dict[str, float]
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)      # digests.INIT_TAG / DATA_TAG: what pairs runs


def _batches(data: dict[str, torch.Tensor], size: int, order: Optional[torch.Tensor] = None
             ) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches of `size` rows (in `order`, else file order), each cut to its longest row."""
    n = len(data["input_ids"])
    idx_all = torch.arange(n) if order is None else order
    for i in range(0, n - (n % size if order is not None else 0), size):
        idx = idx_all[i:i + size]
        mb = {k: v[idx] for k, v in data.items()}
        width = int(mb["attention_mask"].sum(1).max())
        yield {k: v[:, :width] for k, v in mb.items()}


def _eval_loss(objective: Any, model: Any, data: dict[str, torch.Tensor], size: int, seed: int) -> float:
    """Mean eval loss over the eval rows' micro-batches (fixed noise, as the Ray worker's `_evaluate`)."""
    gen = torch.Generator().manual_seed(seed + 7)
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for mb in _batches(data, size):
            total += float(objective.eval_loss(model, mb, gen)[0])
            n += 1
    model.train()
    return total / max(n, 1)


def fit_in_process(cfg: Any, tokenizer: Any, data: MemoryData, *,
                   log: Optional[Callable[[int, dict[str, float]], None]] = None) -> FitResult:
    """Train `cfg.train` on `data` on the CPU of this process; `log(step, metrics)` at every logging step."""
    from mdm.platform.registry import get_registry
    from mdm.platform.train.driver import plan_steps
    from mdm.platform.train.step_window import StepWindow
    from mdm.platform.train.updater import build_updater
    from mdm.platform.train.worker import due

    t0 = time.perf_counter()
    tcfg = cfg.train
    spec = get_registry("engines").get(cfg.engine)
    total, per_epoch, _ = plan_steps(data.n_train, tcfg, 1)
    # Copies: arrays from Ray's object store are read-only, and torch warns about wrapping them.
    train = {k: torch.tensor(v) for k, v in data.train.items()}
    evals = None if data.eval is None else {k: torch.tensor(v) for k, v in data.eval.items()}
    torch.manual_seed(tcfg.seed)  # the same initial weights as a Ray Train run of this config
    model = spec.build_model(cfg.model, tcfg.model, tokenizer)
    model.train()
    tags = {INIT_TAG: weights_digest(model)}
    updater = build_updater(model, cfg.deepspeed, tcfg, total_steps=total, world_size=1, on_gpu=False)
    objective = spec.build_objective(tcfg)
    gen = torch.Generator().manual_seed(tcfg.seed)
    prepared = objective.prepare(updater.module, _batches(train, tcfg.batch_size_per_gpu), "cpu") or {}
    timings = {"setup_s": time.perf_counter() - t0, "train_s": 0.0, "eval_s": 0.0, "train_cpu_s": 0.0}
    if log and prepared:
        log(0, prepared)

    def epoch_stream() -> Iterator[dict[str, torch.Tensor]]:
        epoch = 0
        while True:
            order = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(tcfg.seed * 1000 + epoch))
            yield from _batches(train, tcfg.batch_size_per_gpu, order)
            epoch += 1

    stream, window, history = epoch_stream(), StepWindow(), []
    losses, tokens, t_window = [], 0, time.perf_counter()
    final: dict[str, float] = {}
    eval_loss: Optional[float] = None
    for step in range(1, total + 1):
        t_step, c_step = time.perf_counter(), time.process_time()
        for _ in range(tcfg.grad_accum):
            mb = next(stream)
            if not losses and step == 1:
                tags[DATA_TAG] = batch_digest(mb)
            tokens += int(mb["attention_mask"].sum())
            loss, metrics = objective.loss(updater.module, mb, gen)
            window.add_micro(metrics)
            updater.backward(loss)
            updater.step()
            losses.append(float(loss.detach()))
        window.add_step(updater.grad_norm)
        timings["train_s"] += time.perf_counter() - t_step
        timings["train_cpu_s"] += time.process_time() - c_step
        last = step == total
        do_eval = evals is not None and tcfg.eval_strategy != "no" and (
            last or due(tcfg.eval_strategy, step, tcfg.eval_steps, per_epoch))
        if not (last or do_eval or step % tcfg.logging_steps == 0):
            continue
        dt = time.perf_counter() - t_window
        out = {"train/loss": sum(losses) / len(losses), "train/lr": updater.lr, "train/grad_norm": updater.grad_norm,
               "train/tokens_per_s": tokens / max(dt, 1e-9), **window.flush(objective)}
        if do_eval:
            te = time.perf_counter()
            eval_loss = _eval_loss(objective, updater.module, evals, tcfg.batch_size_per_gpu, tcfg.seed)
            timings["eval_s"] += time.perf_counter() - te
            out["eval/loss"] = eval_loss
        history.append((step, out))
        final = {**out, **({"eval/loss": eval_loss} if eval_loss is not None else {})}
        if log:
            log(step, out)
        losses, tokens, t_window = [], 0, time.perf_counter()
    model.eval()
    return FitResult(model=updater.module, final={"step": float(total), **final}, history=history, timings=timings,
                     tags=tags)
