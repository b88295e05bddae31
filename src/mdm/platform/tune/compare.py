"""A comparison of training configurations over seeds: one command, one MLflow parent run, one table.

    from mdm.platform.tune.compare import run_comparison
    res = run_comparison(cfg)                  # the `compare` section says what (compare_config.py)
    print(res.table)                           # configuration, n, accuracy / eval loss / train loss mean ± std
    res.groups, res.rows, res.files            # aggregate.Group per configuration, one row per trial, artifacts

What happens, in order, so that mistakes surface before any trial starts: the grid is built and checked
(`compare_space`), the eval task and its held-out rows are built and the prompts encoded once, Ray is
started or joined, and for `compare.runner: in_process` the training data is validated, split and collated
once (`train.inprocess.load_memory_data`) and shipped to every trial through the object store. The MLflow
parent run opens (its description: the command line, the search space and the batch rule; MLflow's context
tags), then Ray Tune runs one function trial per cell (`compare_trial`), `compare.cpus_per_trial` CPUs each,
as many at once as the cluster holds, reusing trial processes, with the live table of `reporter.py`.

Why in-process trials: a comparison is many short trials of a small model, and a Ray Train worker group
per trial costs more than the training (bench/tune_overhead.py measured 78% of a tiny trial outside
training: worker-group start, data pipeline, teardown). Training inside the trial process keeps the
same objective, updater, LR schedule, step plan and metrics (train/inprocess.py), so the comparison
measures the objectives, not the plumbing; Tune still schedules, retries and resumes the trials and shows
them in one table. For models that need DeepSpeed, GPUs or several workers, `compare.runner: ray_train`
runs each cell through `train_driver` and `run_inference` under the same parent run.

At the end: children left open are closed, the trials are grouped by configuration over seeds
(`aggregate`), and the table is printed and written to `<train.output_dir>/<sweep>/` as summary.txt /
summary.csv / summary.json, with accuracy and loss bar charts (error bars: ±1 std over seeds) and loss
curves per configuration (PNG); all of them are logged to the parent run, whose description gains the
table (markdown, shown on its page), and a link to the parent in MLflow's ML view is printed.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from mdm.platform.config_ops import flatten
from mdm.platform.fields import ConfigError
from mdm.platform.runs import absolute_paths, storage_root, sweep_name
from mdm.platform.tune import aggregate as agg
from mdm.platform.tune.compare_space import comparison_space, swept_keys
from mdm.platform.tune.compare_trial import DONE_KEY, TrialInputs, comparison_trial, trial_config, tune_trial_name

CURVE_METRICS = ("train/loss", "eval/loss")


@dataclass
class ComparisonResult:
    name: str
    rows: list[dict[str, Any]]
    groups: list[agg.Group]
    table: str
    files: dict[str, str] = field(default_factory=dict)
    parent_run_id: Optional[str] = None
    tracking_uri: Optional[str] = None
    experiment_id: Optional[str] = None


def _check(cfg: Any) -> None:
    c = cfg.compare
    if c.runner == "in_process" and cfg.deepspeed.enabled:
        raise ConfigError("compare.runner: in_process trains without a worker group, so without DeepSpeed; set "
                          "deepspeed.enabled: false, or compare.runner: ray_train")
    if c.runner == "ray_train" and c.task_args:
        raise ConfigError("compare.task_args: batch inference (compare.runner: ray_train) builds the task from the "
                          "registry with data.task_data_dir only; leave compare.task_args empty or use runner in_process")


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id  # so a result's directory names its trial (Tune pickles this: not a lambda)


def _rows(results: Any, inputs: TrialInputs) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        trial_id = Path(r.path).name
        cfg, run_name, label, group = trial_config(inputs, r.config or {}, trial_id)
        df = r.metrics_dataframe
        last = {} if df is None or not len(df) else {k: v for k, v in df.iloc[-1].items()
                                                      if isinstance(v, (int, float)) and not isinstance(v, bool)}
        done = df is not None and DONE_KEY in df and df[DONE_KEY].notna().any()
        curve = []
        if df is not None and "step" in df:
            for _, rec in df.iterrows():
                vals = {m: float(rec[m]) for m in CURVE_METRICS if m in rec and isinstance(rec[m], float)
                        and math.isfinite(rec[m])}
                if vals and rec["step"] > 0:
                    curve.append((int(rec["step"]), vals))
        status = "FAILED" if r.error is not None else "FINISHED" if done else "KILLED"
        rows.append({"trial_id": trial_id, "run_name": run_name, "label": label, "group": group, "status": status,
                     "seed": cfg.train.seed, "metrics": last, "curve": curve,
                     "error": None if r.error is None else str(r.error).splitlines()[0][:300]})
    return sorted(rows, key=lambda x: x["trial_id"])


def _write(res: ComparisonResult, out: Path, cfg: Any) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"summary.txt": str(out / "summary.txt")}
    Path(files["summary.txt"]).write_text(res.table + "\n")
    files["summary.csv"] = agg.write_csv(res.groups, str(out / "summary.csv"))
    files["summary.json"] = agg.write_json(res.groups, str(out / "summary.json"), extra={
        "sweep": res.name, "equalize": cfg.compare.equalize, "runner": cfg.compare.runner,
        "trials": [{k: r[k] for k in ("trial_id", "label", "group", "seed", "status")} |
                   {"metrics": {m: r["metrics"].get(m) for m in agg.METRICS}} for r in res.rows]})
    title = f"{res.name} (equal {cfg.compare.equalize})"
    files["accuracy.png"] = agg.bar_chart(res.groups, "eval/accuracy", str(out / "accuracy.png"), title)
    files["eval_loss.png"] = agg.bar_chart(res.groups, "eval/loss", str(out / "eval_loss.png"), title)
    for m in CURVE_METRICS:
        if any(m in v for r in res.rows for _, v in r["curve"]):
            path = str(out / f"curves_{m.replace('/', '_')}.png")
            files[Path(path).name] = agg.loss_curves(res.rows, m, path, f"{m} per configuration ({res.name})")
    return files


def run_comparison(cfg: Any, *, callbacks: Sequence[Any] = (), argv: Optional[Sequence[str]] = None
                   ) -> ComparisonResult:
    """Run (or resume) the comparison the `compare` section describes; see the module docstring."""
    import ray
    from ray import tune

    from mdm.platform.runtime.ray_runtime import ensure_ray
    from mdm.platform.tokenizer import load_tokenizer
    from mdm.platform.tracking.context import DESCRIPTION_TAG, context_tags, describe_command, run_link
    from mdm.platform.tracking.dataset import describe_dataset
    from mdm.platform.tracking.tracker import Tracker
    from mdm.platform.train.driver import tokenizer_path
    from mdm.platform.tune.compare_eval import build_eval_task, held_out_rows
    from mdm.platform.tune.reporter import legacy_output, trial_reporter
    from mdm.platform.tune.sweep_tracking import close_children, finish_parent, open_parent

    _check(cfg)
    space = comparison_space(cfg)
    cfg = absolute_paths(cfg)
    name = cfg.tune.name or sweep_name(cfg, space).replace("sweep-", "compare-", 1)
    c = cfg.compare
    if not cfg.train.train_data_path:
        raise ConfigError("train.train_data_path is not set: point it at processed JSONL (`mdm preprocess`)")
    tok_path = tokenizer_path(cfg)
    tokenizer = load_tokenizer(tok_path, cfg.model.trust_remote_code)
    eval_rows = held_out_rows(build_eval_task(cfg), tokenizer, c.eval_split, c.eval_limit)
    tracker = Tracker.open(cfg.tracking) if cfg.tracking.enabled else None
    ensure_ray(cfg.ray)
    data = None
    if c.runner == "in_process":
        from mdm.platform.train.inprocess import load_memory_data

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        data = load_memory_data(cfg, pad_id=pad, vocab_size=len(tokenizer))
    per_trial = c.cpus_per_trial if c.runner == "in_process" else \
        cfg.tune.cpus_per_trial + cfg.ray.num_workers * cfg.ray.cpus_per_worker
    reserve = 0.0 if c.runner == "in_process" else cfg.tune.reserve_cpus
    concurrent = cfg.tune.max_concurrent_trials or max(1, math.floor(
        (float(ray.cluster_resources().get("CPU", 1.0)) - reserve) / per_trial + 1e-9))
    n_trials = len(space.trials)
    print(f"mdm compare {name}: {n_trials} trials = {n_trials // len(c.seeds)} configurations x {len(c.seeds)} "
          f"seeds, equal {c.equalize}, runner {c.runner}, up to {concurrent} at once"
          + (f"; data {data.summary}" if data else ""), file=sys.stderr)

    context = context_tags()
    parent_id = None
    space_yaml = "\n".join(f"{k}: {v}" for k, v in space.describe().items())
    rule = (f"Batch rule: equal **{c.equalize}** (`compare.equalize`; train.batch_size_per_gpu="
            f"{cfg.train.batch_size_per_gpu}{' sequence-forwards' if c.equalize == 'forwards' else ' sequences'}"
            f" per micro-batch). Runner: {c.runner}. Held-out: {len(eval_rows)} problems of {c.eval_split}.")
    if tracker is not None:
        parent_id = open_parent(tracker, name, {
            **{f"space.{k}": v for k, v in space.describe().items()},
            **{k: v for k, v in flatten(cfg).items() if k.startswith("compare.")}, "trials": n_trials},
            tags={**context, "mdm.kind": "comparison", "mdm.equalize": c.equalize,
                  DESCRIPTION_TAG: describe_command(f"mdm comparison {name}", space_yaml, rule, argv)})
    dataset = describe_dataset(cfg.train.train_data_path, rows=None if data is None else data.n_train + data.n_eval)
    inputs = TrialInputs(base=cfg, space=space, sweep=name, parent_id=parent_id, tokenizer_path=tok_path,
                         eval_rows=eval_rows, context=context, dataset=dataset, data=data)
    trainable = tune.with_resources(tune.with_parameters(comparison_trial, inputs=inputs),
                                    {"CPU": c.cpus_per_trial if c.runner == "in_process" else cfg.tune.cpus_per_trial})
    exp_path = f"{storage_root(cfg).rstrip('/')}/{name}"
    param_space = space.param_space("random")
    if tune.Tuner.can_restore(exp_path):
        print(f"mdm compare {name}: resuming the interrupted comparison in {exp_path}", file=sys.stderr)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, param_space=param_space, resume_unfinished=True,
                                   resume_errored=True)
    else:
        reporter = trial_reporter(space, {"step": "step", "train/loss": "train loss", "eval/loss": "eval loss",
                                          DONE_KEY: "accuracy"}, DONE_KEY, "max", keys=swept_keys(space))
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrent, reuse_actors=True,
                                        trial_dirname_creator=_trial_dirname,
                                        trial_name_creator=functools.partial(tune_trial_name, base=cfg, space=space)),
            run_config=tune.RunConfig(name=name, storage_path=storage_root(cfg), verbose=1,
                                      callbacks=list(callbacks), progress_reporter=reporter,
                                      failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures)))
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # accuracy arrives with the last report only
    with legacy_output():
        results = tuner.fit()

    rows = _rows(results, inputs)
    groups = agg.aggregate(rows)
    res = ComparisonResult(name, rows, groups, agg.format_table(groups), parent_run_id=parent_id,
                           tracking_uri=tracker.uri if tracker else None)
    res.files = _write(res, Path(cfg.train.output_dir) / name, cfg)
    print(f"\n== {name}: mean ± std over seeds (equal {c.equalize}; accuracy on {len(eval_rows)} held-out "
          f"{c.eval_split} problems) ==\n{res.table}")
    failed = [r for r in rows if r["status"] != "FINISHED"]
    for r in failed:
        print(f"  {r['label']} ({r['trial_id']}): {r['status']} {r['error'] or ''}", file=sys.stderr)
    if tracker is not None and parent_id is not None:
        close_children(tracker, parent_id, {r["trial_id"]: r["status"] for r in rows})
        tracker.client.set_tag(parent_id, DESCRIPTION_TAG, describe_command(
            f"mdm comparison {name}", space_yaml, rule, argv,
            head="Result, mean ± std over seeds:\n\n" + agg.markdown_table(groups)))
        scored = [{"trial_id": r["trial_id"], "status": r["status"], "metric": r["metrics"].get(DONE_KEY)}
                  for r in rows]
        finish_parent(tracker, parent_id, scored, DONE_KEY, "max", artifacts=list(res.files.values()),
                      status="FINISHED" if len(failed) < len(rows) else "FAILED")
        res.experiment_id = tracker.experiment_id()
        print(f"MLflow parent run: {run_link(tracker.uri, res.experiment_id, parent_id)}")
    print(f"files: {Path(cfg.train.output_dir) / name}")
    return res
