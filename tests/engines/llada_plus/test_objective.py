"""The objective object: P-POTS prepare, unbiased importance weighting, resume, plots, 2-worker gloo.

The unbiasedness check compares two Monte Carlo means with a z-test at 4.5 standard errors of their
difference (two-sided tail 7e-6); a negative control shows the same test detects the bias of an
unweighted non-uniform t.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from mdm.engines.llada_plus.config import TrainConfig
from mdm.engines.llada_plus.ppots.density import PiecewiseLinearDensity
from mdm.engines.llada_plus.diffusion import IGNORE_INDEX
from mdm.engines.llada_plus.loss import diffusion_loss
from mdm.engines.llada_plus.objective import build_objective, mask_token_id
from mdm.engines.llada_plus.ppots.time_sampling import TimeSampler

VOCAB, MASK = 12, 11


class TinyLM(nn.Module):
    """Embedding + mean context over real tokens + linear head: logits depend on the masks."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.config = SimpleNamespace(mask_token_id=MASK)
        self.emb, self.ctx, self.head = nn.Embedding(VOCAB, dim), nn.Linear(dim, dim), nn.Linear(dim, VOCAB)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        m = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).float()[..., None]
        ctx = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
        return SimpleNamespace(logits=self.head(torch.tanh(h + self.ctx(ctx))))


def make_batches(n_seq: int, seed: int, batch_size: int = 4) -> list[dict[str, torch.Tensor]]:
    """Collate-style batches: prompt of 2-4 tokens, response of 3-8, right padding."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_seq):
        n_prompt, n_resp = rng.integers(2, 5), rng.integers(3, 9)
        ids = rng.integers(0, MASK, n_prompt + n_resp)
        rows.append((ids, n_prompt))
    batches = []
    for s in range(0, n_seq, batch_size):
        chunk = rows[s:s + batch_size]
        length = max(len(r[0]) for r in chunk)
        ids = torch.zeros((len(chunk), length), dtype=torch.long)
        labels = torch.full((len(chunk), length), IGNORE_INDEX)
        attn = torch.zeros((len(chunk), length), dtype=torch.long)
        for b, (seq, n_prompt) in enumerate(chunk):
            ids[b, :len(seq)] = torch.from_numpy(seq)
            labels[b, n_prompt:len(seq)] = torch.from_numpy(seq[n_prompt:])
            attn[b, :len(seq)] = 1
        batches.append({"input_ids": ids, "labels": labels, "attention_mask": attn})
    return batches


def cfg(**kw) -> TrainConfig:
    base = dict(PPOTS=True, p_model="AP", num_samples_x0=16, num_samples_t=8, num_samples_xt=2,
                max_tokens_per_forward=64, n_starts=2)
    base.update(kw)
    return TrainConfig(**base)


def test_mask_id_through_wrappers():
    model = TinyLM()
    assert mask_token_id(SimpleNamespace(module=SimpleNamespace(module=model))) == MASK
    engine_like = SimpleNamespace(config={"train_batch_size": 8}, module=model)  # DeepSpeed has .config
    assert mask_token_id(engine_like) == MASK
    with pytest.raises(ValueError, match="mask_token_id"):
        mask_token_id(SimpleNamespace(config=SimpleNamespace(mask_token_id=None)))


def test_plain_objective_prepare_is_noop_and_loss_reproducible():
    torch.manual_seed(0)
    model, batch = TinyLM(), make_batches(4, 0)[0]
    assert build_objective(TrainConfig()).prepare(model, make_batches(8, 1), "cpu") == {}
    obj = build_objective(TrainConfig(train_mode="MIRROR"))
    # MIRROR's prepare only measures its within-sequence pair correlation (no P-POTS fit, no state)
    diag = obj.prepare(model, (b for b in make_batches(8, 1)), "cpu")   # a one-shot iterator is enough
    assert set(diag) >= {"diag/mirror_corr_within", "diag/mirror_corr_pooled_t0.5", "diag/mirror_corr_within_t0.5"}
    assert "diag/mirror_corr_pooled" not in diag  # the training window's name (random t), not this one
    assert all(k.startswith("diag/mirror_") for k in diag) and -1 <= diag["diag/mirror_corr_within"] <= 1
    assert diag["diag/mirror_n_sequences"] == 8 and obj.save_plot("x.png") is None
    a, ma = obj.loss(model, batch, torch.Generator().manual_seed(3))
    b, mb = obj.loss(model, batch, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and ma == mb and ma["is_weight_mean"] == 1.0
    e, _ = obj.eval_loss(model, batch, torch.Generator().manual_seed(3))
    assert torch.isfinite(e) and e.item() > 0


@pytest.mark.parametrize("p_model", ["EPR", "AP"])
def test_ppots_prepare_state_and_plot(tmp_path, p_model):
    torch.manual_seed(0)
    model = TinyLM()
    model.train()
    obj = build_objective(cfg(p_model=p_model, train_mode="MIRROR"))
    metrics = obj.prepare(model, make_batches(20, 1), "cpu")
    assert model.training  # restored after the no-grad estimation
    assert metrics["ppots/n_samples_per_t"] == 16 * 2 and metrics["ppots/p_min"] >= 0.1 - 1e-9
    assert np.all(obj.stats.w > 0) and np.allclose(obj.stats.w ** 2, obj.stats.mean ** 2 + obj.stats.var)
    batch = make_batches(4, 2)[0]
    loss, m = obj.loss(model, batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and m["is_weight_mean"] != 1.0
    # Resume: a fresh objective with the saved state draws exactly the same t and weights.
    other = build_objective(cfg(p_model=p_model))
    other.load_state_dict(obj.state_dict())
    s1 = obj.sampler.sample(32, torch.Generator().manual_seed(9))
    s2 = other.sampler.sample(32, torch.Generator().manual_seed(9))
    assert torch.equal(s1[0], s2[0]) and torch.equal(s1[1], s2[1])
    png = other.save_plot(str(tmp_path / "sub" / "ppots.png"))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reestimate_schedule():
    torch.manual_seed(0)
    model = TinyLM()
    obj = build_objective(cfg(ppots_reestimate_steps=5))
    obj.prepare(model, make_batches(16, 1), "cpu")
    assert obj.maybe_reestimate(3, model, make_batches(16, 1), "cpu") is None
    before = obj.sampler.density.y.copy()
    with torch.no_grad():
        model.head.weight.mul_(3.0)  # a different model gives a different w(t)
    out = obj.maybe_reestimate(10, model, make_batches(16, 1), "cpu")
    assert out is not None and out["ppots/round"] == 2 and not np.allclose(before, obj.sampler.density.y)
    assert build_objective(cfg()).maybe_reestimate(10, model, [], "cpu") is None  # 0 = never


def test_importance_weighted_loss_is_unbiased():
    # A fixed "copy the context" model on responses made of one repeated token: the more is masked,
    # the less the context tells, so E[l | t] rises with t and a non-uniform t without 1/p(t) is biased.
    model = TinyLM(dim=VOCAB)
    with torch.no_grad():
        model.emb.weight.copy_(3 * torch.eye(VOCAB))
        model.emb.weight[MASK] = 0.0
        model.ctx.weight.copy_(3 * torch.eye(VOCAB))
        model.head.weight.copy_(4 * torch.eye(VOCAB))
        model.ctx.bias.zero_()
        model.head.bias.zero_()
    batch = make_batches(4, 3)[0]
    for b, labels in enumerate(batch["labels"]):
        batch["input_ids"][b][labels != IGNORE_INDEX] = b + 1
        labels[labels != IGNORE_INDEX] = b + 1
    # A strongly non-uniform p(t) (mass near t = 0.8), cap high enough never to bind.
    density = PiecewiseLinearDensity([0.0, 0.5, 0.8, 1.0], [0.2, 1.0, 6.0, 0.5])
    n = 3000  # draws of (t, mask) per sequence, all in one batched forward per estimator
    big = {k: v.repeat(n, 1) for k, v in batch.items()}

    def per_draw(sampler: TimeSampler, weighted: bool) -> np.ndarray:
        g = torch.Generator().manual_seed(11)
        t, w = sampler.sample(big["input_ids"].shape[0], g)
        with torch.no_grad():
            _, st = diffusion_loss(model, big, t, w if weighted else None, mask_id=MASK, generator=g)
        return st["per_seq"].reshape(n, -1).mean(1).double().numpy()  # batch-mean loss per draw

    plain = per_draw(TimeSampler(None), False)
    weighted = per_draw(TimeSampler(density, max_is_weight=1e6), True)
    unweighted = per_draw(TimeSampler(density, max_is_weight=1e6), False)

    def z(a: np.ndarray, b: np.ndarray) -> float:
        return abs(a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))

    assert z(weighted, plain) < 4.5, (weighted.mean(), plain.mean())
    assert z(unweighted, plain) > 4.5  # negative control: without 1/p(t) the mean is biased


# -- two workers on gloo -----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    try:
        for p_model in P_MODELS:
            torch.manual_seed(0)
            model = TinyLM()
            # Each rank is given its own data shard: rank 0 the first 8 sequences, rank 1 the next 8.
            shard = make_batches(16, 5)[rank * 2:(rank + 1) * 2]
            obj = build_objective(cfg(p_model=p_model))
            obj.prepare(model, shard, "cpu")
            torch.save(obj.state_dict(), os.path.join(out_dir, f"{p_model}_rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


P_MODELS = ("AP", "EPR")


@pytest.mark.timeout(240)
def test_two_gloo_workers_match_single_process_over_the_union(tmp_path):
    # One spawn for both p_models: starting the interpreters dominates the cost.
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for p_model in P_MODELS:
        states = [torch.load(tmp_path / f"{p_model}_rank{r}.pt", weights_only=True) for r in range(2)]
        torch.manual_seed(0)
        single = build_objective(cfg(p_model=p_model))
        single.prepare(TinyLM(), make_batches(16, 5), "cpu")
        ref = single.state_dict()
        assert states[0]["density"] == states[1]["density"], p_model  # identical p(t) on both ranks
        assert states[0]["stats"]["count"] == ref["stats"]["count"] == [32.0] * 8
        # Equal up to float32 forward rounding (the rows are packed into different forwards).
        for key in ("mean", "var", "w"):
            assert np.allclose(states[0]["stats"][key], ref["stats"][key], rtol=1e-6, atol=0), key
        assert np.allclose(states[0]["density"]["y"], ref["density"]["y"], rtol=1e-4, atol=1e-6), p_model


def test_estimate_independent_of_forward_packing_and_packs_respect_the_token_budget():
    from mdm.engines.llada_plus.ppots.measure import measure_moments
    from mdm.engines.llada_plus.ppots.moments import grid_weights, make_grid
    from mdm.engines.llada_plus.rows import pack_rows

    torch.manual_seed(0)
    model = TinyLM()
    kw = dict(mask_id=MASK, grid=make_grid("sqrt", 6), grid_weights=grid_weights("sqrt", 6), num_samples_x0=10,
              num_samples_xt=3, seed=4)
    one_row = measure_moments(model, make_batches(12, 6), max_tokens_per_forward=1, **kw)["loss"]
    big = measure_moments(model, make_batches(12, 6), max_tokens_per_forward=100_000, **kw)["loss"]
    t = np.linspace(0.0, 1.0, 33)
    assert np.allclose(one_row.first(t), big.first(t), rtol=1e-6) and np.allclose(one_row.second(t), big.second(t),
                                                                                   rtol=1e-5)
    lengths = [5, 9, 3, 12, 7, 7, 2]
    packs = pack_rows(lengths, 20)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))
    assert all(len(p) == 1 or len(p) * max(lengths[i] for i in p) <= 20 for p in packs)
