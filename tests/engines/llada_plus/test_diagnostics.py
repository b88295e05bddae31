"""The objective's diagnostics against closed forms: importance-weight statistics and MIRROR's pair correlation.

- weight_stats on hand-computed weights (Kish ESS, capped fraction);
- P-POTS with p(t) = 2t and max_is_weight = 2: 1/p(t) > 2 exactly when t < 1/4, so the capped fraction is
  P(t < 1/4) = 1/16, E[w] = 7/8 and E[w^2] = 1/4 + ln(4)/2; the pooled window over 16,384 sequences must
  match within 5 standard errors (computed from the closed-form variances);
- MIRROR at p = 1/2 with a model whose logits ignore the input: the two masks are exact complements, each
  token's loss is log V, so l(M1) + l(M2) = log V / p for every sequence and the correlation is exactly -1.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from mdm.engines.llada_plus.config import TrainConfig
from mdm.engines.llada_plus.ppots.density import PiecewiseLinearDensity
from mdm.engines.llada_plus.diagnostics import pearson, weight_stats
from mdm.engines.llada_plus.objective import build_objective
from mdm.engines.llada_plus.ppots.time_sampling import TimeSampler

from test_objective import MASK, VOCAB, TinyLM, make_batches


def test_weight_stats_by_hand():
    st = weight_stats(torch.tensor([1.0, 3.0]), cap=3.0)
    assert st["is_weight_mean"] == 2.0 and st["is_weight_max"] == 3.0
    assert st["is_ess_frac"] == pytest.approx(16 / 20)          # (1+3)^2 / (2 (1+9))
    assert st["is_capped_frac"] == 0.5
    assert weight_stats(torch.ones(5), cap=10.0)["is_ess_frac"] == pytest.approx(1.0)
    assert pearson(torch.tensor([1.0, 2, 3]), torch.tensor([2.0, 4, 6])) == pytest.approx(1.0)
    assert math.isnan(pearson(torch.tensor([1.0]), torch.tensor([2.0])))


def test_pooled_importance_weights_match_the_closed_form():
    x = np.linspace(0, 1, 65)
    density = PiecewiseLinearDensity(x, 2 * x)                   # p(t) = 2t exactly (linear between knots)
    obj = build_objective(TrainConfig(PPOTS=True, max_is_weight=2.0))
    obj.sampler = TimeSampler(density, max_is_weight=2.0)
    model, gen = TinyLM(), torch.Generator().manual_seed(0)
    batches = make_batches(64, 1, batch_size=64)
    per_batch = []
    for _ in range(256):                                         # 16,384 sequences
        _, m = obj.loss(model, batches[0], gen)
        per_batch.append(m)
    pooled = obj.window_metrics()
    n = 256 * 64
    ew, ew2, cap_p = 7 / 8, 0.25 + math.log(4) / 2, 1 / 16
    se_w = math.sqrt((ew2 - ew ** 2) / n)
    assert abs(pooled["is_weight_mean"] - ew) < 5 * se_w
    assert abs(pooled["is_capped_frac"] - cap_p) < 5 * math.sqrt(cap_p * (1 - cap_p) / n)
    assert pooled["is_weight_max"] == pytest.approx(2.0)
    # ESS fraction -> E[w]^2 / E[w^2]; delta-method SE is below 0.01 at this n, 0.02 is generous
    assert abs(pooled["is_ess_frac"] - ew ** 2 / ew2) < 0.02
    # per-micro-batch metrics agree with the pooled ones on average, and the window empties after a pop
    assert np.mean([m["is_capped_frac"] for m in per_batch]) == pytest.approx(pooled["is_capped_frac"])
    assert obj.window_metrics() == {}


class ConstantLM(nn.Module):
    """Logits that ignore the input: a zero bias, so every token's cross-entropy is log V."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(mask_token_id=MASK)
        self.bias = nn.Parameter(torch.zeros(VOCAB))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, VOCAB))


class FixedT:
    """A time sampler that always draws t (weight 1)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def sample(self, n, generator, device):
        return torch.full((n,), self.t, device=device), torch.ones(n, device=device)


def test_mirror_halves_are_perfectly_anticorrelated_at_half_masking():
    cfg = TrainConfig(train_mode="MIRROR")
    obj = build_objective(cfg)
    eps = cfg.mask_eps
    obj.sampler = FixedT((0.5 - eps) / (1 - eps))                  # masking probability exactly 1/2
    model, gen = ConstantLM(), torch.Generator().manual_seed(0)
    for batch in make_batches(12, 2, batch_size=1):                # one sequence per micro-batch
        _, m = obj.loss(model, batch, gen)
        assert math.isnan(m["mirror_corr_pooled"])                        # undefined within one sequence
    assert obj.window_metrics()["mirror_corr_pooled"] == pytest.approx(-1.0, abs=1e-9)
    normal = build_objective(TrainConfig())
    _, m = normal.loss(model, make_batches(4, 0)[0], gen)
    assert "mirror_corr_pooled" not in m and "is_ess_frac" not in m and normal.window_metrics() == {}
