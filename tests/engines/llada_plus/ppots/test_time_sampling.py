"""P-POTS densities: EPR recovers a known w(t), AP interpolates the grid, sampling follows p(t).

Tolerances are stated at each assertion. The sampling checks use scipy's KS and chi-square tests at
significance 1e-3 with fixed seeds (they fail for a sampler that is off by a few percent of mass).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from mdm.engines.llada_plus.ppots.density import PiecewiseLinearDensity, tabulate
from mdm.engines.llada_plus.ppots.time_sampling import (AP, EPR, TimeSampler, epr_unnormalised, fit_density,
                                                  uniform_grid)
from mdm.platform.registry import get_registry

TRUE = dict(a=4.0, b=2.0, A=0.5, r=2.0, q=3.0, m=2.0, k=1.5)


def test_p_models_registered():
    reg = get_registry("p_models")
    assert reg.get("EPR") is EPR and reg.get("AP") is AP
    with pytest.raises(KeyError, match="did you mean 'EPR'"):
        reg.get("EPX")


def test_epr_fit_recovers_synthetic_parameters():
    grid = uniform_grid(16)
    w = epr_unnormalised(grid, TRUE)
    fit = EPR().fit(grid, w, n_starts=8, seed=0)
    true_density = tabulate(lambda t: epr_unnormalised(t, TRUE))
    xs = np.linspace(0.0, 1.0, 1001)
    # Density closeness: pointwise relative error under 0.1 % over all of [0, 1].
    assert np.max(np.abs(fit.pdf(xs) / true_density.pdf(xs) - 1)) < 1e-3
    assert fit.kl < 1e-8
    # The exponents are identified by the shape (each term dominates somewhere): within 5 %.
    for name in ("r", "q", "m", "k"):
        assert fit.params[name] == pytest.approx(TRUE[name], rel=0.05), name
    # Only ratios of a, b, A^2 matter (p is normalised): within 20 %.
    for name in ("a", "b"):
        got = fit.params[name] / fit.params["A"] ** 2
        assert got == pytest.approx(TRUE[name] / TRUE["A"] ** 2, rel=0.2), name


def test_epr_fit_respects_bounds():
    grid = uniform_grid(12)
    w = 1.0 + 0.5 * np.sin(6 * grid) ** 2  # not in the family
    fit = EPR().fit(grid, w, n_starts=3, seed=1)
    p = fit.params
    assert p["a"] > 0 and p["b"] > 0 and p["A"] > 0 and p["k"] >= 0
    assert min(p["r"], p["q"], p["m"]) >= 1.0


def test_ap_interpolates_exactly_and_is_flat_at_the_ends():
    grid = uniform_grid(10)
    w = np.array([3.0, 2.0, 1.5, 1.0, 0.8, 0.9, 1.2, 2.0, 2.5, 4.0])
    d = AP().fit(grid, w)
    ratio = d.pdf(grid) / w
    assert np.allclose(ratio, ratio[0], rtol=1e-12, atol=0)  # pdf ∝ w exactly at the grid points
    z = 1.0 / ratio[0]
    assert d.pdf(0.0) * z == pytest.approx(w[0]) and d.pdf(1.0) * z == pytest.approx(w[-1])
    assert d.pdf(0.5 * grid[0]) * z == pytest.approx(w[0])
    assert d.cdf(1.0) == pytest.approx(1.0)
    mid = 0.5 * (grid[3] + grid[4])  # linear in between
    assert d.pdf(mid) * z == pytest.approx(0.5 * (w[3] + w[4]))


def test_density_cdf_icdf_are_inverse_and_normalised():
    d = PiecewiseLinearDensity([0.0, 0.1, 0.4, 0.7, 1.0], [0.0, 5.0, 1.0, 1.0, 3.0])
    xs = np.linspace(0, 1, 20001)
    assert np.trapezoid(d.pdf(xs), xs) == pytest.approx(1.0, abs=1e-6)
    u = np.linspace(0, 1, 1001)
    assert np.allclose(d.cdf(d.icdf(u)), u, atol=1e-12)
    # cdf is the integral of pdf (numerical quadrature, independent of the closed form)
    for t in (0.05, 0.3, 0.55, 0.9):
        sub = np.linspace(0, t, 20001)
        assert d.cdf(t) == pytest.approx(np.trapezoid(d.pdf(sub), sub), abs=1e-7)
    m = d.mix_uniform(0.25)
    assert np.allclose(m.pdf(xs), 0.75 * d.pdf(xs) + 0.25)


@pytest.mark.parametrize("p_model", ["EPR", "AP"])
def test_sampled_t_follow_the_density(p_model):
    grid = uniform_grid(16)
    w = epr_unnormalised(grid, TRUE)
    density = fit_density(p_model, grid, w, mix_uniform=0.1, n_starts=2, seed=0)
    t, weight = TimeSampler(density, max_is_weight=100.0).sample(40000, torch.Generator().manual_seed(0))
    t = t.double().numpy()
    assert stats.kstest(t, density.cdf).pvalue > 1e-3
    edges = np.linspace(0, 1, 21)
    expected = np.diff(density.cdf(edges)) * len(t)
    observed = np.histogram(t, edges)[0]
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # The sampler is not uniform here: the KS test against U(0, 1) must reject (the test can fail).
    assert stats.kstest(t, "uniform").pvalue < 1e-6
    # Weights are 1 / p(t); with mix 0.1 the pdf is >= 0.1 so they stay <= 10.
    assert np.allclose(weight.double().numpy(), 1.0 / density.pdf(t), rtol=1e-5)
    assert weight.max() <= 10.0 + 1e-4


def test_weights_capped_and_uniform_sampler():
    d = PiecewiseLinearDensity([0.0, 0.5, 1.0], [0.01, 1.0, 0.01])
    _, weight = TimeSampler(d, max_is_weight=3.0).sample(5000, torch.Generator().manual_seed(0))
    assert weight.max().item() == pytest.approx(3.0)
    t, weight = TimeSampler(None).sample(5000, torch.Generator().manual_seed(0))
    assert torch.all(weight == 1) and stats.kstest(t.numpy(), "uniform").pvalue > 1e-3


def test_same_generator_seed_same_draws():
    d = fit_density("AP", uniform_grid(8), np.arange(1.0, 9.0), mix_uniform=0.1)
    a = TimeSampler(d).sample(64, torch.Generator().manual_seed(7))
    b = TimeSampler(PiecewiseLinearDensity.from_state_dict(d.state_dict())).sample(
        64, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_fit_rejects_bad_w():
    with pytest.raises(ValueError, match="w must be finite and > 0"):
        AP().fit(uniform_grid(4), np.array([1.0, 0.0, 1.0, 1.0]))


def test_from_uniform_is_what_sample_does_with_its_uniforms():
    dens = PiecewiseLinearDensity([0.0, 0.1, 1.0], [5.0, 1.0, 1.0]).mix_uniform(0.1)
    sampler = TimeSampler(dens, max_is_weight=3.0)
    t, w = sampler.sample(64, torch.Generator().manual_seed(5))
    u = torch.rand(64, generator=torch.Generator().manual_seed(5), dtype=torch.float64).numpy()
    t2, w2 = sampler.from_uniform(u)
    assert torch.equal(t, t2) and torch.equal(w, w2)
    assert torch.all(w2 <= 3.0) and torch.allclose(w2, torch.clamp(1 / torch.as_tensor(dens.pdf(t2.double().numpy())),
                                                                   max=3.0).float(), rtol=1e-5)
    tu, wu = TimeSampler(None).from_uniform(u)
    assert torch.allclose(tu.double(), torch.as_tensor(u), atol=1e-7) and torch.all(wu == 1)
