"""Forward-process masks: eligibility, per-token masking frequency, MIRROR antithetic properties.

Statistical tolerances: a frequency estimated from N Bernoulli(p) draws has standard error
sqrt(p (1 - p) / N); each per-token check allows 5 standard errors (two-sided tail 5.7e-7 per
token, so < 1e-3 false-alarm probability over all tokens checked here).
"""

from __future__ import annotations

import math

import torch

from mdm.engines.llada_plus.diffusion import (IGNORE_INDEX, apply_mask, eligible, mask_prob, mirror_masks,
                                              normal_mask)

N_DRAWS = 4000


def _labels(bsz: int, length: int, prompt: int, pad: int) -> torch.Tensor:
    labels = torch.arange(bsz * length).reshape(bsz, length) % 50 + 1
    labels[:, :prompt] = IGNORE_INDEX
    if pad:
        labels[:, -pad:] = IGNORE_INDEX
    return labels


def test_mask_prob_affine():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(mask_prob(t, 1e-3), torch.tensor([1e-3, 0.5 * 0.999 + 1e-3, 1.0]))


def test_prompt_and_padding_never_masked():
    labels = _labels(3, 20, prompt=5, pad=4)
    g = torch.Generator().manual_seed(0)
    for p_val in (0.3, 1.0):
        p = torch.full((3,), p_val)
        for _ in range(200):
            for m in (normal_mask(labels, p, g), *mirror_masks(labels, p, g)):
                assert not m[:, :5].any() and not m[:, -4:].any()
    # At p = 1 every eligible token is masked, and apply_mask swaps exactly those for the mask id.
    m = normal_mask(labels, torch.ones(3), g)
    assert torch.equal(m, eligible(labels))
    ids = labels.clamp(min=0)
    noisy = apply_mask(ids, m, 99)
    assert torch.equal(noisy == 99, m) and torch.equal(noisy[~m], ids[~m])


def _check_frequency(masks: torch.Tensor, p: torch.Tensor, ok: torch.Tensor) -> None:
    """masks [N, B, L] bool; p [B]; each eligible token's frequency within 5 SE of p."""
    freq = masks.float().mean(0)  # [B, L]
    for b in range(p.shape[0]):
        pb = float(p[b])
        se = math.sqrt(pb * (1 - pb) / masks.shape[0])
        dev = (freq[b][ok[b]] - pb).abs().max().item()
        assert dev < 5 * se, f"row {b}: p={pb:.3f}, max |freq - p| = {dev:.4f} >= 5 SE = {5 * se:.4f}"


def test_masking_frequency_normal_and_each_mirror_mask():
    labels = _labels(4, 16, prompt=3, pad=2)
    ok = eligible(labels)
    p = mask_prob(torch.tensor([0.05, 0.3, 0.5, 0.85]))
    big = labels.repeat(N_DRAWS, 1)  # N_DRAWS independent copies of the batch in one call
    g = torch.Generator().manual_seed(1)
    normal = normal_mask(big, p.repeat(N_DRAWS), g).reshape(N_DRAWS, 4, 16)
    m1, m2 = mirror_masks(big, p.repeat(N_DRAWS), g)
    _check_frequency(normal, p, ok)
    _check_frequency(m1.reshape(N_DRAWS, 4, 16), p, ok)
    _check_frequency(m2.reshape(N_DRAWS, 4, 16), p, ok)


def test_mirror_masks_are_complements_at_one_half():
    # p = 0.5 exactly (t = 0.5 with eps = 0; with eps > 0 this is at t = (0.5 - eps) / (1 - eps)).
    labels = _labels(8, 32, prompt=4, pad=3)
    p = mask_prob(torch.full((8,), 0.5), eps=0.0)
    g = torch.Generator().manual_seed(2)
    for _ in range(50):
        m1, m2 = mirror_masks(labels, p, g)
        assert torch.equal(m1 ^ m2, eligible(labels)) and not (m1 & m2).any()


def test_mirror_per_token_covariance_never_positive():
    # Closed form for indicators 1[u < p], 1[u > 1 - p]: cov = max(0, 2p - 1) - p^2 <= 0 for every p.
    labels = torch.ones((1, 64), dtype=torch.long)
    ps = torch.linspace(0.01, 0.99, 25)
    g = torch.Generator().manual_seed(3)
    for p_val in ps.tolist():
        p = torch.full((N_DRAWS,), p_val)
        m1, m2 = mirror_masks(labels.repeat(N_DRAWS, 1), p, g)
        a, b = m1.double(), m2.double()
        cov = ((a * b).mean(0) - a.mean(0) * b.mean(0))  # [64] per-token covariance
        expected = max(0.0, 2 * p_val - 1) - p_val ** 2
        # SE of a covariance of indicators is below 0.5 / sqrt(N); allow 5 of them.
        tol = 5 * 0.5 / math.sqrt(N_DRAWS)
        assert cov.max().item() <= min(expected + tol, tol), f"p={p_val}: positive covariance {cov.max()}"
        assert abs(cov.mean().item() - expected) < tol / 4, f"p={p_val}: mean cov {cov.mean()} vs {expected}"
