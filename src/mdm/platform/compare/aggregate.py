"""A comparison's result over seeds: mean +- std (and n) per configuration and, given a baseline, each other
configuration's paired difference from it (paired_stats: by seed, 95% CI, permutation p, minimum detectable
difference), as text, CSV, JSON, markdown and figures.

    groups = aggregate(rows, METRICS)            # rows: {"group", "status", "seed", "metrics": {...}, "curve": [...]}
    groups = aggregate(rows, METRICS, baseline="Standard lr=1e-3", paired_metrics=PAIRED_METRICS)
    print(format_table(groups))                  # the terminal table
    write_csv(groups, "summary.csv"); write_json(groups, "summary.json"); markdown_table(groups)
    bar_chart(groups, "eval/accuracy", "accuracy.png"); loss_curves(rows, "train/loss", "curves.png")

Only FINISHED trials count. `std` is the sample standard deviation (n - 1) over the seeds of a
configuration (undefined, shown "-", for n = 1); groups keep the order in which the grid lists them; a metric
no trial reported shows "-".

With a baseline, every other Group carries `paired` ({metric: paired_stats.Paired}, in paired_metrics' order;
the first is the primary one): the tables gain a column "Δ <metric> vs <baseline> [95% CI], p" for it (the baseline's
row says "baseline") and a footer line with each pair's n and minimum detectable difference; the JSON gains
per group "paired" (the primary metric's Paired.as_dict(), null for the baseline) and "paired_all"
({metric: as_dict}); the CSV gains the primary metric's delta, ci95 low / high, p_value, n and mdd columns.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from mdm.platform.compare.paired_stats import POWER, Paired, format_delta, format_mdd, paired_table

# What a comparison reports per configuration: held-out exact match, the held-out losses (one time-sample, by
# quadrature over t), the held-out log-likelihood bound per token, then the final training loss.
METRICS = ("eval/accuracy", "eval/loss", "eval/loss_quad", "eval/loglik_per_token", "train/loss")
# An RL comparison (rl.enabled): greedy held-out exact match, then the rollout statistics of the last step.
RL_METRICS = ("eval/accuracy", "rl/reward", "rl/pass_at_k", "rl/kl")
# Compared by seed against the baseline, the first one the primary (the tables' Δ column, the JSON's "paired").
PAIRED_METRICS = ("eval/accuracy", "eval/loss_quad", "eval/loglik_per_token", "eval/loss", "train/loss")


@dataclass
class Group:
    """One configuration: its label, how many seeds finished, and {metric: (mean, std, n)}."""

    label: str
    seeds: list[Any] = field(default_factory=list)
    stats: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    baseline: Optional[str] = None  # the baseline's label when paired statistics were asked for
    paired: dict[str, Paired] = field(default_factory=dict)  # {metric: against the baseline}; empty for it

    @property
    def is_baseline(self) -> bool:
        return self.baseline is not None and self.label == self.baseline

    @property
    def primary(self) -> Optional[Paired]:
        """The paired result on the primary (first) paired metric, None for the baseline or without one."""
        return next(iter(self.paired.values()), None)

    @property
    def n(self) -> int:
        return len(self.seeds)


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else float("nan"), len(vals)


def aggregate(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS, baseline: Optional[str] = None,
              paired_metrics: Sequence[str] = PAIRED_METRICS) -> list[Group]:
    """Group FINISHED rows by `group` (first-seen order) and summarise each metric over their seeds; with a
    `baseline` (a group label: ValueError if no row has it), pair every other group with it by seed on each of
    `paired_metrics`."""
    groups: dict[str, Group] = {}
    members: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        g = groups.setdefault(r["group"], Group(r["group"]))
        members.setdefault(r["group"], [])
        if r.get("status") == "FINISHED":
            g.seeds.append(r.get("seed"))
            members[r["group"]].append(r)
    for label, g in groups.items():
        g.stats = {m: _mean_std([r["metrics"].get(m) for r in members[label]]) for m in metrics}
    if baseline is not None and paired_metrics:
        table = paired_table(rows, baseline, paired_metrics)
        for label, g in groups.items():
            g.baseline, g.paired = baseline, table.get(label, {})
    return list(groups.values())


def _pm(mean: float, std: float, metric: str) -> str:
    if math.isnan(mean):
        return "-"
    scale, fmt = (100.0, "{:.1f}") if metric.endswith("accuracy") else (1.0, "{:.4f}")
    return fmt.format(mean * scale) + (" ± " + fmt.format(std * scale) if not math.isnan(std) else "")


def _header(metric: str) -> str:
    return f"{metric} (%)" if metric.endswith("accuracy") else metric


def _baseline(groups: Sequence[Group]) -> Optional[str]:
    return next((g.baseline for g in groups if g.baseline is not None), None)


def _primary_metric(groups: Sequence[Group]) -> Optional[str]:
    return next((g.primary.metric for g in groups if g.primary is not None), None)


def table_rows(groups: Sequence[Group], metrics: Sequence[str] = METRICS) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary: configuration, n, then mean ± std per metric (accuracy in %), and with
    a baseline "Δ vs <baseline> [95% CI], p" on the primary paired metric."""
    head = ["configuration", "n", *(_header(m) for m in metrics)]
    body = [[g.label, str(g.n), *(_pm(*g.stats[m][:2], m) if m in g.stats else "-" for m in metrics)]
            for g in groups]
    base, primary = _baseline(groups), _primary_metric(groups)
    if base is not None and primary is not None:
        head.append(f"Δ {primary}{' (pts)' if primary.endswith('accuracy') else ''} vs {base} [95% CI], p")
        for g, row in zip(groups, body):
            row.append("baseline" if g.is_baseline else format_delta(g.primary) if g.primary else "-")
    return head, body


def paired_footer(groups: Sequence[Group]) -> str:
    """One line under the table: what the Δ column is, and each pair's n and minimum detectable difference
    ("" without paired statistics)."""
    base, primary = _baseline(groups), _primary_metric(groups)
    if base is None or primary is None:
        return ""
    pairs = "; ".join(f"{g.label} n={g.primary.n} MDD {format_mdd(g.primary)}" for g in groups if g.primary)
    return (f"Δ = configuration - {base} on {primary}, paired by seed: mean [Student t 95% CI], sign-flip "
            f"permutation p (exact up to 16 pairs); MDD (two-sided 0.05, power {POWER}, observed sd): {pairs}")


def format_table(groups: Sequence[Group], metrics: Sequence[str] = METRICS) -> str:
    """A fixed-width text table for the terminal."""
    head, body = table_rows(groups, metrics)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    footer = paired_footer(groups)
    return "\n".join(lines + ([footer] if footer else []))


def markdown_table(groups: Sequence[Group], metrics: Sequence[str] = METRICS) -> str:
    """The same table in markdown (the parent run's description, the README)."""
    head, body = table_rows(groups, metrics)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    footer = paired_footer(groups)
    return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body] + (["", footer] if footer else []))


def _records(groups: Sequence[Group]) -> list[dict[str, Any]]:
    out = []
    for g in groups:
        rec: dict[str, Any] = {"configuration": g.label, "n": g.n, "seeds": g.seeds}
        for m, (mean, std, n) in g.stats.items():
            rec[f"{m} mean"] = None if math.isnan(mean) else mean
            rec[f"{m} std"] = None if math.isnan(std) else std
        out.append(rec)
    return out


def write_json(groups: Sequence[Group], path: str, extra: Optional[dict[str, Any]] = None) -> str:
    """{"groups": [{configuration, n, seeds, "<metric> mean", "<metric> std"}], **extra} at `path`; with a
    baseline each group also has "paired" (Paired.as_dict() of the primary metric, null for the baseline) and
    "paired_all" ({metric: Paired.as_dict()}, {} for the baseline), and the top level "baseline"."""
    recs = _records(groups)
    base = _baseline(groups)
    if base is not None:
        for g, rec in zip(groups, recs):
            rec["paired"] = g.primary.as_dict() if g.primary else None
            rec["paired_all"] = {m: p.as_dict() for m, p in g.paired.items()}
    with open(path, "w") as f:
        json.dump({"groups": recs, **({"baseline": base} if base is not None else {}), **(extra or {})}, f,
                  indent=2)
    return path


def _csv_paired(g: Group) -> dict[str, Any]:
    p = g.primary
    if p is None:
        return {}
    d = p.as_dict()
    pre = f"Δ {p.metric} vs {p.baseline}"
    return {f"{pre}": d["delta_mean"], f"{pre} ci95 low": d["ci95"][0], f"{pre} ci95 high": d["ci95"][1],
            f"{pre} p_value": d["p_value"], f"{pre} n": d["n"], f"{pre} mdd": d["mdd"]}


def write_csv(groups: Sequence[Group], path: str) -> str:
    """One row per configuration: configuration, n, seeds, then mean and std of each metric, and with a
    baseline the primary paired metric's delta, ci95 low / high, p_value, n and mdd (empty for the baseline)."""
    recs = [{**r, **_csv_paired(g)} for g, r in zip(groups, _records(groups))]
    fields = list(dict.fromkeys(k for r in recs for k in r)) or ["configuration"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in recs:
            w.writerow({**r, "seeds": " ".join(str(s) for s in r["seeds"])})
    return path


def bar_chart(groups: Sequence[Group], metric: str, path: str, title: str = "") -> str:
    """Bars of the mean of `metric` per configuration with ±1 std error bars (n under each bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 100.0 if metric.endswith("accuracy") else 1.0
    means = [g.stats[metric][0] * scale for g in groups]
    stds = [0.0 if math.isnan(g.stats[metric][1]) else g.stats[metric][1] * scale for g in groups]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(groups)), 3.6))
    ax.bar(range(len(groups)), [0 if math.isnan(m) else m for m in means], yerr=stds, capsize=6,
           color="#4c72b0", alpha=0.85)
    ax.set_xticks(range(len(groups)), [f"{g.label}\n(n={g.n})" for g in groups], fontsize=8)
    ax.set_ylabel(_header(metric))
    ax.set_title(title or f"{_header(metric)}: mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_curves(rows: Sequence[dict[str, Any]], metric: str, path: str, title: str = "") -> str:
    """`metric` against step per configuration: the mean over seeds, and each seed faint (rows' `curve`:
    [(step, {metric: value})]); a log scale when every value is positive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(dict.fromkeys(r["group"] for r in rows))
    for i, label in enumerate(labels):
        color = colors[i % len(colors)]
        per_step: dict[int, list[float]] = {}
        for r in rows:
            if r["group"] != label or r.get("status") != "FINISHED":
                continue
            pts = [(s, m[metric]) for s, m in r.get("curve", []) if metric in m]
            if pts:
                ax.plot(*zip(*pts), color=color, alpha=0.25, linewidth=0.8)
            for s, v in pts:
                per_step.setdefault(s, []).append(v)
        if per_step:
            steps = sorted(per_step)
            ax.plot(steps, [statistics.fmean(per_step[s]) for s in steps], color=color, label=label, linewidth=1.8)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    if all(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
        ax.set_yscale("log")  # losses fall by orders of magnitude; the late differences matter
    ax.set_title(title or f"{metric}: mean over seeds (faint: each seed)", fontsize=9)
    if labels:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
