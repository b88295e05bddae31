"""A sweep's results: Tune's trial results as rows, the ranked table, the best config, the parent run finished.

    rows = rank_rows(sweep_rows(results, space, name, "eval/loss", label), "min")   # best first
    print(format_table(rows, "eval/loss", ["train.lr"]))
    best_yaml = report(cfg, name, space, rows, tracker, parent_id)   # files, printout, parent run ended

A row is {trial_id, run_name, label, status, metric, step, params, error}: the last reported value of the
tune metric and of `step`, the trial's canonical overrides, and its status by the tuner's rule, with
`export_dir` (which only the trainer's final report carries) marking a trial that ran to its last step.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from mdm.platform import storage
from mdm.platform.config_ops import dump_config, with_overrides
from mdm.platform.runs import child_run_name, output_root
from mdm.platform.tracking.tracker import Tracker
from mdm.platform.tuner.parent_run import finish_parent
from mdm.platform.tuner.space import SweepSpace
from mdm.platform.tuner.tuner import last_value, trial_outcome

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from mdm.platform.config import RunConfig

COMPLETED_KEY = "export_dir"  # only the trainer's final report carries it: the trial ran to its last step


def sweep_rows(results: ResultGrid, space: SweepSpace, name: str, metric: str,
               label: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """One row per trial result (see the module docstring); `label` names a trial by its overrides."""
    rows = []
    for r in results:
        out = trial_outcome(r, COMPLETED_KEY)
        # A complete trial's last report holds its final values (its history file may lack later columns)
        final = out.last if out.status == "FINISHED" else {}
        step = final.get("step", last_value(out.history, "step"))
        value = final[metric] if metric in final else last_value(out.history, metric)
        params = space.overrides_for(out.config)
        rows.append({"trial_id": out.trial_id, "run_name": child_run_name(name, out.trial_id),
                     "status": out.status, "label": label(params), "metric": value,
                     "step": None if step is None else int(step), "params": params, "error": out.error})
    return rows


def report(cfg: RunConfig, name: str, space: SweepSpace, rows: list[dict[str, Any]], tracker: Optional[Tracker],
           parent_id: Optional[str]) -> Optional[str]:
    """After the trials: write the best config and the table under <output root>/<sweep> (uploaded when that
    is an object store), print them, close the children and finish the parent run. Returns the best config's
    path (a URI when uploaded), or None when no trial reported the metric."""
    from mdm.platform.tracking.context import run_link

    tcfg = cfg.tune
    best_path = None
    # The sweep's files: in <output root>/<sweep>; with an object-store root written here, then uploaded.
    remote = storage.join(output_root(cfg), name) if storage.is_uri(output_root(cfg)) else None
    out = Path(tempfile.mkdtemp(prefix="mdm_sweep_")) / name if remote else Path(output_root(cfg)) / name
    out.mkdir(parents=True, exist_ok=True)
    best = next((r for r in rows if r["metric"] is not None), None)
    if best is not None:
        best_cfg = with_overrides(cfg, {**best["params"], "run_name": None})
        best_path = str(out / "best_config.yaml")
        Path(best_path).write_text(dump_config(best_cfg))
    keys = [d.key for d in space.dims]
    print(f"\nmdm tune {name}: {len(rows)} trial(s), sorted by {tcfg.metric} ({tcfg.mode})")
    print(format_table(rows, tcfg.metric, keys))
    if best is None:
        print(f"mdm tune {name}: no trial reported {tcfg.metric}; check tune.metric against the trainer's "
              f"metrics (eval/loss needs eval data and train.eval_strategy other than 'no')", file=sys.stderr)
    else:
        shown = storage.join(remote, "best_config.yaml") if remote else best_path
        print(f"best: {best['trial_id']} ({tcfg.metric} {best['metric']:.5g}); config: {shown}\n"
              f"  train it: mdm train --config {shown if not remote else 'best_config.yaml (download it first)'}")
    if tracker is not None and parent_id is not None:
        table = out / "trials.txt"
        table.write_text(format_table(rows, tcfg.metric, keys) + "\n")
        finish_parent(tracker, parent_id, rows, tcfg.metric, tcfg.mode,
                      artifacts=[p for p in (best_path, str(table)) if p])
        print(f"compare runs: {run_link(tracker.uri, tracker.experiment_id(), parent_id)}")
    if remote is not None:
        storage.upload(str(out), remote)
        best_path = best_path and storage.join(remote, "best_config.yaml")
    return best_path


def format_table(rows: list[dict[str, Any]], metric: str, keys: list[str]) -> str:
    """A fixed-width text table: trial, run (its display name), status, metric, last step, the swept `keys`."""
    head = ["trial", "run", "status", metric, "step", *keys]
    body = []
    for r in rows:
        m = r.get("metric")
        body.append([str(r["trial_id"]), str(r.get("label", r.get("run_name", ""))), r["status"],
                     "-" if m is None else f"{m:.5g}",
                     "-" if r.get("step") is None else str(r["step"]),
                     *[_fmt(r["params"].get(k)) for k in keys]])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
