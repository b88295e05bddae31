"""The one training loop: `Trainer` steps an engine's objective for every caller (the Ray Train worker, an
in-process comparison trial, the arithmetic demo), with its data source and reporter passed in.

    trainer = Trainer(model, objective, train_cfg=cfg.train, ds_cfg=cfg.deepspeed, total_steps=100,
                      steps_per_epoch=25, source=MemoryBatches(train, evals, batch_size=8, seed=42),
                      reporter=CallbackReporter(log), device=torch.device("cpu"))
    trainer.fit()                       # = trainer.start(); trainer.train()
    trainer.start(checkpoint)           # restore a ray.train.Checkpoint (or run the objective's `prepare`)
    trainer.train()                     # step -> maybe_reestimate -> maybe_log (evaluate, save) until total_steps
    trainer.export(tokenizer, "outputs/run/final", zero_stage=0)      # save_pretrained on rank 0 (checkpoint.py)

The source (sources.py: Ray Data shards or in-memory tensors) gives (epoch, micro-batch) pairs from a data
position, the eval micro-batches and the rows the objective's `prepare` reads; the reporter
(reporters.py, worker.py) receives the attempt's start, the parameter counts and P-POTS results at step 0
(`model/params_total`, `model/params_trainable`: with LoRA only the adapters train), digest tags and a
metrics dict at each logging step, with a thunk that writes a checkpoint when one is due. What the loop does, in order:
`train.grad_accum` micro-batches per optimizer step through the updater (`updater.py`: DeepSpeed or plain
torch, AdamW, clipping, `train.lr_scheduler_type`); the objective's re-estimation (P-POTS); and at a
logging step (every `train.logging_steps`, at an eval or a save, and at the last step) the metrics:
`step`, `epoch`, `total_steps`, `train/loss`, `train/lr`, `train/grad_norm`, `train/tokens_per_s`,
`train/data_wait_fraction` (averaged over ranks), the `diag/` window (step_window.py) and `eval/loss`.
Evals follow `train.eval_strategy` (and the last step); saves follow `train.save_strategy` when the reporter
keeps checkpoints, never at the last step (the caller's final report carries the last checkpoint).
The objective's noise comes from one generator seeded `train.seed + 1_000_003 * rank`, the eval noise from a
fresh one seeded `train.seed + 7 + 1_000_003 * rank` at each evaluation, so evaluations are comparable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Protocol

import torch
import torch.distributed as dist

from mdm.platform.engine_api import BaseTrainConfig
from mdm.platform.train.adapters import param_counts
from mdm.platform.train.checkpoint import TrainState, export_hf, restore_checkpoint, save_checkpoint
from mdm.platform.train.deepspeed_config import DeepSpeedConfig
from mdm.platform.train.digests import DATA_TAG, INIT_TAG, batch_digest, weights_digest
from mdm.platform.train.step_window import StepWindow
from mdm.platform.train.updater import build_updater

if TYPE_CHECKING:
    from ray.train import Checkpoint
    from transformers import PreTrainedTokenizerBase

Batch = dict[str, torch.Tensor]        # input_ids, labels, attention_mask [B, L] (train: maybe n_tokens)
Metrics = dict[str, float]
RANK_SEED = 1_000_003                  # rank r's generators are seeded seed + RANK_SEED * r
EVAL_SEED = 7                          # eval noise: seed + EVAL_SEED (+ RANK_SEED * r)


class Objective(Protocol):
    """What an engine's `build_objective` returns (engine_api.EngineSpec)."""

    def prepare(self, model: torch.nn.Module, batches: Iterable[Batch], device: torch.device) -> Optional[Metrics]: ...
    def maybe_reestimate(self, step: int, model: torch.nn.Module, batches: Iterable[Batch],
                         device: torch.device) -> Optional[Metrics]: ...
    def loss(self, model: torch.nn.Module, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, Metrics]: ...
    def eval_loss(self, model: torch.nn.Module, batch: Batch,
                  generator: torch.Generator) -> tuple[torch.Tensor, Metrics]: ...


class DataSource(Protocol):
    """Where a Trainer's micro-batches come from (sources.py; `mdm rl`'s rollouts, rl/source.py). A source
    whose stream is not a function of the position alone also has `state_dict()` / `load_state_dict(state)`
    (plain data), saved in rank 0's checkpoint beside the objective's (checkpoint.py)."""

    has_eval: bool

    def train(self, start_epoch: int, skip: int) -> Iterator[tuple[int, Batch]]:
        """(epoch, micro-batch) from `start_epoch` on, its first `skip` micro-batches left out."""
    def eval_batches(self) -> Iterable[Batch]: ...
    def prepare_batches(self) -> Iterable[Batch]: ...


class Reporter(Protocol):
    """Where a Trainer's results go (reporters.py; the Ray Train worker's in worker.py)."""

    keeps_checkpoints: bool          # False: `train.save_strategy` never applies
    stopping: bool                   # True: stop after this report (a graceful stop: train/stop.py)

    def begin(self, kept_through: Optional[int]) -> None:
        """An attempt starts: from the checkpoint of step `kept_through`, or from scratch (None)."""
    def log(self, step: int, metrics: Metrics) -> None:
        """The objective's `prepare` (step 0) and re-estimation results."""
    def tags(self, tags: dict[str, str]) -> None: ...
    def report(self, metrics: Metrics, save: Optional[Callable[[], Checkpoint]], final: bool) -> None:
        """A logging step's metrics (`step` among them); `save` writes a checkpoint when one is due."""


def due(strategy: str, step: int, every: Optional[int], steps_per_epoch: int) -> bool:
    """Whether an eval/save with `strategy` ("steps": every `every` steps, "epoch": at each epoch's end,
    "no" / "last": never) falls on optimizer step `step`."""
    if strategy == "steps":
        return step % int(every or 1) == 0
    if strategy == "epoch":
        return step % max(1, steps_per_epoch) == 0
    return False


def sum_over_ranks(values: list[float], world: int) -> list[float]:
    """`values` summed over the ranks of the process group (itself with one rank)."""
    if world == 1 or not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def eval_loss(objective: Objective, model: torch.nn.Module, batches: Iterable[Batch], generator: torch.Generator,
              world: int = 1) -> float:
    """Mean eval loss over this rank's eval micro-batches, averaged over ranks (every rank calls it); NaN when no
    rank had an eval micro-batch (never a made-up 0)."""
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for mb in batches:
            mb = {k: v for k, v in mb.items() if k != "n_tokens"}
            total += float(objective.eval_loss(model, mb, generator)[0])
            n += 1
    model.train()
    total, n = sum_over_ranks([total, float(n)], world)
    return total / n if n else float("nan")


@dataclass
class _Window:
    """Sums over the steps since the last logging step (this rank)."""

    loss: float = 0.0
    n: int = 0
    tokens: int = 0
    wait: float = 0.0       # seconds waiting for data
    time: float = 0.0       # seconds in steps


class Trainer:
    """See the module docstring. `state` (TrainState), `timings` (train_s, train_cpu_s, eval_s), `last` (the
    last report's metrics with a `/`) and `init_digest` (rank 0) are read by callers after training."""

    def __init__(self, model: torch.nn.Module, objective: Objective, *, train_cfg: BaseTrainConfig,
                 ds_cfg: DeepSpeedConfig, total_steps: int, steps_per_epoch: int, source: DataSource,
                 reporter: Reporter, device: torch.device, rank: int = 0, world: int = 1) -> None:
        self.cfg, self.objective, self.source, self.reporter = train_cfg, objective, source, reporter
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.device, self.rank, self.world = device, rank, world
        model.train()
        self.init_digest = weights_digest(model) if rank == 0 else None  # before DeepSpeed touches the weights
        self.param_counts = param_counts(model)  # before ZeRO-3 partitions them
        self.updater = build_updater(model, ds_cfg, train_cfg, total_steps=total_steps, world_size=world,
                                     on_gpu=device.type == "cuda")
        self.generator = torch.Generator(device=device).manual_seed(train_cfg.seed + RANK_SEED * rank)
        self.state = TrainState()
        self.window, self.diag = _Window(), StepWindow()
        self.timings = {"train_s": 0.0, "eval_s": 0.0, "train_cpu_s": 0.0}
        self.last: Metrics = {}

    @property
    def module(self) -> torch.nn.Module:
        return self.updater.module

    # -- before the steps ---------------------------------------------------------------------------
    def fit(self) -> None:
        """From scratch to `total_steps` (no checkpoint to restore)."""
        self.start()
        self.train()

    def start(self, checkpoint: Optional[Checkpoint] = None) -> None:
        """Restore `checkpoint` (counters, data position, RNGs, updater, objective), else run `prepare`."""
        if checkpoint is not None:
            self.state = restore_checkpoint(checkpoint, self.updater, self.objective, rank=self.rank,
                                            generator=self.generator, source=self.source)
        self.reporter.begin(self.state.step if checkpoint is not None else None)
        if checkpoint is None:
            self.prepare()

    def prepare(self) -> None:
        """The objective's estimation before training (P-POTS: fit p(t)); its metrics and the parameter counts
        are logged at step 0."""
        metrics = self.objective.prepare(self.module, self.source.prepare_batches(), self.device) or {}
        self.reporter.log(0, {**self.param_counts, **metrics})
        if self.init_digest is not None:
            self.reporter.tags({INIT_TAG: self.init_digest})

    # -- the steps ----------------------------------------------------------------------------------
    def train(self) -> None:
        """Step from the current data position until `total_steps` (or the reporter says it is stopping)."""
        stream = self.source.train(self.state.epoch, self.state.microbatches)
        while self.state.step < self.total_steps and not self.reporter.stopping:
            self.step(stream)
            self.maybe_reestimate()
            self.maybe_log()

    def step(self, stream: Iterator[tuple[int, Batch]]) -> None:
        """One optimizer step: `train.grad_accum` micro-batches of loss, backward and updater step."""
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(self.cfg.grad_accum):
            mb = self._next_micro(stream)
            loss, metrics = self.objective.loss(self.module, mb, self.generator)
            self.diag.add_micro(metrics)
            self.updater.backward(loss)
            self.updater.step()
            self.window.loss += float(loss.detach())
            self.window.n += 1
        self.diag.add_step(self.updater.grad_norm)
        self.state.step += 1
        self.window.time += time.perf_counter() - t0
        self.timings["train_s"] += time.perf_counter() - t0
        self.timings["train_cpu_s"] += time.process_time() - c0

    def _next_micro(self, stream: Iterator[tuple[int, Batch]]) -> Batch:
        """The next micro-batch, with the data position, token count and wait time kept."""
        tw = time.perf_counter()
        item = next(stream, None)
        self.window.wait += time.perf_counter() - tw
        st = self.state
        if item is None:
            raise RuntimeError(f"rank {self.rank}: the training data ran out at step {st.step} of "
                               f"{self.total_steps} (epoch {st.epoch}, micro-batch {st.microbatches})")
        epoch, mb = item
        if epoch != st.epoch:
            st.epoch, st.microbatches = epoch, 0
        n_tokens = mb.pop("n_tokens", None)  # precomputed by Ray Data ingest; else counted here
        self.window.tokens += int(n_tokens if n_tokens is not None else mb["attention_mask"].sum())
        if self.rank == 0 and st.step == 0 and st.microbatches == 0:
            self.reporter.tags({DATA_TAG: batch_digest(mb)})
        st.microbatches += 1
        return mb

    def maybe_reestimate(self) -> None:
        """The objective's periodic re-estimation (P-POTS `train.ppots_reestimate_steps`); collective."""
        metrics = self.objective.maybe_reestimate(self.state.step, self.module, self.source.prepare_batches(),
                                                  self.device)
        if metrics:
            self.reporter.log(self.state.step, metrics)

    # -- logging, evaluation, checkpoints -----------------------------------------------------------
    def maybe_log(self) -> None:
        """At a logging step: report the window's metrics, with `eval/loss` and a checkpoint when due."""
        step, cfg = self.state.step, self.cfg
        final = step == self.total_steps
        scored = self.source.has_eval and cfg.eval_strategy != "no"
        do_eval = scored and (final or due(cfg.eval_strategy, step, cfg.eval_steps, self.steps_per_epoch))
        do_save = self.reporter.keeps_checkpoints and cfg.save_strategy != "no" and not final and due(
            cfg.save_strategy, step, cfg.save_steps, self.steps_per_epoch)
        if not (final or do_eval or do_save or step % cfg.logging_steps == 0):
            return
        metrics = self.window_metrics()
        if do_eval or (do_save and scored and self.state.eval_loss is None):  # a checkpoint's score is its eval loss
            self.evaluate()
        if do_eval or (do_save and scored):
            metrics["eval/loss"] = self.state.eval_loss
        self.last = {k: v for k, v in metrics.items() if "/" in k}
        self.reporter.report(metrics, self.save if do_save else None, final)

    def window_metrics(self) -> Metrics:
        """The metrics of the steps since the last logging step (averaged over ranks), then a new window."""
        w, world = self.window, self.world
        loss, tokens, wait, dt = sum_over_ranks([w.loss / max(w.n, 1), w.tokens, w.wait, w.time], world)
        loss, tokens, wait, dt = loss / world, tokens / world, wait / world, dt / world
        metrics: Metrics = {
            "step": self.state.step, "epoch": self.state.epoch, "total_steps": self.total_steps,
            "train/loss": loss, "train/lr": self.updater.lr, "train/grad_norm": self.updater.grad_norm,
            "train/tokens_per_s": tokens * world / max(dt, 1e-9), "train/data_wait_fraction": wait / max(dt, 1e-9)}
        self.window = _Window()
        metrics.update(self.diag.flush(self.objective))
        return metrics

    def evaluate(self) -> float:
        """The eval loss with fixed noise (`seed + 7`, per rank), kept in `state.eval_loss`; collective."""
        t0 = time.perf_counter()
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed + EVAL_SEED + RANK_SEED * self.rank)
        self.state.eval_loss = eval_loss(self.objective, self.module, self.source.eval_batches(), gen, self.world)
        self.timings["eval_s"] += time.perf_counter() - t0
        return self.state.eval_loss

    def save(self) -> Checkpoint:
        """This rank's checkpoint (updater, objective, counters, RNGs, the source's state) in a temp dir;
        collective."""
        return save_checkpoint(self.updater, self.objective, self.state, rank=self.rank, generator=self.generator,
                               source=self.source)

    def export(self, tokenizer: Optional[PreTrainedTokenizerBase], out_dir: str, zero_stage: int,
               merge_lora: bool = False) -> str:
        """`save_pretrained` the model (+ tokenizer) into `out_dir` (or a URI); returns the local copy. With
        adapters: PEFT's adapter directory, and with `merge_lora` the merged model in `<out_dir>/merged`."""
        return export_hf(self.updater, tokenizer, out_dir, rank=self.rank, zero_stage=zero_stage,
                         merge_lora=merge_lora)
