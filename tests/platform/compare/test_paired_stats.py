"""paired_stats against scipy on fixed numbers (no Ray): the interval is scipy.stats.ttest_rel's, the p-value is
scipy.stats.permutation_test's exact paired ("samples") test of mean(x - y), the minimum detectable difference
is the t-quantile formula computed directly (and has about 0.8 power by the noncentral t); rows pair by seed,
a seed missing in one arm leaves that pair only; n < 2 gives nan interval / mdd and p 1.0; positive controls
get a verdict sentence.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mdm.platform.compare import paired_stats as ps

BASE = [0.412, 0.398, 0.455, 0.430, 0.401, 0.389, 0.447, 0.420]
OTHER = [0.431, 0.405, 0.468, 0.429, 0.426, 0.401, 0.463, 0.437]
SEEDS = [11, 12, 13, 14, 15, 16, 17, 18]


def _mean_diff(x, y, axis=-1):
    return np.mean(x - y, axis=axis)


def _scipy_p(x, y) -> float:
    res = stats.permutation_test((np.asarray(x), np.asarray(y)), _mean_diff, permutation_type="samples",
                                 n_resamples=np.inf, alternative="two-sided", vectorized=True)
    return float(res.pvalue)


def test_interval_p_value_and_mdd_match_scipy():
    p = ps.paired_difference(dict(zip(SEEDS, BASE)), dict(zip(SEEDS, OTHER)), baseline="Standard",
                             metric="eval/accuracy")
    x, y = np.array(OTHER), np.array(BASE)
    d = x - y
    assert p.n == 8 and p.delta_mean == pytest.approx(np.mean(d)) and p.sd == pytest.approx(np.std(d, ddof=1))
    ci = stats.ttest_rel(x, y).confidence_interval(0.95)
    assert p.ci95 == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert p.p_value == pytest.approx(_scipy_p(x, y), rel=1e-12)
    n, se = 8, np.std(d, ddof=1) / math.sqrt(8)
    assert p.mdd == pytest.approx((stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * se, rel=1e-12)
    # the approximation's power at the mdd (noncentral t, two-sided 0.05) is about 0.8
    crit, nc = stats.t.ppf(0.975, n - 1), p.mdd / se
    power = stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)
    assert 0.75 < power < 0.85
    assert p.separable and p.as_dict() == {
        "baseline": "Standard", "metric": "eval/accuracy", "delta_mean": p.delta_mean, "ci95": list(p.ci95),
        "p_value": p.p_value, "n": 8, "sd": p.sd, "mdd": p.mdd}


@pytest.mark.parametrize("n", [2, 3, 5, 10, 13])
def test_p_value_matches_scipy_exact_test_at_several_n(n):
    rng = np.random.default_rng(n)
    y = rng.normal(size=n)
    x = y + rng.normal(0.2, 1.0, size=n)
    p = ps.paired_difference(dict(enumerate(y)), dict(enumerate(x)))
    assert p.p_value == pytest.approx(_scipy_p(x, y), rel=1e-12)
    ci = stats.ttest_rel(x, y).confidence_interval(0.95)
    assert p.ci95 == pytest.approx((ci.low, ci.high), rel=1e-10)
    # a tie: the observed difference is 0, every pattern is as extreme: p is 1 (scipy clips 2 * min to 1)
    assert ps.sign_flip_p_value([1.0, -1.0] * (n // 2) + [0.0] * (n % 2)) == _scipy_p(
        np.array([1.0, -1.0] * (n // 2) + [0.0] * (n % 2)), np.zeros(n))


def test_monte_carlo_beyond_sixteen_pairs_is_close_to_the_exact_test():
    rng = np.random.default_rng(3)
    d = rng.normal(0.3, 1.0, size=18)  # 2^18 patterns: the exact test by enumeration here, independently
    signs = 1 - 2 * ((np.arange(2 ** 18)[:, None] >> np.arange(18)) & 1)
    null = signs @ d / 18
    exact = 2 * min(np.mean(null <= d.mean() + 1e-12), np.mean(null >= d.mean() - 1e-12))
    mc = ps.sign_flip_p_value(d)
    assert mc == ps.sign_flip_p_value(d)  # seeded
    assert abs(mc - exact) < 4 * 2 * math.sqrt(exact * (1 - exact) / ps.MC_DRAWS) + 1e-3


def test_fewer_than_two_pairs():
    one = ps.paired_difference({1: 0.5, 2: 0.4}, {1: 0.7, 3: 0.9})
    assert one.n == 1 and one.delta_mean == pytest.approx(0.2) and one.p_value == 1.0
    assert all(math.isnan(v) for v in (one.sd, *one.ci95, one.mdd)) and not one.separable
    # the exact test on one pair (scipy refuses n = 1): null {+d, -d}, P(<= d) = 1, P(>= d) = 1/2, p = 2 * 1/2
    assert ps.sign_flip_p_value([0.2]) == 1.0
    none = ps.paired_difference({1: 0.5}, {2: 0.7})
    assert none.n == 0 and math.isnan(none.delta_mean) and none.p_value == 1.0
    assert none.as_dict()["ci95"] == [None, None] and none.as_dict()["mdd"] is None


def _rows():
    rows = []
    for group, vals in (("Standard", BASE), ("MIRROR", OTHER), ("Standard batch×2", [v - 0.02 for v in BASE])):
        for seed, v in zip(SEEDS, vals):
            rows.append({"trial_id": f"{group}-{seed}", "label": f"{group} seed={seed}", "group": group,
                         "status": "FINISHED", "seed": seed, "metrics": {"eval/loss": v}, "curve": []})
    rows[8]["status"] = "ERROR"           # MIRROR seed 11 failed: left out of MIRROR's pairs
    rows[9]["metrics"] = {}               # MIRROR seed 12 has no eval/loss
    del rows[3]                           # Standard seed 14 missing: left out of every pair
    return rows


def test_paired_table_pairs_by_seed_and_drops_missing_seeds():
    table = ps.paired_table(_rows(), "Standard", ["eval/loss"])
    assert list(table) == ["MIRROR", "Standard batch×2"]
    mirror = table["MIRROR"]["eval/loss"]
    keep = [i for i, s in enumerate(SEEDS) if s not in (11, 12, 14)]
    x, y = np.array(OTHER)[keep], np.array(BASE)[keep]
    ci = stats.ttest_rel(x, y).confidence_interval(0.95)
    assert mirror.n == 5 and mirror.ci95 == pytest.approx((ci.low, ci.high)) and mirror.baseline == "Standard"
    assert mirror.p_value == pytest.approx(_scipy_p(x, y))
    assert table["Standard batch×2"]["eval/loss"].n == 7
    with pytest.raises(ValueError, match="baseline 'Nope'"):
        ps.paired_table(_rows(), "Nope", ["eval/loss"])
    twice = _rows() + [dict(_rows()[0])]
    with pytest.raises(ValueError, match="seed 11 twice"):
        ps.paired_table(twice, "Standard", ["eval/loss"])


def test_halfwidths_and_control_verdict():
    table = ps.paired_table(_rows(), "Standard", ["eval/loss"])
    widest = max(p.halfwidth for g in table.values() for p in g.values())
    assert ps.halfwidths_met(table, widest) and not ps.halfwidths_met(table, widest * 0.99)
    assert ps.halfwidths_met(table["MIRROR"]["eval/loss"], widest) and not ps.halfwidths_met({}, 1.0)
    (v,) = ps.control_verdict(table, ["Standard batch×2", "absent"], "eval/loss")
    p = table["Standard batch×2"]["eval/loss"]
    assert v.separable and v.sentence == (f"positive control: Standard batch×2 vs Standard on eval/loss = "
                                          f"{p.delta_mean:+.4f} [{p.ci95[0]:+.4f}, {p.ci95[1]:+.4f}] (n=7): "
                                          "separable")
    (w,) = ps.control_verdict(table, ["MIRROR"], "eval/loss", subject="PPOTS(EPR)")
    lo, hi = table["MIRROR"]["eval/loss"].ci95
    assert w.separable == (lo > 0 or hi < 0)
    if not w.separable:
        assert w.sentence.endswith("not separable: this regime cannot show an effect of that size, so neither "
                                   "can PPOTS(EPR)")
    flat = [r for r in _rows() if r["group"] != "Standard batch×2"] + [
        {"group": "Standard batch×2", "status": "FINISHED", "seed": s, "metrics": {"eval/loss": b + e}}
        for s, b, e in zip(SEEDS, BASE, [0.01, -0.01, 0.02, -0.02, 0.01, -0.01, 0.0, 0.005])]
    (u,) = ps.control_verdict(ps.paired_table(flat, "Standard", ["eval/loss"]), ["Standard batch×2"], "eval/loss")
    assert not u.separable and u.sentence.endswith("so neither can P-POTS") and "(n=7): not separable" in u.sentence
