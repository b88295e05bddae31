"""estimator_diagnostics: MIRROR within-sequence correlation and a time sampler's realised gradient variance.

Independent references: a brute-force recomputation through loss.diffusion_loss (one row per forward) and
plain Python loops; the closed form -1 for a constant-CE model at t = 0.5 with complementary masks; and, for
a model whose logits are one parameter vector (so the CE of a token does not depend on the mask), the exact
gradient and loss variance of the importance-weighted estimator, integrated numerically over t:

    tr Cov_q = (1 / B^2) sum_b [ ∫ (||ḡ_b||^2 + S_b (1 - p) / p) / q(t) dt - ||ḡ_b||^2 ],  p = (1 - eps) t + eps

with ḡ_b the mean over b's eligible tokens of ∇CE_j and S_b = sum_j ||∇CE_j||^2 / |E_b|^2 (independent
Bernoulli(p) masks, weight 1/q). Statistical tolerances are stated where used.
"""

from __future__ import annotations

import json
import math
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from test_objective import MASK, VOCAB, TinyLM, make_batches

from mdm.engines.llada_plus.ppots.density import PiecewiseLinearDensity
from mdm.engines.llada_plus.diffusion import IGNORE_INDEX
from mdm.engines.llada_plus.estimator_diagnostics import mirror_within_corr, realised_grad_variance
from mdm.engines.llada_plus.rows import pack_rows
from mdm.engines.llada_plus.eval_quadrature import quadrature_eval_loss
from mdm.engines.llada_plus.loss import diffusion_loss
from mdm.engines.llada_plus.ppots.time_sampling import TimeSampler


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class BiasLM(nn.Module):
    """logits = theta for every position: CE of a token is the same whatever is masked."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.config = SimpleNamespace(mask_token_id=MASK)
        self.theta = nn.Parameter(theta.clone().float())

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.theta.expand(*input_ids.shape, VOCAB))


def brute_force_corrs(model, batches, t_values, pairs, eps, seed):
    """Per t: (within, pooled) correlation by loops over halves from diffusion_loss(mode="MIRROR")."""
    seqs = []
    for batch in batches:  # strip padding row by row
        for b in range(batch["input_ids"].shape[0]):
            keep = batch["attention_mask"][b] != 0
            seqs.append((batch["input_ids"][b][keep], batch["labels"][b][keep]))
    halves = {t: [] for t in t_values}  # t -> list over sequences of list over pairs of (h1, h2)
    for i, (ids, labels) in enumerate(seqs):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)  # the documented seeding
        for t in t_values:
            group = []
            for _ in range(pairs):
                _, st = diffusion_loss(model, {"input_ids": ids[None], "labels": labels[None]},
                                       torch.tensor([t]), None, mask_id=MASK, eps=eps, mode="MIRROR", generator=g)
                group.append((float(st["halves"][0, 0]), float(st["halves"][1, 0])))
            halves[t].append(group)
    out = {}
    for t, groups in halves.items():
        sxy = sxx = syy = 0.0
        for group in groups:
            m1 = sum(a for a, _ in group) / len(group)
            m2 = sum(b for _, b in group) / len(group)
            for a, b in group:
                sxy, sxx, syy = sxy + (a - m1) * (b - m2), sxx + (a - m1) ** 2, syy + (b - m2) ** 2
        flat = [ab for group in groups for ab in group]
        mx, my = sum(a for a, _ in flat) / len(flat), sum(b for _, b in flat) / len(flat)
        cxy = sum((a - mx) * (b - my) for a, b in flat)
        vx, vy = sum((a - mx) ** 2 for a, _ in flat), sum((b - my) ** 2 for _, b in flat)
        out[t] = (sxy / math.sqrt(sxx * syy), cxy / math.sqrt(vx * vy))
    return out


def test_pack_rows_respects_budget():
    lengths = [3, 5, 2, 8, 8, 1, 20]
    packs = pack_rows(lengths, 16)
    assert [i for p in packs for i in p] == list(range(len(lengths)))
    assert all(len(p) == 1 or len(p) * max(lengths[i] for i in p) <= 16 for p in packs)


def test_mirror_within_matches_brute_force():
    torch.manual_seed(0)
    model, batches = TinyLM(), make_batches(6, 3, batch_size=4)
    model.train()
    t_values, pairs, eps, seed = (0.3, 0.5), 4, 1e-3, 5
    got = mirror_within_corr(model, batches, mask_id=MASK, t_values=t_values, pairs=pairs, num_sequences=6,
                             eps=eps, max_tokens_per_forward=40, seed=seed)  # 40 tokens: several packs
    assert model.training
    with torch.no_grad():
        want = brute_force_corrs(model, batches, t_values, pairs, eps, seed)
    for t in t_values:
        assert got[f"mirror_corr_within_t{t:g}"] == pytest.approx(want[t][0], abs=1e-5)
        assert got[f"mirror_corr_pooled_t{t:g}"] == pytest.approx(want[t][1], abs=1e-5)
    assert got["mirror_corr_within"] == pytest.approx(np.mean([want[t][0] for t in t_values]), abs=1e-5)
    assert got["mirror_n_sequences"] == 6


def test_mirror_constant_ce_is_exactly_minus_one():
    # Zero logits: CE = log V for every token. At t = 0.5, eps = 0 the halves are complements, so
    # h1 + h2 = log V (|M1| + |M2|) / (0.5 |E|) = 2 log V for every draw: correlation exactly -1.
    model = BiasLM(torch.zeros(VOCAB))
    got = mirror_within_corr(model, make_batches(8, 1), mask_id=MASK, t_values=(0.5,), pairs=6,
                             num_sequences=8, eps=0.0, max_tokens_per_forward=64, seed=0)
    assert got["mirror_corr_within"] == pytest.approx(-1.0, abs=1e-6)
    assert got["mirror_corr_pooled"] == pytest.approx(-1.0, abs=1e-6)


def heterogeneous_batches() -> list[dict[str, torch.Tensor]]:
    """Easy rows (short, response all token 0) and hard rows (long, random tokens 1..10), 2-token prompts."""
    rng = np.random.default_rng(0)
    rows = [np.zeros(5, dtype=np.int64) if i % 2 == 0 else rng.integers(1, MASK, 16) for i in range(12)]
    length = 2 + max(len(r) for r in rows)
    ids = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX)
    attn = torch.zeros((len(rows), length), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, 2:2 + len(r)] = labels[b, 2:2 + len(r)] = torch.from_numpy(r)
        attn[b, :2 + len(r)] = 1
    return [{"input_ids": ids, "labels": labels, "attention_mask": attn}]


def test_within_below_pooled_on_heterogeneous_sequences():
    # A model that predicts token 0 with a large margin: easy rows lose ~0, hard rows ~6 nats per token, so
    # the pooled correlation is dominated by the between-sequence spread (positive), while within a sequence
    # the antithetic pair stays negative. Margin 0.5 between the two: the between-sequence spread of the
    # half-losses is ~30 times their within-sequence spread here, so pooled is near +1.
    torch.manual_seed(0)
    model = TinyLM()
    with torch.no_grad():
        model.head.bias[0] += 6.0
    got = mirror_within_corr(model, heterogeneous_batches(), mask_id=MASK, t_values=(0.5,), pairs=8,
                             num_sequences=12, max_tokens_per_forward=256, seed=1)
    assert got["mirror_corr_within"] < 0.0 < got["mirror_corr_pooled"]
    assert got["mirror_corr_within"] < got["mirror_corr_pooled"] - 0.5


def test_same_sampler_gives_ratio_exactly_one():
    torch.manual_seed(0)
    model, batch = TinyLM(), make_batches(4, 2)[0]
    r = realised_grad_variance(model, batch, TimeSampler(None), mask_id=MASK, draws=20, seed=3)
    assert r["realised_grad_R"] == 1.0 and r["realised_loss_R"] == 1.0 and r["grad_mean_gap2"] == 0.0
    assert all(p.grad is None for p in model.parameters())  # autograd.grad leaves .grad alone
    # The trace is additive over coordinates: a partition of the parameters splits it exactly (same draws).
    head = list(model.head.parameters())
    rest = [p for p in model.parameters() if all(p is not h for h in head)]
    parts = [realised_grad_variance(model, batch, TimeSampler(None), mask_id=MASK, draws=20, seed=3, params=ps)
             for ps in (head, rest)]
    assert parts[0]["tr_cov_grad_q"] + parts[1]["tr_cov_grad_q"] == pytest.approx(r["tr_cov_grad_q"], rel=1e-9)


def closed_form(theta: torch.Tensor, batch: dict[str, torch.Tensor], q, eps: float) -> tuple[float, float, float]:
    """(tr Cov[g], Var[loss], E[loss]) of the weighted estimator for BiasLM (module docstring)."""
    t = np.linspace(0.0, 1.0, 200_001)
    p = (1 - eps) * t + eps
    inv_q = 1.0 / q(t)
    soft = torch.softmax(theta.double(), 0)
    def cov_trace(mean2: float, s: float) -> float:  # ∫ (||mean||^2 + s (1 - p) / p) / q dt - ||mean||^2
        return float(np.trapezoid((mean2 + s * (1 - p) / p) * inv_q, t)) - mean2

    tr = var = mean = 0.0
    n_seq = batch["labels"].shape[0]
    for labels in batch["labels"]:
        x = labels[labels != IGNORE_INDEX]
        n = len(x)
        grads = soft[None, :] - torch.nn.functional.one_hot(x, VOCAB).double()   # ∇_theta CE_j, [n, V]
        ce = -torch.log(soft[x])                                                   # [n]
        tr += cov_trace(float((grads.mean(0) ** 2).sum()), float((grads ** 2).sum()) / n ** 2) / n_seq ** 2
        var += cov_trace(float(ce.mean()) ** 2, float((ce ** 2).sum()) / n ** 2) / n_seq ** 2
        mean += float(ce.mean()) / n_seq
    return tr, var, mean


@pytest.mark.parametrize("y", [(1.0, 1.0), (0.5, 1.5), (1.5, 0.5)])
def test_realised_variance_matches_closed_form(y):
    # 1500 draws per estimator, eps = 0.05 (1/p <= 20). Tolerance 25% on each trace and ratio: over 6 seeds the
    # realised ratios scattered by 5-6% (sd) around the closed form for these densities (weights <= 2), so 25%
    # is > 4 standard deviations. Means: within 4 standard errors of each other and of the exact mean.
    # Predicted R: 1 for (1, 1), 1.61 for (0.5, 1.5), 0.83 for (1.5, 0.5) (3 sd below 1).
    theta = torch.linspace(-1.0, 1.0, VOCAB)
    model, batch, eps = BiasLM(theta), make_batches(4, 7)[0], 0.05
    density = PiecewiseLinearDensity([0.0, 1.0], list(y))
    r = realised_grad_variance(model, batch, TimeSampler(density), mask_id=MASK, draws=1500, seed=11, eps=eps)
    tr_q, var_q, mean_exact = closed_form(theta, batch, density.pdf, eps)
    tr_u, var_u, _ = closed_form(theta, batch, lambda t: np.ones_like(t), eps)
    assert r["tr_cov_grad_q"] == pytest.approx(tr_q, rel=0.25)
    assert r["tr_cov_grad_uniform"] == pytest.approx(tr_u, rel=0.25)
    assert r["realised_grad_R"] == pytest.approx(tr_q / tr_u, rel=0.25)
    assert r["realised_loss_R"] == pytest.approx(var_q / var_u, rel=0.25)
    se = math.hypot(r["loss_se_q"], r["loss_se_uniform"])
    assert abs(r["loss_mean_q"] - r["loss_mean_uniform"]) < 4 * se
    assert abs(r["loss_mean_q"] - mean_exact) < 4 * r["loss_se_q"]
    # ||mean g_q - mean g_u||^2 / its expectation under unbiasedness: < 9 (a 3-sigma bound even for 1 dof).
    assert r["grad_mean_gap2"] < 9 * r["grad_mean_gap2_indep"]
    # Direction: mass moved towards large t (where 1/p is small) raises the variance, towards small t lowers it.
    if y[0] < y[1]:
        assert r["realised_grad_R"] > 1.2
    elif y[0] > y[1]:
        assert r["realised_grad_R"] < 1.0


# -- two workers on gloo: the collective paths of mirror_within_corr and quadrature_eval_loss ----------------

class CountingLM(TinyLM):
    """TinyLM that counts its forwards (ZeRO-3 needs the same count on every rank)."""

    def forward(self, input_ids, attention_mask=None):
        self.calls = getattr(self, "calls", 0) + 1
        return super().forward(input_ids, attention_mask)


def shard_rows() -> list[tuple[torch.Tensor, torch.Tensor]]:
    rows = []
    for batch in make_batches(7, 9, batch_size=7):
        for b in range(7):
            keep = batch["attention_mask"][b] != 0
            rows.append((batch["input_ids"][b][keep], batch["labels"][b][keep]))
    return rows


def as_batches(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{"input_ids": i[None], "labels": l[None], "attention_mask": torch.ones_like(i)[None]} for i, l in rows]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    try:
        torch.manual_seed(0)
        model, rows = CountingLM(), shard_rows()
        # Mirror: rank 0 holds rows 0-2, rank 1 rows 3-6 (takes 3 of them): the union is rows 0-5.
        mirror = mirror_within_corr(model, as_batches(rows[:3] if rank == 0 else rows[3:]), mask_id=MASK,
                                    t_values=(0.5,), pairs=4, num_sequences=6, max_tokens_per_forward=48, seed=2)
        model.calls = 0
        # Quadrature: unequal shards (2 and 5 rows), so rank 0 must pad with dummy forwards.
        quad = quadrature_eval_loss(model, as_batches(rows[:2] if rank == 0 else rows[2:]), mask_id=MASK,
                                    masks_per_point=2, seed=4, max_tokens_per_forward=48)
        res = {"mirror": mirror, "quad": [quad[0], quad[1], quad[2].tolist()], "calls": model.calls}
        with open(f"{out}/rank{rank}.json", "w") as f:
            json.dump(res, f)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_workers_match_single_process_over_the_union(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)  # not fork: OpenMP state hangs it
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert res[0]["mirror"] == res[1]["mirror"]
    assert res[0]["quad"] == res[1]["quad"] and res[0]["calls"] == res[1]["calls"]
    torch.manual_seed(0)
    model, rows = CountingLM(), shard_rows()
    mirror = mirror_within_corr(model, as_batches(rows[:6]), mask_id=MASK, t_values=(0.5,), pairs=4,
                                num_sequences=6, max_tokens_per_forward=48, seed=2)
    quad = quadrature_eval_loss(model, as_batches(rows), mask_id=MASK, masks_per_point=2, seed=4,
                                max_tokens_per_forward=48)
    assert res[0]["mirror"] == pytest.approx(mirror, rel=1e-6)
    assert res[0]["quad"][:2] == pytest.approx([quad[0], quad[1]], rel=1e-6)
    assert np.allclose(res[0]["quad"][2], quad[2], rtol=1e-6)
