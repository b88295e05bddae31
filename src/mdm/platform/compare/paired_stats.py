"""Paired statistics of a comparison: each configuration against a baseline, paired by seed.

Within a seed, configurations share the initial weights, the data order and the evaluation items and
randomness, so the difference other - baseline per seed cancels what the seeds share; a paired test on those
differences is far more sensitive than comparing two means +- std.

    p = paired_difference({1: 0.50, 2: 0.61}, {1: 0.55, 2: 0.64})  # {seed: value} of the baseline, of the other
    p.delta_mean, p.ci95, p.p_value, p.mdd, p.as_dict()
    table = paired_table(rows, "Standard lr=1e-3", ["eval/accuracy", "eval/loss"])  # {group: {metric: Paired}}
    halfwidths_met(table, 0.01)                  # every CI half-width <= 0.01: enough seeds
    for v in control_verdict(table, ["Standard batch×2 lr=1e-3"], "eval/loss"): print(v.sentence)

- `delta_mean`: the mean over seeds of other - baseline; `sd`: the sample sd (n - 1) of those differences;
- `ci95`: Student's t interval on the differences, n - 1 degrees of freedom (scipy.stats.ttest_rel's);
- `p_value`: the paired permutation (sign-flip) test, two-sided, by scipy.stats.permutation_test's convention
  (twice the smaller one-sided tail, each counting the observed value, at most 1): exact over all 2^n sign
  patterns for n <= 16; beyond, a Monte Carlo of 2^16 seeded draws with the (count + 1) / (draws + 1)
  correction;
- `mdd`: the minimum detectable difference at this n, two-sided alpha, power 0.8:
  (t_{1-alpha/2, n-1} + t_{0.8, n-1}) * sd / sqrt(n), from the OBSERVED sd (an estimate, as noisy as sd is).

n < 2 (one pair or none): sd, ci95 and mdd are nan and p_value is 1.0 (at n = 1 the exact test gives 1.0 too:
both sign patterns are as extreme as the observed one); n = 0 also leaves delta_mean nan. `as_dict` writes nan
as None (JSON null). All differences equal (sd = 0) gives a zero-width interval and mdd 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from scipy import stats

EXACT_MAX_N = 16  # 2^16 sign patterns enumerated; beyond, Monte Carlo
MC_DRAWS = 2 ** 16
MC_SEED = 0
POWER = 0.8
NOT_SEPARABLE = "this regime cannot show an effect of that size, so neither can {subject}"


@dataclass(frozen=True)
class Paired:
    """One configuration against the baseline on one metric, paired by seed (see the module docstring)."""

    baseline: str
    metric: str
    n: int
    delta_mean: float
    sd: float
    ci95: tuple[float, float]
    p_value: float
    mdd: float

    @property
    def halfwidth(self) -> float:
        return (self.ci95[1] - self.ci95[0]) / 2

    @property
    def separable(self) -> bool:
        """The interval excludes 0 (nan intervals never do)."""
        lo, hi = self.ci95
        return lo > 0 or hi < 0

    def as_dict(self) -> dict[str, Any]:
        """{"baseline", "metric", "delta_mean", "ci95": [low, high], "p_value", "n", "sd", "mdd"}; nan -> None."""

        def clean(x: float) -> Any:
            return None if math.isnan(x) else float(x)

        return {"baseline": self.baseline, "metric": self.metric, "delta_mean": clean(self.delta_mean),
                "ci95": [clean(self.ci95[0]), clean(self.ci95[1])], "p_value": clean(self.p_value),
                "n": self.n, "sd": clean(self.sd), "mdd": clean(self.mdd)}


def sign_flip_p_value(diffs: Sequence[float]) -> float:
    """Two-sided p-value of the paired sign-flip test of mean(diffs) = 0, scipy.stats.permutation_test's
    convention: exact for n <= EXACT_MAX_N, else MC_DRAWS seeded draws (observed counted once more)."""
    d = np.asarray(diffs, dtype=float)
    n = d.size
    if n == 0:
        return 1.0
    observed = float(np.mean(d))
    if n <= EXACT_MAX_N:
        bits = (np.arange(2 ** n)[:, None] >> np.arange(n)) & 1
        null, adjust = (1 - 2 * bits) @ d / n, 0
    else:
        rng = np.random.default_rng(MC_SEED)
        null = np.concatenate([rng.choice([-1.0, 1.0], size=(4096, n)) @ d / n for _ in range(MC_DRAWS // 4096)])
        adjust = 1
    gamma = abs(observed) * np.finfo(float).eps * 100  # scipy's tolerance for numerically equal statistics
    less = (np.count_nonzero(null <= observed + gamma) + adjust) / (null.size + adjust)
    greater = (np.count_nonzero(null >= observed - gamma) + adjust) / (null.size + adjust)
    return float(min(1.0, 2 * min(less, greater)))


def paired_difference(base: Mapping[Hashable, float], other: Mapping[Hashable, float], *, alpha: float = 0.05,
                      baseline: str = "", metric: str = "") -> Paired:
    """other - base over the seeds present, with a finite value, in both (`alpha`: of the interval, and the
    two-sided level of the minimum detectable difference). `baseline` / `metric` only label the result."""
    seeds = [s for s in base if s in other and _finite(base[s]) and _finite(other[s])]
    d = np.array([float(other[s]) - float(base[s]) for s in seeds], dtype=float)
    n = int(d.size)
    nan = float("nan")
    if n < 2:
        return Paired(baseline, metric, n, float(d[0]) if n else nan, nan, (nan, nan), 1.0, nan)
    mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    se = sd / math.sqrt(n)
    t_crit = float(stats.t.ppf(1 - alpha / 2, n - 1))
    mdd = (t_crit + float(stats.t.ppf(POWER, n - 1))) * se
    return Paired(baseline, metric, n, mean, sd, (mean - t_crit * se, mean + t_crit * se),
                  sign_flip_p_value(d), mdd)


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def by_seed(rows: Iterable[Mapping[str, Any]], group: str, metric: str) -> dict[Hashable, float]:
    """{seed: value of `metric`} of the FINISHED rows of `group` (a seed twice is an error: pairing is by seed)."""
    out: dict[Hashable, float] = {}
    for r in rows:
        if r.get("group") != group or r.get("status") != "FINISHED":
            continue
        if r.get("seed") in out:
            raise ValueError(f"paired statistics: configuration {group!r} has seed {r.get('seed')!r} twice")
        out[r.get("seed")] = r.get("metrics", {}).get(metric)
    return out


def paired_table(rows: Sequence[Mapping[str, Any]], baseline: str, metrics: Sequence[str], *,
                 alpha: float = 0.05) -> dict[str, dict[str, Paired]]:
    """{group: {metric: Paired}} for every group but `baseline`, in first-seen order, pairing FINISHED rows by
    seed; a seed missing (or not finite) in either arm is left out of that pair's n."""
    groups = list(dict.fromkeys(r["group"] for r in rows))
    if baseline not in groups:
        raise ValueError(f"paired statistics: baseline {baseline!r} is not a configuration; "
                         f"configurations: {groups}")
    base = {m: by_seed(rows, baseline, m) for m in metrics}
    return {g: {m: paired_difference(base[m], by_seed(rows, g, m), alpha=alpha, baseline=baseline, metric=m)
                for m in metrics} for g in groups if g != baseline}


PairedTree = Union[Paired, Mapping[Any, Any], Iterable[Any]]


def _leaves(tree: PairedTree) -> list[Paired]:
    if isinstance(tree, Paired):
        return [tree]
    items = tree.values() if isinstance(tree, Mapping) else tree
    return [p for item in items for p in _leaves(item)]


def halfwidths_met(paired: PairedTree, target: float) -> bool:
    """Every interval in `paired` (a Paired, or any nesting of dicts / lists of them, e.g. paired_table's
    output or one group's {metric: Paired}) is finite with half-width <= target; False when there is none."""
    leaves = _leaves(paired)
    return bool(leaves) and all(math.isfinite(p.halfwidth) and p.halfwidth <= target for p in leaves)


def format_delta(p: Paired, *, with_p: bool = True) -> str:
    """"+2.5 [-1.0, +6.0], p=0.125": accuracy in points (x100, one decimal), other metrics with 4 decimals;
    "-" when there is no pair."""
    if p.n == 0:
        return "-"
    scale, fmt = (100.0, "{:+.1f}") if p.metric.endswith("accuracy") else (1.0, "{:+.4f}")

    def f(x: float) -> str:
        return "nan" if math.isnan(x) else fmt.format(x * scale)

    text = f"{f(p.delta_mean)} [{f(p.ci95[0])}, {f(p.ci95[1])}]"
    if with_p:
        text += ", p" + ("<0.001" if p.p_value < 0.001 else f"={p.p_value:.3f}")
    return text


def format_mdd(p: Paired) -> str:
    """The minimum detectable difference as the table writes it ("3.1 pts", "0.0042"; "-" when undefined)."""
    if math.isnan(p.mdd):
        return "-"
    return f"{p.mdd * 100:.1f} pts" if p.metric.endswith("accuracy") else f"{p.mdd:.4f}"


@dataclass(frozen=True)
class ControlVerdict:
    """A positive control (the baseline with k x the batch) against the baseline: separable or not, in words."""

    label: str
    paired: Paired
    separable: bool
    sentence: str


def control_verdict(table: Mapping[str, Mapping[str, Paired]], controls: Sequence[str], metric: str, *,
                    subject: str = "P-POTS") -> list[ControlVerdict]:
    """For each control label in `table` (paired_table's output; labels not in it are skipped): separable when
    its interval on `metric` excludes 0, and one sentence, e.g. "positive control: Standard batch×2 vs Standard
    on eval/loss = -0.0120 [-0.0200, -0.0040] (n=8): separable"."""
    out = []
    for label in controls:
        if label not in table or metric not in table[label]:
            continue
        p = table[label][metric]
        head = (f"positive control: {label} vs {p.baseline} on {metric} = {format_delta(p, with_p=False)} "
                f"(n={p.n})")
        verdict = "separable" if p.separable else "not separable: " + NOT_SEPARABLE.format(subject=subject)
        out.append(ControlVerdict(label, p, p.separable, f"{head}: {verdict}"))
    return out


def next_seed_count(pairs: Sequence[Paired], target: float, n_now: int, max_seeds: int) -> int:
    """How many seeds in all the next round should reach: n_now when every interval's half-width is <= target
    (or max_seeds is reached), else the n at which the widest interval would shrink to the target if its sd
    held (half-width ~ 1/sqrt(n); the t quantile also falls, so this is conservative), at least n_now + 1 and at
    most max_seeds. An interval that cannot be computed yet (n < 2) asks for one more seed."""
    if n_now >= max_seeds or (pairs and halfwidths_met(list(pairs), target)):
        return n_now
    widths = [p.halfwidth for p in pairs if math.isfinite(p.halfwidth)]
    if len(widths) < len(pairs) or not widths:
        return min(n_now + 1, max_seeds)
    need = math.ceil(n_now * (max(widths) / target) ** 2 - 1e-9)  # 16.0000001 from rounding is 16
    return int(min(max(need, n_now + 1), max_seeds))


def verdict_lines(pairs: Sequence[Paired], labels: Sequence[str], controls: Sequence[str], *,
                  target: Optional[float] = None, subject: str = "P-POTS") -> list[str]:
    """The comparison's conclusion in words, one line per configuration (`pairs[i]` is `labels[i]` against the
    baseline on the headline metric): controls first (separable or not, i.e. whether this regime can show an
    effect that size at all), then each configuration: "established" when its 95% CI excludes 0, else "not
    established" with the minimum detectable difference at this n; then whether the half-width target was met."""
    lines = []
    if pairs and all(p.n == 0 for p in pairs):
        return [f"no paired values of {pairs[0].metric}: no verdict (is the metric logged by every trial?)"]
    table = {label: {p.metric: p} for p, label in zip(pairs, labels) if p.n > 0}
    for v in control_verdict(table, [c for c in controls if c in table], pairs[0].metric if pairs else "",
                             subject=subject):
        lines.append(v.sentence)
    for p, label in zip(pairs, labels):
        if label in controls or p.n == 0:
            continue
        head = f"{label} vs {p.baseline} on {p.metric} = {format_delta(p)} (n={p.n})"
        if p.n >= 2 and p.separable:
            lines.append(f"{head}: established at 95% ({'higher' if p.delta_mean > 0 else 'lower'})")
        else:
            lines.append(f"{head}: not established (the CI includes 0; detectable at this n: {format_mdd(p)})")
    if target is not None and pairs:
        met = halfwidths_met(list(pairs), target)
        lines.append(f"target CI half-width {target:g} on {pairs[0].metric}: "
                     + ("met" if met else "not met within compare.max_seeds"))
    return lines
