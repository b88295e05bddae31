"""eval_quadrature: the Gauss-Legendre held-out loss against exact enumeration, Monte Carlo and a closed form.

References: (1) exact E[l | t] of one short sequence by enumerating all 2^n masks (a polynomial of degree
n - 1 in t, integrated exactly with the regularised incomplete beta function); (2) the mean of many
loss.diffusion_loss draws with t ~ U(0, 1) and Normal masks; (3) zero logits, where CE = log V for every
token and E[l | t] = log V E|M| / (p n) = log V for every t (E|M| = p n exactly, so eps plays no part), with
Var[l | t] = (log V)^2 (1 - p) / (p n) (|M| ~ Binomial(n, p)). Tolerances are stated where used.
"""

from __future__ import annotations

import math
from itertools import product
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.special import beta, betainc
from test_objective import MASK, VOCAB, TinyLM, make_batches

from mdm.engines.llada_plus.diffusion import IGNORE_INDEX
from mdm.engines.llada_plus.eval_quadrature import gauss_legendre_01, quadrature_eval_loss
from mdm.engines.llada_plus.loss import diffusion_loss


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class ZeroLM(nn.Module):
    """Zero logits everywhere (CE = log V); one parameter so eval()/train() and devices behave."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(mask_token_id=MASK)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.dummy * torch.zeros(*input_ids.shape, VOCAB))


class Recorder(nn.Module):
    """Wraps a model and records every (unpadded) input row it sees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.config, self.seen = inner, inner.config, []

    def forward(self, input_ids, attention_mask=None):
        for row, attn in zip(input_ids, attention_mask):
            self.seen.append(tuple(row[attn != 0].tolist()))
        return self.inner(input_ids, attention_mask=attention_mask)


def collate(rows: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches of (ids [L], labels [L]) rows."""
    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        length = max(len(r[0]) for r in chunk) + 1  # one extra pad column, so padding really differs
        ids = torch.zeros((len(chunk), length), dtype=torch.long)
        labels = torch.full((len(chunk), length), IGNORE_INDEX)
        attn = torch.zeros((len(chunk), length), dtype=torch.long)
        for b, (i, l) in enumerate(chunk):
            ids[b, :len(i)], labels[b, :len(i)], attn[b, :len(i)] = i, l, 1
        out.append({"input_ids": ids, "labels": labels, "attention_mask": attn})
    return out


def test_gauss_legendre_01_integrates_polynomials():
    nodes, weights = gauss_legendre_01(16)
    assert np.all(np.diff(nodes) > 0) and 0 < nodes[0] and nodes[-1] < 1
    for degree in (0, 5, 31):  # exact up to degree 2n - 1 = 31: ∫_0^1 t^d dt = 1 / (d + 1)
        assert np.sum(weights * nodes ** degree) == pytest.approx(1.0 / (degree + 1), rel=1e-12)


def exact_moments(model, ids: torch.Tensor, labels: torch.Tensor, eps: float):
    """Enumerate every mask of the eligible tokens: -> (E[l|t] fn, E[l^2|t] fn, exact ∫_0^1 E[l|t] dt)."""
    elig = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    n = len(elig)
    terms = []  # (|M|, sum of CE over M)
    with torch.no_grad():
        for bits in product((0, 1), repeat=n):
            masked = [j for j, b in zip(elig, bits) if b]
            if not masked:
                continue
            noisy = ids.clone()
            noisy[masked] = MASK
            logp = torch.log_softmax(model(noisy[None], torch.ones_like(noisy)[None]).logits[0].double(), -1)
            terms.append((len(masked), float(-logp[masked, labels[masked]].sum())))

    def m1(p):
        return sum(p ** (k - 1) * (1 - p) ** (n - k) * s / n for k, s in terms)

    def m2(p):
        return sum(p ** (k - 2) * (1 - p) ** (n - k) * (s / n) ** 2 for k, s in terms)

    # ∫_0^1 dt = 1/(1-eps) ∫_eps^1 dp and ∫_eps^1 p^(k-1) (1-p)^(n-k) dp = B(k, n-k+1) (1 - I_eps(k, n-k+1)).
    integral = sum(s / n * beta(k, n - k + 1) * (1 - betainc(k, n - k + 1, eps)) for k, s in terms) / (1 - eps)
    return m1, m2, integral


def test_matches_exact_enumeration():
    # One sequence, 5 eligible tokens: E[l|t] has degree 4, so 16 nodes integrate it exactly (to 1e-10);
    # the estimate with 512 masks per node is within 4 standard errors of the exact node values and integral.
    torch.manual_seed(0)
    model, eps, masks = TinyLM(), 1e-3, 512
    ids = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    labels = torch.tensor([IGNORE_INDEX, IGNORE_INDEX, 4, 1, 5, 9, 2])
    m1, m2, integral = exact_moments(model, ids, labels, eps)
    nodes, weights = gauss_legendre_01(16)
    p = (1 - eps) * nodes.astype(np.float32) + eps
    mean_k = np.array([m1(pk) for pk in p])
    var_k = np.array([m2(pk) for pk in p]) - mean_k ** 2
    gl = float(np.sum(weights * np.array([m1((1 - eps) * t + eps) for t in nodes])))
    assert gl == pytest.approx(integral, rel=1e-10)
    value, _, per_node = quadrature_eval_loss(model, collate([(ids, labels)], 1), mask_id=MASK,
                                              masks_per_point=masks, seed=3, eps=eps)
    assert np.all(np.abs(per_node - mean_k) <= 4 * np.sqrt(var_k / masks) + 1e-6)
    assert abs(value - integral) <= 4 * math.sqrt(float(np.sum(weights ** 2 * var_k)) / masks)


def test_matches_monte_carlo_uniform_t():
    # The same 8 sequences: quadrature (8 seeds x 8 masks per node) vs 2000 draws of diffusion_loss with
    # t ~ U(0, 1). Tolerance 4 combined standard errors (each from its own draws' spread); |E| <= 8 <= 32, so
    # the quadrature has no discretisation bias here (module docstring of eval_quadrature).
    torch.manual_seed(0)
    model, eps = TinyLM(), 1e-3
    batches = make_batches(8, 4, batch_size=8)
    quad = [quadrature_eval_loss(model, batches, mask_id=MASK, masks_per_point=8, seed=s, eps=eps,
                                 max_tokens_per_forward=2048)[0] for s in range(8)]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        mc = [float(diffusion_loss(model, batches[0], torch.rand(8, generator=g), None, mask_id=MASK, eps=eps,
                                   mode="Normal", generator=g)[0]) for _ in range(2000)]
    se = math.hypot(np.std(quad, ddof=1) / math.sqrt(len(quad)), np.std(mc, ddof=1) / math.sqrt(len(mc)))
    assert abs(np.mean(quad) - np.mean(mc)) <= 4 * se


def test_masks_shared_across_models_and_batchings():
    rows = []
    for batch in make_batches(10, 5, batch_size=4):
        for b in range(batch["input_ids"].shape[0]):
            keep = batch["attention_mask"][b] != 0
            rows.append((batch["input_ids"][b][keep], batch["labels"][b][keep]))
    torch.manual_seed(0)
    a = Recorder(TinyLM())
    torch.manual_seed(1)
    b = Recorder(TinyLM())
    kw = dict(mask_id=MASK, masks_per_point=2, seed=7, max_tokens_per_forward=64)
    va, _, _ = quadrature_eval_loss(a, collate(rows, 4), **kw)
    vb, _, _ = quadrature_eval_loss(b, collate(rows, 4), **kw)
    assert a.seen == b.seen and va != vb  # same masked inputs, different models
    # Reversed rows in batches of 3 (different padding and packing): the same masked rows, the same value.
    c = Recorder(a.inner)
    vc, sc, nc = quadrature_eval_loss(c, collate(rows[::-1], 3), **kw)
    va2, sa, na = quadrature_eval_loss(a.inner, collate(rows, 4), **kw)
    assert sorted(c.seen) == sorted(a.seen)
    assert vc == pytest.approx(va, rel=1e-6) and va2 == va and sc == pytest.approx(sa, rel=1e-5)
    assert np.allclose(nc, na, rtol=1e-6)
    # A different seed changes the masks.
    d = Recorder(a.inner)
    quadrature_eval_loss(d, collate(rows, 4), **{**kw, "seed": 8})
    assert sorted(d.seen) != sorted(c.seen)


def test_constant_ce_model_gives_log_v():
    # E[l|t] = log V at every node; the value is within 4 closed-form standard errors of log V, and the
    # returned stderr (from the spread across sequences) estimates that closed-form SE within a factor 2.
    batches = make_batches(32, 6, batch_size=8)
    masks, eps = 4, 1e-3
    value, stderr, per_node = quadrature_eval_loss(ZeroLM(), batches, mask_id=MASK, masks_per_point=masks, eps=eps)
    nodes, weights = gauss_legendre_01(16)
    p = (1 - eps) * nodes + eps
    c = math.log(VOCAB)
    n_elig = torch.cat([(b["labels"] != IGNORE_INDEX).sum(1) for b in batches]).double().numpy()
    var_q = [float(np.sum(weights ** 2 * c * c * (1 - p) / (p * n))) / masks for n in n_elig]
    se_true = math.sqrt(np.mean(var_q) / len(n_elig))
    assert abs(value - c) <= 4 * se_true
    assert 0.5 * se_true <= stderr <= 2.0 * se_true
    late = nodes > 0.5  # nodes with little noise: each within 4 SE of log V
    se_node = np.sqrt(np.mean(c * c * (1 - p[late, None]) / (p[late, None] * n_elig[None]), axis=1) / masks
                      / len(n_elig))
    assert np.all(np.abs(per_node[late] - c) <= 4 * se_node)
