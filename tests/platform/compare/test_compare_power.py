"""Powered seeds and the verdict in words (paired_stats.next_seed_count, verdict_lines), against hand computation.

next_seed_count: the half-width of a paired t interval falls like t_{n-1} sd / sqrt(n); asked for a target, it
plans the n at which the widest interval would reach it with its sd held (never fewer than one more seed, never
more than max_seeds), and stops when every interval is within the target.
"""

from __future__ import annotations

import math

from scipy import stats

from mdm.platform.compare.paired_stats import next_seed_count, paired_difference, verdict_lines

BASE = {1: 0.50, 2: 0.52, 3: 0.49, 4: 0.51}


def _pair(other: dict, base: dict = BASE, metric: str = "eval/loss_quad"):
    return paired_difference(base, other, baseline="Standard", metric=metric)


def test_next_seed_count_plans_from_the_widest_interval():
    wide = _pair({1: 0.40, 2: 0.55, 3: 0.45, 4: 0.47})
    narrow = _pair({1: 0.49, 2: 0.51, 3: 0.48, 4: 0.50})   # every difference -0.01: zero width
    d = [0.40 - 0.50, 0.55 - 0.52, 0.45 - 0.49, 0.47 - 0.51]
    sd = stats.tstd(d)
    half = stats.t.ppf(0.975, 3) * sd / 2
    assert math.isclose(wide.halfwidth, half, rel_tol=1e-9)
    target = half / 2
    assert next_seed_count([wide, narrow], target, 4, 100) == math.ceil(4 * (half / target) ** 2) == 16
    assert next_seed_count([wide, narrow], target, 4, 10) == 10          # capped
    assert next_seed_count([wide, narrow], half * 1.01, 4, 100) == 4     # met: no more seeds
    assert next_seed_count([wide], half * 0.999, 4, 100) == 5            # barely missed: at least one more
    assert next_seed_count([wide], target, 10, 10) == 10                 # nothing left to add
    one = paired_difference({1: 0.5}, {1: 0.4})
    assert next_seed_count([one], 0.01, 1, 5) == 2                       # no interval yet: one more seed


def test_verdict_lines_say_what_is_and_is_not_established():
    better = _pair({1: 0.45, 2: 0.47, 3: 0.44, 4: 0.46})               # -0.05 every seed: separable
    noise = _pair({1: 0.55, 2: 0.47, 3: 0.50, 4: 0.52})
    control = _pair({1: 0.40, 2: 0.41, 3: 0.40, 4: 0.42})
    lines = verdict_lines([better, noise, control], ["PPOTS(EPR)", "MIRROR", "Standard batch×2"],
                          ["Standard batch×2"], target=0.001)
    assert lines[0].startswith("positive control: Standard batch×2 vs Standard on eval/loss_quad") and \
        lines[0].endswith(": separable")
    assert lines[1].startswith("PPOTS(EPR) vs Standard on eval/loss_quad = -0.0500") and \
        "established at 95% (lower)" in lines[1]
    assert lines[2].startswith("MIRROR vs Standard") and "not established" in lines[2] and "detectable" in lines[2]
    assert lines[3] == "target CI half-width 0.001 on eval/loss_quad: not met within compare.max_seeds"
    flat = _pair({1: 0.51, 2: 0.51, 3: 0.50, 4: 0.50})
    weak = verdict_lines([flat], ["Standard batch×2"], ["Standard batch×2"])
    assert weak == [weak[0]] and "not separable: this regime cannot show an effect of that size" in weak[0]


def test_no_paired_values_no_verdict():
    empty = paired_difference({}, {}, baseline="Standard", metric="eval/loss_quad")
    assert verdict_lines([empty], ["MIRROR"], [], target=0.01) == [
        "no paired values of eval/loss_quad: no verdict (is the metric logged by every trial?)"]
