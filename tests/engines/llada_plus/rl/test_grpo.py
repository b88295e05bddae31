"""GRPO's loss (rl/grpo.py) against a hand-computed example, and the policy log-probability estimators
(rl/policy_logp.py) unbiased for their targets, computed exactly by enumerating every mask on the reference
model (../shared/fixtures/llada_reference, the tiny upstream-LLaDA model).

    pytest tests/engines/llada_plus/rl/test_grpo.py -q
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from mdm.engines.llada_plus.model import LLaDAModelLM
from mdm.engines.llada_plus.rl.grpo import group_advantages, grpo_loss
from mdm.engines.llada_plus.rl.policy_logp import completion_logps, mask_ratios

MASK = 255  # the reference model's [MASK] id


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 2.0])  # 3 prompts x 2 completions
    assert group_advantages(rewards, 2).tolist() == [0.5, -0.5, 0.0, 0.0, -1.0, 1.0]  # d1: r - group mean
    scaled = group_advantages(rewards, 2, scale_by_std=True)  # / (sample std + 1e-4)
    s1, s3 = math.sqrt(0.5), math.sqrt(2.0)
    expected = [0.5 / (s1 + 1e-4), -0.5 / (s1 + 1e-4), 0.0, 0.0, -1.0 / (s3 + 1e-4), 1.0 / (s3 + 1e-4)]
    assert scaled.tolist() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="5 rewards do not split into groups of 2"):
        group_advantages(torch.zeros(5), 2)


def test_grpo_loss_by_hand():
    # 2 prompts x 2 completions, 2 completion tokens; rewards [1, 0, 1, 1] -> advantages [0.5, -0.5, 0, 0]
    adv = torch.tensor([0.5, -0.5, 0.0, 0.0])
    logps = torch.tensor([[-1.0, -2.0], [-0.5, 5.0], [-1.0, -1.0], [-3.0, -0.1]], requires_grad=True)
    old = torch.tensor([[-1.2, -2.0], [-0.2, 0.0], [-1.0, -1.0], [-3.0, -0.1]])
    ref = torch.tensor([[-1.0, -1.5], [-0.5, 0.0], [-2.0, -1.0], [-3.0, -0.1]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1]])  # row 1's second token is padding
    loss, stats = grpo_loss(logps, old, ref, adv, mask, epsilon=0.2, beta=0.1)
    # row 0, token 0: ratio e^0.2 = 1.2214 -> clipped to 1.2 (the smaller term with A > 0): -0.5 * 1.2
    # row 0, token 1: ratio 1: -0.5; KL(delta = 0.5) = e^0.5 - 0.5 - 1
    # row 1, token 0: ratio e^-0.3 = 0.7408 -> clipped to 0.8 (the smaller term with A < 0: -0.4): +0.4
    # row 2, token 0: A = 0; KL(delta = -1) = e^-1 + 1 - 1
    kl = [math.exp(0.5) - 1.5, math.exp(-1.0)]
    total = -0.6 + (-0.5 + 0.1 * kl[0]) + 0.4 + 0.1 * kl[1]
    assert float(loss.detach()) == pytest.approx(total / 7, rel=1e-6)
    assert stats["kl"] == pytest.approx(sum(kl) / 7, rel=1e-6)
    assert stats["clip_ratio"] == pytest.approx(2 / 7)
    loss.backward()
    # Gradient: zero where the clipped term is active; -A * ratio / 7 plus beta * (1 - e^delta) / 7 elsewhere
    expected = torch.tensor([[0.0, (-0.5 + 0.1 * (1 - math.exp(0.5))) / 7], [0.0, 0.0],
                             [0.1 * (1 - math.exp(-1.0)) / 7, 0.0], [0.0, 0.0]])
    assert torch.allclose(logps.grad, expected, atol=1e-7)


def test_one_inner_update_is_the_plain_policy_gradient():
    """mu = 1 (old_logps None): the ratio is 1 and d loss / d logp_i = -A / tokens (beta 0)."""
    logps = torch.randn(4, 3, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5, 0.0])
    loss, stats = grpo_loss(logps, None, None, adv, torch.ones(4, 3), beta=0.0)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(-float(adv.sum()) * 3 / 12) and "kl" not in stats
    assert torch.allclose(logps.grad, (-adv / 12)[:, None].expand(4, 3))


@pytest.fixture(scope="module")
def model(shared_dir: Path) -> LLaDAModelLM:
    return LLaDAModelLM.from_pretrained(str(shared_dir / "fixtures" / "llada_reference")).eval().double()


SEQ = [17, 42, 99, 7, 120, 3, 254, 61]  # 4 prompt tokens, 4 completion tokens
P, T = 4, 4


@torch.no_grad()
def _logps_with(model, prompt_masked, completion_masked) -> torch.Tensor:
    """log p(c_i | the sequence with those positions masked), [T], by one plain forward."""
    x = torch.tensor([SEQ])
    x[0, :P][torch.tensor(prompt_masked, dtype=torch.bool)] = MASK
    x[0, P:][torch.tensor(completion_masked, dtype=torch.bool)] = MASK
    logp = torch.log_softmax(model(x).logits[0, P:].double(), dim=-1)
    return logp.gather(-1, torch.tensor(SEQ[P:])[:, None])[:, 0]


def _d1_target(model, p: float) -> torch.Tensor:
    """E over prompt masks m ~ Bernoulli(p)^P of log p(c_i | prompt masked by m, completion all masked)."""
    out = torch.zeros(T, dtype=torch.float64)
    for m in itertools.product([0, 1], repeat=P):
        out += p ** sum(m) * (1 - p) ** (P - sum(m)) * _logps_with(model, m, [1] * T)
    return out


def _coupled_target(model) -> torch.Tensor:
    """sum over masked sets M containing i of 2 k! (T-k)! / (T+1)! log p(c_i | completion with M masked)."""
    out = torch.zeros(T, dtype=torch.float64)
    for m in itertools.product([0, 1], repeat=T):
        k = sum(m)
        if k:
            w = 2 * math.factorial(k) * math.factorial(T - k) / math.factorial(T + 1)
            out += w * torch.tensor(m, dtype=torch.float64) * _logps_with(model, [0] * P, m)
    return out


@pytest.mark.parametrize("estimator,stratify", [("d1", False), ("mirror", False), ("coupled", False),
                                                ("coupled", True)])
def test_estimators_are_unbiased_for_their_exact_targets(model, estimator, stratify):
    n = 4000
    g = torch.Generator().manual_seed(7)
    seqs = torch.tensor([SEQ]).repeat(n, 1)
    with torch.no_grad():
        est = completion_logps(model, seqs, prompt_len=P, mask_id=MASK, estimator=estimator, p_mask_prompt=0.3,
                               stratify_t=stratify, generator=g).double()
    exact = _coupled_target(model) if estimator == "coupled" else _d1_target(model, 0.3)
    mean, se = est.mean(dim=0), est.std(dim=0) / math.sqrt(n)
    assert (se > 0).all()
    assert ((mean - exact).abs() < 4 * se + 1e-9).all(), (mean, exact, se)


def test_the_estimators_differ_in_variance_not_in_target(model):
    """The two d1-target estimators agree in mean, and the antithetic pair has the smaller variance."""
    n = 4000
    seqs = torch.tensor([SEQ]).repeat(n, 1)
    with torch.no_grad():
        one = completion_logps(model, seqs, prompt_len=P, mask_id=MASK, estimator="d1", p_mask_prompt=0.3,
                               generator=torch.Generator().manual_seed(1)).double()
        pair = completion_logps(model, seqs, prompt_len=P, mask_id=MASK, estimator="mirror", p_mask_prompt=0.3,
                                generator=torch.Generator().manual_seed(2)).double()
    se = (one.var(dim=0) / n + pair.var(dim=0) / n).sqrt()
    assert ((one.mean(dim=0) - pair.mean(dim=0)).abs() < 4 * se).all(), (one.mean(dim=0), pair.mean(dim=0), se)
    assert (pair.var(dim=0) < one.var(dim=0)).all(), (pair.var(dim=0), one.var(dim=0))


def test_stratified_ratios_are_one_per_bin():
    t = mask_ratios(8, torch.Generator().manual_seed(0), torch.device("cpu"), stratify=True)
    assert sorted(int(v * 8) for v in t) == list(range(8)) and ((t >= 0) & (t < 1)).all()


def test_bad_estimator_is_named(model):
    with pytest.raises(ValueError, match="unknown policy log-probability estimator 'ratio'; valid: d1, mirror"):
        completion_logps(model, torch.tensor([SEQ]), prompt_len=P, mask_id=MASK, estimator="ratio")
