"""The Trainer's data source in `mdm rl`: rollout batches from the actor pool, as GRPO micro-batches.

    source = RolloutSource(cfg.rl, cfg.train, prompts, evals, pool=pool if rank == 0 else None, ...)
    source.bind(lambda: trainer.state.step, lambda: learner_weights(trainer.module), objective.advantages)
    Trainer(model, objective, source=source, ...).train()         # the one training loop (train/trainer.py)

Rollout batch r is `rl.prompts_per_step` prompts drawn from the prompt list by a generator seeded with
(`train.seed`, r), each sampled `rl.num_generations` times with the sampling seed of (seed, r, chunk): the
stream of prompts and seeds is a function of the seed and the batch index, so a resumed run draws the same.
Rank 0 owns the pool: it pushes the learner's weights (the version is the optimizer step they are from),
sends the batch's chunks to the actors, builds the tensors and broadcasts them to the other ranks; each rank
trains on its contiguous share of the batch's rows (whole groups need not stay on one rank: advantages are
computed over the whole batch first). With `rl.max_staleness` 1, batch r + 1 is submitted as soon as batch r
is in, with the weights of that moment, so sampling overlaps learning; with 0 each batch waits for the weights
of the step that uses it. A batch splits into `train.grad_accum` micro-batches of `train.batch_size_per_gpu`
rows per rank (the driver checks it: rl.driver.check_rl) and gives `rl.num_iterations` optimizer steps. A
checkpoint holds the batches already sampled (`state_dict`: the newest one, and the one submitted ahead of it,
collected then), so a resumed learner trains on the rollout stream of an uninterrupted run: a resume inside a
batch runs its remaining iterations on it as it was, and a batch sampled one step behind keeps its samples.

Every micro-batch carries the batch's statistics (`stats`: `rl/reward`, `rl/reward_std`, `rl/accuracy`,
`rl/pass_at_k` (a prompt counts when any of its G completions scores 1), `rl/format`, `rl/completion_len`,
`rl/staleness` (optimizer steps between the weights that sampled it and the step training on it),
`rl/weights_version`, `rl/reissued`, `rl/rollout_s`); the objective returns them as metrics, so they reach
MLflow with the loss. Every `rl.eval_steps` optimizer steps (at step 0 too) rank 0 measures held-out exact
match (`rl/eval_accuracy`, one sample for each of `rl.eval_prompts` prompts) with the weights of that step,
logged at that step; every `rl.table_steps` steps the batch's rollout table (prompt, gold, completion, reward,
score, weights version, sampler, actor per completion) goes to `table`.
"""

from __future__ import annotations

import dataclasses
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
    """One rollout batch, as every rank sees it: its rows (`rollout_rows`), advantages [N], statistics."""

    index: int
    rows: dict[str, Any]            # rollout_rows: input_ids, completion_mask, prompt_len (+ padding)
    advantages: torch.Tensor
    stats: dict[str, float]


def rollout_rows(prompts: list[list[int]], completions: list[list[int]], pad_id: int, end_id: int,
                 gen_length: int) -> dict[str, Any]:
    """The learner's rows of sampled completions: {"input_ids" [N, P + T], "completion_mask" [N, T],
    "prompt_len": P, and with padding "attention_mask" and "position_ids" [N, P + T]}. Prompts are left-padded
    with `pad_id` to the longest, P, laid out as the samplers lay out a padded batch (padding not attended, a
    row's positions counted from its first real token), so a row is scored as it was sampled; each completion
    (cut at its end token by the generation path) is followed by `end_id` up to T = `gen_length`, as the
    sampler filled its window, and its mask covers the completion and its first end token."""
    plen, t = max(len(p) for p in prompts), gen_length
    seqs = torch.full((len(completions), plen + t), end_id, dtype=torch.long)
    mask = torch.zeros((len(completions), t), dtype=torch.float32)
    lengths = torch.tensor([len(p) for p in prompts])
    for i, (p, c) in enumerate(zip(prompts, completions)):
        seqs[i, :plen - len(p)] = pad_id
        seqs[i, plen - len(p):plen] = torch.tensor(p, dtype=torch.long)
        c = c[:t]
        seqs[i, plen:plen + len(c)] = torch.tensor(c, dtype=torch.long)
        mask[i, :min(t, len(c) + 1)] = 1.0
    rows: dict[str, Any] = {"input_ids": seqs, "completion_mask": mask, "prompt_len": plen}
    if bool((lengths < plen).any()):
        real = torch.arange(plen + t)[None, :] >= (plen - lengths)[:, None]
        rows["attention_mask"] = real.long()
        rows["position_ids"] = (real.long().cumsum(1) - 1).clamp(min=0)
    return rows


class RolloutSource:
    """See the module docstring. `pool` is given on rank 0 only; `bind` before training."""

    has_eval = False

    def __init__(self, rl_cfg: Any, train_cfg: Any, prompts: list[Prompt], evals: list[Prompt], *,
                 pool: Optional[RolloutPool], device: torch.device, rank: int, world: int, pad_id: int,
                 end_id: int, gen_length: int, total_steps: int) -> None:
        self.cfg, self.train_cfg, self.prompts, self.evals, self.pool = rl_cfg, train_cfg, prompts, evals, pool
        self.device, self.rank, self.world = device, rank, world
        self.pad_id, self.end_id, self.gen_length, self.total_steps = pad_id, end_id, gen_length, total_steps
        self.pending: Optional[Pending] = None  # the next batch, submitted ahead (rl.max_staleness 1)
        self.last: Optional[tuple[int, list[ChunkResult], dict[str, float]]] = None  # the newest batch produced
        self.ahead: dict[int, tuple[list[ChunkResult], int, list[int]]] = {}  # sampled, not yet trained on
        self.restored: dict[int, tuple[list[ChunkResult], dict[str, float]]] = {}  # from a checkpoint
        self.step: Optional[Callable[[], int]] = None
        self.weights: Optional[Callable[[], dict[str, Any]]] = None
        self.collective = False  # weights() gathers partitioned parameters (ZeRO-3): every rank calls it
        self.advantages: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self.log: Callable[[int, dict[str, float]], None] = lambda step, metrics: None
        self.table: Callable[[int, list[dict[str, Any]]], None] = lambda step, records: None
        if len(prompts) < rl_cfg.prompts_per_step:
            raise ValueError(f"rl: {len(prompts)} prompts in rl.split, fewer than rl.prompts_per_step "
                             f"({rl_cfg.prompts_per_step})")

    def bind(self, step: Callable[[], int], weights: Callable[[], dict[str, Any]],
             advantages: Callable[[torch.Tensor], torch.Tensor],
             log: Optional[Callable[[int, dict[str, float]], None]] = None,
             table: Optional[Callable[[int, list[dict[str, Any]]], None]] = None, collective: bool = False) -> None:
        """`step()`: the learner's optimizer step; `weights()`: its trainable state (copied only when the
        actors need a new version; with `collective`, a call every rank makes at once, as DeepSpeed ZeRO-3's
        gathering of partitioned parameters is); `advantages(rewards)`: the objective's;
        `log(step, metrics)`: where rank 0's held-out evaluations go (the reporter's `log`); `table(step,
        records)`: where rank 0's rollout tables go (every `rl.table_steps` steps)."""
        self.step, self.weights, self.advantages = step, weights, advantages
        self.log, self.table = log or self.log, table or self.table
        self.collective = collective

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
                      seed=self.seed(r, 1 + c), generations=None if n is None else 1,
                      texts=[prompts[i].text for i in part]) for c, part in enumerate(parts)]

    def publish(self, r: Optional[int] = None) -> None:
        """Every rank: the learner's weights to the actors (rank 0 pushes them) when they hold an older version
        and batch `r` (None: a held-out evaluation) is not restored from a checkpoint. Rank 0 decides; with
        `collective` weights it tells the other ranks, which take part in gathering them."""
        step = self.step()
        need = self.rank == 0 and r not in self.restored and self.pool.version != step
        if self.collective and self.world > 1 and dist.is_initialized():
            flag = [need]
            dist.broadcast_object_list(flag, src=0)
            need = bool(flag[0])
        if need:
            weights = self.weights()
            if self.rank == 0:
                self.pool.push(step, weights)

    def produce(self, r: int) -> tuple[list[ChunkResult], dict[str, float]]:
        """Rank 0: batch r's results (sampled now, submitted with the previous batch, or restored from a
        checkpoint) and its statistics."""
        if r in self.restored:  # a resume inside batch r: the batch as it was trained on
            results, extra = self.restored.pop(r)
            self.last = (r, results, extra)
            return results, extra
        t0 = time.perf_counter()
        step = self.step()  # the actors hold its weights (`publish`, before)
        if self.cfg.eval_steps and step % self.cfg.eval_steps == 0:
            self.log(step, {"rl/eval_accuracy": self.evaluate()})  # at the step of the weights it measures
        results, version, reissued = self.sampled(r)
        if self.cfg.table_steps and step % self.cfg.table_steps == 0:
            self.table(step, self.records(self.chunks(r, self.prompts), results))
        next_step = (r + 1) * self.cfg.num_iterations
        if self.cfg.max_staleness and next_step < self.total_steps:
            self.pending = self.pool.submit(self.chunks(r + 1, self.prompts))  # with the weights of `step`
        extra = {"rl/staleness": float(step - version), "rl/weights_version": float(version),
                 "rl/reissued": float(len(reissued)), "rl/rollout_s": time.perf_counter() - t0}
        self.last = (r, results, extra)
        return results, extra

    def sampled(self, r: int) -> tuple[list[ChunkResult], int, list[int]]:
        """Batch r's results, weights version and re-issued chunk keys: collected from the actors (submitted
        now, or with the previous batch), or restored from a checkpoint."""
        if r in self.ahead:
            return self.ahead.pop(r)
        if self.pending is None:
            self.pending = self.pool.submit(self.chunks(r, self.prompts))
        pending, self.pending = self.pending, None
        return self.pool.collect(pending), pending.version, pending.reissued

    # -- checkpoints (rank 0; train/checkpoint.py saves and restores them with the objective's state) ------
    def state_dict(self) -> dict[str, Any]:
        """The sampled batches a resumed run must train on unchanged, so that it sees the rollout stream of an
        uninterrupted run: the newest batch (a checkpoint inside it resumes there) and the one submitted ahead
        of it (`rl.max_staleness` 1: sampled with the previous weights; collected now)."""
        if self.pending is not None:
            r = self.last[0] + 1 if self.last else 0
            pending, self.pending = self.pending, None
            self.ahead[r] = (self.pool.collect(pending), pending.version, pending.reissued)
        last = None if self.last is None else {"index": self.last[0], "extra": self.last[2],
                                               "results": [dataclasses.asdict(x) for x in self.last[1]]}
        ahead = [{"index": r, "version": v, "reissued": list(k), "results": [dataclasses.asdict(x) for x in res]}
                 for r, (res, v, k) in self.ahead.items()]
        return {"last": last, "ahead": ahead}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("last"):
            last = state["last"]
            self.restored[last["index"]] = ([ChunkResult(**x) for x in last["results"]], last["extra"])
        for a in state.get("ahead", []):
            self.ahead[a["index"]] = ([ChunkResult(**x) for x in a["results"]], a["version"], a["reissued"])

    def records(self, chunks: list[Chunk], results: list[ChunkResult]) -> list[dict[str, Any]]:
        """The rollout table of one batch: a row per completion."""
        g = self.cfg.num_generations
        return [{"prompt": ch.texts[i // g] if ch.texts else "", "gold": ch.golds[i // g], "completion": text,
                 "reward": res.rewards[i], "score": res.scores[i], "weights_version": res.version,
                 "sampler": res.sampler, "actor": res.actor}
                for ch, res in zip(chunks, results) for i, text in enumerate(res.texts)]

    def evaluate(self) -> float:
        """Rank 0: held-out exact match with the newest pushed weights, one completion per prompt (sampled
        as the rollouts are, with the `sampler` section)."""
        chunks = self.chunks(-1, self.evals, n=self.cfg.eval_prompts)
        results = self.pool.collect(self.pool.submit(chunks))
        scores = [s for res in results for s in res.scores]
        return sum(scores) / max(1, len(scores))

    def batch(self, r: int) -> RolloutBatch:
        """Batch r on every rank (collective: rank 0 samples and broadcasts)."""
        payload: list[Optional[RolloutBatch]] = [None]
        self.publish(r)
        if self.rank == 0:
            results, extra = self.produce(r)
            payload[0] = self.tensors(r, results, extra)
        if self.world > 1 and dist.is_initialized():
            dist.broadcast_object_list(payload, src=0)
        return payload[0]

    def tensors(self, r: int, results: list[ChunkResult], extra: dict[str, float]) -> RolloutBatch:
        g = self.cfg.num_generations
        prompts = [p for ch in self.chunks(r, self.prompts) for p in ch.prompts for _ in range(g)]
        ids = [c for res in results for c in res.ids]
        rewards = torch.tensor([x for res in results for x in res.rewards], dtype=torch.float32)
        grouped = torch.tensor([x for res in results for x in res.scores]).view(-1, g)
        rows = rollout_rows(prompts, ids, self.pad_id, self.end_id, self.gen_length)
        stats = {"rl/reward": float(rewards.mean()), "rl/reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
                 "rl/accuracy": float(grouped.mean()), "rl/pass_at_k": float((grouped >= 1).any(dim=1).float().mean()),
                 "rl/format": sum(f for res in results for f in res.formatted) / max(1, len(ids)),
                 "rl/completion_len": sum(len(c) for c in ids) / max(1, len(ids)), **extra}
        return RolloutBatch(index=r, rows=rows, advantages=self.advantages(rewards), stats=stats)

    def micro_batches(self, batch: RolloutBatch) -> list[Batch]:
        """This rank's rows of `batch`, in micro-batches of `train.batch_size_per_gpu`."""
        n = batch.advantages.shape[0] // self.world
        bs, lo = self.train_cfg.batch_size_per_gpu, self.rank * n
        tensors = {k: v for k, v in batch.rows.items() if isinstance(v, torch.Tensor)}
        out = []
        for s in range(lo, lo + n, bs):
            mb = {k: v[s:s + bs].to(self.device) for k, v in tensors.items()}
            out.append({**mb, "advantages": batch.advantages[s:s + bs].to(self.device),
                        "prompt_len": batch.rows["prompt_len"], "n_tokens": int(mb["completion_mask"].sum()),
                        "stats": batch.stats})
        return out
