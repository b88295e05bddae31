"""The one Trainer (mdm.platform.train.trainer) on a tiny LLaDA in this process, no Ray: in-memory batches and a
reporter that records what it is given.

- its first steps' losses and final weights equal a hand-written reference: the objective's loss on the same
  micro-batches (the documented order: a permutation per epoch from seed * 1000 + epoch, cut to the longest
  row), the loss divided by grad_accum, gradient clipping and torch's AdamW at a constant rate;
- the steps it reports, evaluates at and offers a checkpoint at follow `train.logging_steps`,
  `train.eval_strategy` / `eval_steps` and `train.save_strategy` / `save_steps` (a checkpoint's step carries
  an eval loss, evaluated then if none exists yet; the last step reports, evaluates and is never saved);
- the digests it tags are those of the initial weights and of the first micro-batch, and it logs the
  parameter counts at step 0;
- a reporter that keeps no checkpoints is never offered one.

    pytest tests/platform/train/test_trainer.py -q          # a few seconds
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mdm.platform.config import load_config
from mdm.platform.train.digests import DATA_TAG, INIT_TAG, batch_digest, weights_digest
from mdm.platform.train.sources import MemoryBatches
from mdm.platform.train.trainer import Trainer

VOCAB, MASK, SEED, N_TRAIN, BS = 40, 39, 3, 24, 4
TINY = ["model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.mlp_hidden_size=32",
        f"model.vocab_size={VOCAB}", f"model.mask_token_id={MASK}", "model.eos_token_id=2", "model.pad_token_id=0",
        "model.max_sequence_length=32", "deepspeed.enabled=false", f"train.seed={SEED}",
        f"train.batch_size_per_gpu={BS}", "train.lr_scheduler_type=constant", "train.warmup_steps=0"]


class ListReporter:
    """Records everything a Trainer reports (and, when it keeps checkpoints, which steps offered a save)."""

    stopping = False

    def __init__(self, keeps_checkpoints: bool = True) -> None:
        self.keeps_checkpoints = keeps_checkpoints
        self.begun, self.logged, self.tags_seen, self.reports = [], [], {}, []

    def begin(self, kept_through):
        self.begun.append(kept_through)

    def log(self, step, metrics):
        self.logged.append((step, metrics))

    def tags(self, tags):
        self.tags_seen.update(tags)

    def report(self, metrics, save, final):
        self.reports.append((dict(metrics), save is not None, final))


class CountingObjective:
    """The real objective, counting eval passes (one per evaluation: the first eval micro-batch's call)."""

    def __init__(self, inner) -> None:
        self.inner, self.eval_calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def eval_loss(self, model, batch, generator):
        self.eval_calls += 1
        return self.inner.eval_loss(model, batch, generator)


def rows(n: int, seed: int) -> dict[str, torch.Tensor]:
    """`n` random rows (prompt of 2-4 tokens, response of 2-9), collated as the processed-JSONL schema does."""
    from mdm.tasks.data import collate

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        plen, rlen = int(torch.randint(2, 5, (1,), generator=g)), int(torch.randint(2, 10, (1,), generator=g))
        out.append({"input_ids": torch.randint(3, MASK, (plen + rlen,), generator=g).tolist(), "prompt_length": plen})
    return {k: torch.from_numpy(v) for k, v in collate(out, pad_id=0).items()}


def build(overrides: list[str], evals: bool, reporter: ListReporter, total: int) -> tuple[Trainer, torch.nn.Module]:
    """A Trainer over N_TRAIN rows (eval rows too when `evals`), and a copy of its initial model."""
    from mdm.engines.llada_plus.model_build import build_model
    from mdm.engines.llada_plus.objective import build_objective

    cfg = load_config([], TINY + overrides)
    torch.manual_seed(SEED)
    model = build_model(cfg.model, "tiny")
    initial = copy.deepcopy(model)
    source = MemoryBatches(rows(N_TRAIN, 0), rows(8, 1) if evals else None, batch_size=BS, seed=SEED)
    trainer = Trainer(model, CountingObjective(build_objective(cfg.train)), train_cfg=cfg.train, ds_cfg=cfg.deepspeed,
                      total_steps=total, steps_per_epoch=N_TRAIN // BS // cfg.train.grad_accum, source=source,
                      reporter=reporter, device=torch.device("cpu"))
    return trainer, initial


def reference_losses(model: torch.nn.Module, cfg_overrides: list[str], steps: int, grad_accum: int
                     ) -> list[float]:
    """Per optimizer step, the mean micro-batch loss of a plain loop: objective.loss + clipping + AdamW."""
    from mdm.engines.llada_plus.objective import build_objective

    cfg = load_config([], TINY + cfg_overrides)
    tcfg = cfg.train
    objective = build_objective(tcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, betas=(tcfg.adam_beta1, tcfg.adam_beta2),
                            eps=tcfg.adam_epsilon, weight_decay=tcfg.weight_decay)
    gen, data = torch.Generator().manual_seed(SEED), rows(N_TRAIN, 0)
    batches = []
    for epoch in range(3):
        order = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(SEED * 1000 + epoch))
        for i in range(0, N_TRAIN - N_TRAIN % BS, BS):
            mb = {k: v[order[i:i + BS]] for k, v in data.items()}
            width = int(mb["attention_mask"].sum(1).max())
            batches.append({k: v[:, :width] for k, v in mb.items()})
    model.train()
    out = []
    for step in range(steps):
        losses = []
        for mb in batches[step * grad_accum:(step + 1) * grad_accum]:
            loss, _ = objective.loss(model, mb, gen)
            (loss / grad_accum).backward()
            losses.append(float(loss.detach()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(sum(losses) / len(losses))
    return out


def test_first_steps_equal_a_hand_written_objective_plus_adamw_loop():
    overrides = ["train.lr=1e-2", "train.grad_accum=2", "train.logging_steps=1", "train.eval_strategy=no",
                 "train.weight_decay=0.01"]
    reporter = ListReporter(keeps_checkpoints=False)
    trainer, initial = build(overrides, evals=False, reporter=reporter, total=4)
    reference = copy.deepcopy(initial)
    trainer.fit()
    expected = reference_losses(reference, overrides, steps=4, grad_accum=2)
    got = [m["train/loss"] for m, _, _ in reporter.reports]
    assert got == pytest.approx(expected, rel=1e-5)
    moved = 0.0
    for (name, p), q, p0 in zip(trainer.module.named_parameters(), reference.parameters(), initial.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, float((p.detach() - p0.detach()).abs().max()))
    assert moved > 1e-3  # the steps did train
    first = next(MemoryBatches(rows(N_TRAIN, 0), None, batch_size=BS, seed=SEED).train())[1]
    assert reporter.tags_seen == {INIT_TAG: weights_digest(initial), DATA_TAG: batch_digest(first)}
    n_params = float(sum(p.numel() for p in initial.parameters()))
    # from scratch; at step 0 only the parameter counts (nothing to prepare: no P-POTS)
    assert reporter.begun == [None] and reporter.logged == [
        (0, {"model/params_total": n_params, "model/params_trainable": n_params})]
    assert all(not save for _, save, _ in reporter.reports)
    keys = set(reporter.reports[0][0])
    assert {"step", "epoch", "total_steps", "train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
            "train/data_wait_fraction"} <= keys and all(k.startswith("diag/") for k in keys if "/" in k
                                                         and not k.startswith("train/"))
    assert [m["epoch"] for m, _, _ in reporter.reports] == [0, 0, 0, 1]  # 3 steps of 2 micro-batches an epoch


def test_log_eval_and_save_cadence_follow_the_strategies():
    total, log_every, eval_every, save_every = 7, 5, 3, 2
    overrides = [f"train.logging_steps={log_every}", "train.eval_strategy=steps", f"train.eval_steps={eval_every}",
                 "train.save_strategy=steps", f"train.save_steps={save_every}", "train.lr=1e-3"]
    reporter = ListReporter()
    trainer, _ = build(overrides, evals=True, reporter=reporter, total=total)
    evals_per_pass = 2  # 8 eval rows in micro-batches of 4
    trainer.fit()
    steps = [int(m["step"]) for m, _, _ in reporter.reports]
    saves = [s for s in range(1, total) if s % save_every == 0]
    evals = [s for s in range(1, total + 1) if s % eval_every == 0 or s == total]
    assert steps == sorted({*saves, *evals, *[s for s in range(1, total + 1) if s % log_every == 0]})
    assert [int(m["step"]) for m, save, _ in reporter.reports if save] == saves
    assert [final for _, _, final in reporter.reports] == [s == total for s in steps]
    with_eval = [int(m["step"]) for m, _, _ in reporter.reports if "eval/loss" in m]
    assert with_eval == sorted({*saves, *evals})
    # step 2's checkpoint needed an eval loss before the first eval step: 5 evaluations (2, 3, 6, 7; 4 reuses 3's)
    assert trainer.objective.eval_calls == evals_per_pass * 4
    by_step = {int(m["step"]): m for m, _, _ in reporter.reports}
    assert by_step[4]["eval/loss"] == by_step[3]["eval/loss"] and trainer.state.eval_loss == by_step[7]["eval/loss"]
    assert trainer.timings["eval_s"] > 0 and trainer.timings["train_s"] > 0


def test_a_reporter_without_checkpoints_is_never_offered_one():
    overrides = ["train.logging_steps=10", "train.save_strategy=steps", "train.save_steps=1", "train.eval_strategy=no"]
    reporter = ListReporter(keeps_checkpoints=False)
    trainer, _ = build(overrides, evals=True, reporter=reporter, total=3)
    trainer.fit()
    assert [(int(m["step"]), save, final) for m, save, final in reporter.reports] == [(3, False, True)]
    assert trainer.objective.eval_calls == 0


def test_eval_loss_is_nan_when_no_rank_has_an_eval_batch():
    """No eval micro-batch on any rank gives NaN, never a made-up 0 (the driver says why: test_train_plan.py)."""
    from mdm.platform.train.trainer import eval_loss

    assert math.isnan(eval_loss(None, torch.nn.Linear(1, 1), [], torch.Generator()))
