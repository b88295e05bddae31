"""A comparison's results: Tune's trial results as rows, and the summary files written from them.

    rows = result_rows(results, inputs)         # one dict per trial: label, group, seed, status, metrics, curve
    files = write_results(res, out_dir, cfg)    # summary.txt/.csv/.json, accuracy and loss bars, loss curves

Rows are what `aggregate` groups (by configuration, over seeds) and pairs (by seed, against the baseline).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from mdm.platform.config_ops import flatten
from mdm.platform.compare import aggregate as agg
from mdm.platform.compare.compare_space import MULT_KEY, objective_label, stratum_label
from mdm.platform.compare.compare_trial import DONE_KEY, TrialInputs, trial_config
from mdm.platform.tuner.tuner import trial_outcome

if TYPE_CHECKING:
    import pandas as pd
    from ray.tune import ResultGrid

    from mdm.platform.compare.compare import ComparisonResult
    from mdm.platform.config import RunConfig

CURVE_METRICS = ("train/loss", "eval/loss", "rl/reward", "rl/kl")
# Measured before training (the objective's prepare, logged at step 0): what P-POTS predicts it removes (R),
# what it removes on one batch (realised), and MIRROR's pair correlation within and across sequences.
DIAG_METRICS = ("ppots/R_star_loss", "ppots/R_fit_loss", "ppots/R_star_grad", "ppots/R_fit_grad",
                "ppots/realised_loss_R", "ppots/realised_grad_R", "diag/mirror_corr_within",
                "diag/mirror_corr_within_t0.5", "diag/mirror_corr_pooled_t0.5")


def _numbers(record: pd.Series) -> dict[str, float]:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _first(df: Optional[pd.DataFrame], keys: Iterable[str]) -> dict[str, float]:
    """The first logged value of each of `keys` (those reported once, before training)."""
    out: dict[str, float] = {}
    for k in keys:
        if df is not None and k in df and df[k].notna().any():
            out[k] = float(df[k].dropna().iloc[0])
    return out


def _curve(df: Optional[pd.DataFrame]) -> list[tuple[int, dict[str, float]]]:
    curve = []
    if df is not None and "step" in df:
        for _, rec in df.iterrows():
            vals = {m: float(rec[m]) for m in CURVE_METRICS if m in rec and isinstance(rec[m], float)
                    and math.isfinite(rec[m])}
            if vals and rec["step"] > 0:
                curve.append((int(rec["step"]), vals))
    return curve


def result_rows(results: ResultGrid, inputs: TrialInputs) -> list[dict[str, Any]]:
    """One row per Tune result: {trial_id, run_name, label, group, objective, stratum, control, status, seed,
    metrics (last report), curve, error}; FINISHED when the trial's last report carries the held-out accuracy.
    `objective` is what `compare.baseline` names, `stratum` what a configuration shares with its baseline
    (e.g. the learning rate), `control` marks a positive-control arm."""
    rows = []
    for r in results:
        out = trial_outcome(r, DONE_KEY)
        cfg, run_name, label, group = trial_config(inputs, out.config, out.trial_id)
        df = out.history
        last = {} if df is None or not len(df) else {**_numbers(df.iloc[-1]), **_first(df, DIAG_METRICS)}
        flat = flatten(cfg)
        rows.append({"trial_id": out.trial_id, "run_name": run_name, "label": label, "group": group,
                     "objective": objective_label(flat, inputs.space), "stratum": stratum_label(flat, inputs.space),
                     "control": float(flat.get(MULT_KEY, 1.0)) != 1.0, "status": out.status,
                     "seed": cfg.train.seed, "metrics": last, "curve": _curve(df), "error": out.error})
    return sorted(rows, key=lambda x: x["trial_id"])


def write_results(res: ComparisonResult, out: Path, cfg: RunConfig, extra: dict[str, Any]) -> dict[str, str]:
    """The summary files of a ComparisonResult under `out`; `extra` goes into summary.json beside the groups."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"summary.txt": str(out / "summary.txt")}
    Path(files["summary.txt"]).write_text(res.table + "\n")
    files["summary.csv"] = agg.write_csv(res.groups, str(out / "summary.csv"))
    metrics = list(dict.fromkeys([*table_metrics(cfg), *cfg.compare.paired_metrics]))
    files["summary.json"] = agg.write_json(res.groups, str(out / "summary.json"), extra={
        "sweep": res.name, "equalize": cfg.compare.equalize, "runner": cfg.compare.runner, **extra,
        "trials": [{k: r[k] for k in ("trial_id", "label", "group", "seed", "status")} |
                   {"metrics": {m: r["metrics"].get(m) for m in metrics}} for r in res.rows]})
    title = f"{res.name} (equal {cfg.compare.equalize})"
    files["accuracy.png"] = agg.bar_chart(res.groups, "eval/accuracy", str(out / "accuracy.png"), title)
    if not cfg.rl.enabled:  # an RL cell has no held-out loss
        files["eval_loss.png"] = agg.bar_chart(res.groups, "eval/loss", str(out / "eval_loss.png"), title)
    for m in CURVE_METRICS:
        if any(m in v for r in res.rows for _, v in r["curve"]):
            path = str(out / f"curves_{m.replace('/', '_')}.png")
            files[Path(path).name] = agg.loss_curves(res.rows, m, path, f"{m} per configuration ({res.name})")
    return files


def table_metrics(cfg: RunConfig) -> tuple[str, ...]:
    """The table's columns: SFT's held-out metrics, or with `rl.enabled` the RL ones (aggregate.RL_METRICS)."""
    return agg.RL_METRICS if cfg.rl.enabled else agg.METRICS


def group_rows(cfg: RunConfig, rows: list[dict[str, Any]]) -> list[agg.Group]:
    """`aggregate` of the rows, each configuration paired by seed with the baseline of its stratum (the
    configuration whose objective is `compare.baseline` at the same learning rate and other swept values)."""
    c = cfg.compare
    metrics = list(dict.fromkeys([*table_metrics(cfg), *c.paired_metrics, *DIAG_METRICS]))
    groups: list[agg.Group] = []
    for stratum in dict.fromkeys(r["stratum"] for r in rows):
        sub = [r for r in rows if r["stratum"] == stratum]
        base = next((r["group"] for r in sub if r["objective"] == c.baseline), None)
        groups += agg.aggregate(sub, metrics, baseline=base, paired_metrics=list(c.paired_metrics))
    return groups


def headline(groups: list[agg.Group]) -> tuple[list[Any], list[str]]:
    """The non-baseline groups' paired results on the headline (first paired) metric, and their labels."""
    pairs = [(g.primary, g.label) for g in groups if not g.is_baseline and g.primary is not None]
    return [p for p, _ in pairs], [label for _, label in pairs]


def diagnostics_lines(groups: list[agg.Group]) -> list[str]:
    """One line per configuration with pre-training diagnostics: P-POTS' predicted variance ratios (optimal
    and fitted) and the realised ones, MIRROR's within-sequence and pooled pair correlation (means over seeds)."""
    names = {"ppots/R_star_loss": "R* loss", "ppots/R_fit_loss": "R fit loss", "ppots/R_star_grad": "R* grad",
             "ppots/R_fit_grad": "R fit grad", "ppots/realised_loss_R": "realised loss R",
             "ppots/realised_grad_R": "realised grad R", "diag/mirror_corr_within": "MIRROR corr within (t .25-.75)",
             "diag/mirror_corr_within_t0.5": "within at t=.5", "diag/mirror_corr_pooled_t0.5": "pooled at t=.5"}
    lines = []
    for g in groups:
        vals = [f"{names[m]} {g.stats[m][0]:.3f}" for m in DIAG_METRICS
                if m in g.stats and g.stats[m][2] > 0 and math.isfinite(g.stats[m][0])]
        if vals:
            lines.append(f"{g.label}: " + ", ".join(vals))
    return lines
