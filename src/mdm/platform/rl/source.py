"""The Trainer's data source in `mdm rl`: rollout batches from the actor pool, as GRPO micro-batches.

    source = RolloutSource(cfg.rl, cfg.train, prompts, evals, pool=pool if rank == 0 else None, ...)
    source.bind(lambda: (trainer.state.step, trainable_weights(trainer.module)), objective.advantages)
    Trainer(model, objective, source=source, ...).train()         # the one training loop (train/trainer.py)

Rollout batch r is `rl.prompts_per_step` prompts drawn from the prompt list by a generator seeded with
(`train.seed`, r), each sampled `rl.num_generations` times with the sampling seed of (seed, r, chunk): the
stream of prompts and seeds is a function of the seed and the batch index, so a resumed run draws the same.
Rank 0 owns the pool: it pushes the learner's weights (the version is the optimizer step they are from),
sends the batch's chunks to the actors, builds the tensors and broadcasts them to the other ranks; each rank
trains on its contiguous share of the batch's rows (whole groups need not stay on one rank: advantages are
computed over the whole batch first). With `rl.max_staleness` 1, batch r + 1 is submitted as soon as batch r
is in, with the weights of that moment, so sampling overlaps learning; with 0 each batch waits for the weights
of the step that uses it. Each batch gives `rl.num_iterations` optimizer steps of `train.grad_accum`
micro-batches per rank; a resume inside a batch samples that batch again and runs its remaining iterations.

Every micro-batch carries the batch's statistics (`stats`: `rl/reward`, `rl/reward_std`, `rl/accuracy`,
`rl/pass_at_k` (a prompt counts when any of its G completions scores 1), `rl/format`, `rl/completion_len`,
`rl/staleness` (optimizer steps between the weights that sampled it and the step training on it),
`rl/weights_version`, `rl/reissued`, `rl/rollout_s`); the objective returns them as metrics, so they reach
MLflow with the loss. Every `rl.eval_steps` optimizer steps (at step 0 too) rank 0 measures held-out exact
match (`rl/eval_accuracy`, the first of G samples of `rl.eval_prompts` prompts) with the weights of that step,
logged at that step.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
import torch.distributed as dist

from mdm.platform.rl.rollouts import Chunk, ChunkResult, Pending, RolloutPool

Batch = dict[str, Any]


@dataclass
class Prompt:
    ids: list[int]
    gold: str
    text: str


@dataclass
class RolloutBatch:
    """One rollout batch, as every rank sees it: rows [N, P + T], completion mask [N, T], advantages [N]."""

    index: int
    seqs: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    prompt_len: int
    stats: dict[str, float]


class RolloutSource:
    """See the module docstring. `pool` is given on rank 0 only; `bind` before training."""

    has_eval = False

    def __init__(self, rl_cfg: Any, train_cfg: Any, prompts: list[Prompt], evals: list[Prompt], *,
                 pool: Optional[RolloutPool], device: torch.device, rank: int, world: int, pad_id: int,
                 end_id: int, gen_length: int, total_steps: int) -> None:
        self.cfg, self.train_cfg, self.prompts, self.evals, self.pool = rl_cfg, train_cfg, prompts, evals, pool
        self.device, self.rank, self.world = device, rank, world
        self.pad_id, self.end_id, self.gen_length, self.total_steps = pad_id, end_id, gen_length, total_steps
        self.pending: Optional[Pending] = None
        self.weights: Optional[Callable[[], tuple[int, dict[str, Any]]]] = None
        self.advantages: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self.log: Callable[[int, dict[str, float]], None] = lambda step, metrics: None
        self.last: list[ChunkResult] = []       # rank 0: the latest batch's results (rollout tables)
        rows = rl_cfg.rollout_size
        if rows % world or (rows // world) % train_cfg.batch_size_per_gpu or \
                rows // world // train_cfg.batch_size_per_gpu != train_cfg.grad_accum:
            raise ValueError(f"rl: a rollout batch of {rows} sequences (rl.prompts_per_step x rl.num_generations) "
                             f"must split into {world} worker(s) x train.grad_accum ({train_cfg.grad_accum}) "
                             f"micro-batches x train.batch_size_per_gpu ({train_cfg.batch_size_per_gpu})")
        if len(prompts) < rl_cfg.prompts_per_step:
            raise ValueError(f"rl: {len(prompts)} prompts in rl.split, fewer than rl.prompts_per_step "
                             f"({rl_cfg.prompts_per_step})")

    def bind(self, weights: Callable[[], tuple[int, dict[str, Any]]],
             advantages: Callable[[torch.Tensor], torch.Tensor],
             log: Optional[Callable[[int, dict[str, float]], None]] = None) -> None:
        """`weights()`: (optimizer step, trainable parameters); `advantages(rewards)`: the objective's;
        `log(step, metrics)`: where rank 0's held-out evaluations go (the reporter's `log`)."""
        self.weights, self.advantages = weights, advantages
        self.log = log or self.log

    # -- the DataSource protocol (train/trainer.py) -------------------------------------------------------
    def eval_batches(self) -> Iterable[Batch]:
        return []

    def prepare_batches(self) -> Iterable[Batch]:
        return []

    def train(self, start_epoch: int, skip: int) -> Iterator[tuple[int, Batch]]:
        mu = self.cfg.num_iterations
        r, first = divmod(skip // self.train_cfg.grad_accum, mu)
        while True:
            batch = self.batch(r)
            for j in range(first, mu):
                for m, mb in enumerate(self.micro_batches(batch)):
                    yield start_epoch, {**mb, "iteration": j - first, "iterations": mu - first,
                                        "mask_seed": self.seed(r, 10_000 + m) + first, "key": r * 100_003 + m}
            r, first = r + 1, 0

    # -- rollout batches ----------------------------------------------------------------------------------
    def seed(self, r: int, c: int) -> int:
        return (self.train_cfg.seed * 1_000_003 + r) * 65_537 + c

    def chunks(self, r: int, prompts: list[Prompt], n: Optional[int] = None) -> list[Chunk]:
        """Batch r's prompts (or the first `n` of `prompts`, one completion each), split over the actors."""
        if n is None:
            picked = random.Random(self.seed(r, 0)).sample(range(len(prompts)), self.cfg.prompts_per_step)
        else:
            picked = list(range(min(n, len(prompts))))
        k = max(1, -(-len(picked) // self.cfg.rollout_actors))
        parts = [picked[i:i + k] for i in range(0, len(picked), k)]
        return [Chunk(key=c, prompts=[prompts[i].ids for i in part], golds=[prompts[i].gold for i in part],
                      seed=self.seed(r, 1 + c), generations=None if n is None else 1)
                for c, part in enumerate(parts)]

    def push(self) -> int:
        step, weights = self.weights()
        if self.pool.version != step:
            self.pool.push(step, weights)
        return step

    def produce(self, r: int) -> tuple[list[ChunkResult], dict[str, float]]:
        """Rank 0: batch r's results (sampled now, or submitted with the previous batch) and its statistics."""
        t0 = time.perf_counter()
        step = self.push()
        if self.cfg.eval_steps and step % self.cfg.eval_steps == 0:
            self.log(step, {"rl/eval_accuracy": self.evaluate()})  # at the step of the weights it measures
        if self.pending is None:
            self.pending = self.pool.submit(self.chunks(r, self.prompts))
        pending = self.pending
        results = self.pool.collect(pending)
        self.pending = None
        next_step = (r + 1) * self.cfg.num_iterations
        if self.cfg.max_staleness and next_step < self.total_steps:
            self.pending = self.pool.submit(self.chunks(r + 1, self.prompts))  # with the weights of `step`
        extra = {"rl/staleness": float(step - pending.version), "rl/weights_version": float(pending.version),
                 "rl/reissued": float(len(pending.reissued)), "rl/rollout_s": time.perf_counter() - t0}
        return results, extra

    def evaluate(self) -> float:
        """Rank 0: held-out exact match with the newest pushed weights, one completion per prompt."""
        chunks = self.chunks(-1, self.evals, n=self.cfg.eval_prompts)
        results = self.pool.collect(self.pool.submit(chunks))
        scores = [s for res in results for s in res.scores]
        return sum(scores) / max(1, len(scores))

    def batch(self, r: int) -> RolloutBatch:
        """Batch r on every rank (collective: rank 0 samples and broadcasts)."""
        payload: list[Optional[RolloutBatch]] = [None]
        if self.rank == 0:
            results, extra = self.produce(r)
            self.last = results
            payload[0] = self.tensors(r, results, extra)
        if self.world > 1 and dist.is_initialized():
            dist.broadcast_object_list(payload, src=0)
        return payload[0]

    def tensors(self, r: int, results: list[ChunkResult], extra: dict[str, float]) -> RolloutBatch:
        g = self.cfg.num_generations
        prompts = [p for ch in self.chunks(r, self.prompts) for p in ch.prompts for _ in range(g)]
        ids = [c for res in results for c in res.ids]
        rewards = torch.tensor([x for res in results for x in res.rewards], dtype=torch.float32)
        scores = [x for res in results for x in res.scores]
        plen, t = max(len(p) for p in prompts), self.gen_length
        seqs = torch.full((len(ids), plen + t), self.end_id, dtype=torch.long)
        mask = torch.zeros((len(ids), t), dtype=torch.float32)
        for i, (p, c) in enumerate(zip(prompts, ids)):
            seqs[i, :plen - len(p)] = self.pad_id
            seqs[i, plen - len(p):plen] = torch.tensor(p, dtype=torch.long)
            c = c[:t]
            seqs[i, plen:plen + len(c)] = torch.tensor(c, dtype=torch.long)
            mask[i, :min(t, len(c) + 1)] = 1.0  # the completion and its end token
        grouped = torch.tensor(scores).view(-1, g)
        stats = {"rl/reward": float(rewards.mean()), "rl/reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
                 "rl/accuracy": float(grouped.mean()), "rl/pass_at_k": float((grouped >= 1).any(dim=1).float().mean()),
                 "rl/format": sum(f for res in results for f in res.formatted) / max(1, len(ids)),
                 "rl/completion_len": sum(len(c) for c in ids) / max(1, len(ids)), **extra}
        return RolloutBatch(index=r, seqs=seqs, completion_mask=mask, advantages=self.advantages(rewards),
                            prompt_len=plen, stats=stats)

    def micro_batches(self, batch: RolloutBatch) -> list[Batch]:
        """This rank's rows of `batch`, in micro-batches of `train.batch_size_per_gpu`."""
        n = batch.seqs.shape[0] // self.world
        bs, lo = self.train_cfg.batch_size_per_gpu, self.rank * n
        out = []
        for s in range(lo, lo + n, bs):
            cm = batch.completion_mask[s:s + bs].to(self.device)
            out.append({"input_ids": batch.seqs[s:s + bs].to(self.device), "completion_mask": cm,
                        "advantages": batch.advantages[s:s + bs].to(self.device), "prompt_len": batch.prompt_len,
                        "n_tokens": int(cm.sum()), "stats": batch.stats})
        return out
