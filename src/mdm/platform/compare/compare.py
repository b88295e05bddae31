"""A comparison of training configurations over seeds: one command, one MLflow parent run, one table.

    from mdm.platform.compare.compare import run_comparison
    res = run_comparison(cfg)                  # the `compare` section says what (compare_config.py)
    print(res.table)                           # per configuration: n, mean ± std, paired Δ vs the baseline
    res.groups, res.rows, res.files            # aggregate.Group per configuration, one row per trial, artifacts

What happens, in order, so that mistakes surface before any trial starts: the grid is built and checked
(`compare_space`), the eval task and its held-out rows are built and the prompts encoded once, Ray is
started or joined, and for `compare.runner: in_process` the training data is validated, split and collated
once (`train.inprocess.load_memory_data`) and shipped to every trial through the object store. The MLflow
parent run opens (its description: the command line, the search space and the batch rule; MLflow's context
tags), then Ray Tune runs one function trial per cell (`compare_trial`), `compare.cpus_per_trial` CPUs each,
as many at once as the cluster holds, reusing trial processes, with the live table of `tuner.reporter`.
The Tune experiment (restored when interrupted), its trial names, concurrency and status rule, and the
parent run are the tuner core's (`mdm.platform.tuner`), shared with sweeps.

Why in-process trials: a comparison is many short trials of a small model, and a Ray Train worker group
per trial costs more than the training (bench/tune_overhead.py measured 78% of a tiny trial outside
training: worker-group start, data pipeline, teardown). Training inside the trial process keeps the
same objective, updater, LR schedule, step plan and metrics (train/inprocess.py), so the comparison
measures the objectives, not the plumbing; Tune still schedules, retries and resumes the trials and shows
them in one table. For models that need DeepSpeed, GPUs or several workers, `compare.runner: ray_train`
runs each cell through `train_driver` and `run_inference` under the same parent run.

Seeds in rounds: with `compare.target_halfwidth` set, after each round the paired differences from the
baseline are computed; while a 95% CI half-width on the headline metric (`compare.paired_metrics[0]`) is
above the target and fewer than `compare.max_seeds` seeds have run, another round trains the configurations
on new seeds (as many as the observed spread says are needed), as a Tune experiment of its own
(`<comparison>-r2`, ...) under the same parent run, so an interrupted comparison resumes round by round.

At the end: children left open are closed, the trials are grouped by configuration over seeds and paired by
seed against `compare.baseline` (`aggregate`, `paired_stats`), and the table is printed and written to `<train.output_dir>/<sweep>/` as summary.txt /
summary.csv / summary.json, with accuracy and loss bar charts (error bars: ±1 std over seeds) and loss
curves per configuration (PNG); all of them are logged to the parent run, whose description gains the
table (markdown, shown on its page), and a link to the parent in MLflow's ML view is printed.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from mdm.platform.config_ops import flatten, with_overrides
from mdm.platform.fields import ConfigError
from mdm.platform.runs import absolute_paths, storage_root, sweep_name
from mdm.platform.compare import aggregate as agg
from mdm.platform.compare.compare_results import (diagnostics_lines, group_rows, headline, result_rows,
                                                  table_metrics, write_results)
from mdm.platform.compare.compare_space import comparison_space, swept_keys
from mdm.platform.compare.compare_trial import DONE_KEY, TrialInputs, comparison_trial, display_label
from mdm.platform.compare.paired_stats import next_seed_count, verdict_lines
from mdm.platform.tracking.tracker import Tracker
from mdm.platform.tuner.parent_run import connect, finish_parent, open_parent
from mdm.platform.tuner.tuner import Experiment, TrialNamer, TrialResources, fit

if TYPE_CHECKING:
    from ray.tune import Callback

    from mdm.platform.config import RunConfig


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
    verdict: str = ""


@dataclass
class _Setup:
    """What every round shares: the config, the comparison's name, the prepared inputs and the parent run."""

    cfg: RunConfig
    name: str
    inputs: TrialInputs
    tracker: Optional[Tracker]
    resources: TrialResources
    concurrent: int
    rule: str
    space_yaml: str
    argv: Optional[Sequence[str]]


def _check(cfg: RunConfig) -> None:
    c = cfg.compare
    if cfg.rl.enabled:
        _check_rl(cfg)
    elif not cfg.train.train_data_path:
        raise ConfigError("train.train_data_path is not set: point it at processed JSONL (`mdm preprocess`)")
    if c.runner == "in_process" and cfg.deepspeed.enabled:
        raise ConfigError("compare.runner: in_process trains without a worker group, so without DeepSpeed; set "
                          "deepspeed.enabled: false, or compare.runner: ray_train")
    if c.runner == "ray_train" and c.task_args:
        raise ConfigError("compare.task_args: batch inference (compare.runner: ray_train) builds the task from the "
                          "registry with data.task_data_dir only; leave compare.task_args empty or use runner in_process")


def _check_rl(cfg: RunConfig) -> None:
    """A comparison of RL configurations (`rl.enabled`): each cell is an `mdm rl` job, whose batch is the
    rollout batch (rl.prompts_per_step x rl.num_generations), not a number the comparison may rescale."""
    c = cfg.compare
    if c.runner != "ray_train":
        raise ConfigError("rl.enabled: an RL cell needs its rollout actors and Ray Train worker group; set "
                          "compare.runner: ray_train")
    if c.equalize != "batch" or c.control_batch_multipliers:
        raise ConfigError("rl.enabled: the batch of an RL cell is its rollout batch (rl.prompts_per_step x "
                          "rl.num_generations); set compare.equalize: batch and leave "
                          "compare.control_batch_multipliers empty")


def _resources(cfg: RunConfig) -> TrialResources:
    """An in-process trial holds `compare.cpus_per_trial`; a ray_train one its function and worker group."""
    if cfg.compare.runner == "in_process":
        return TrialResources(cpus=cfg.compare.cpus_per_trial)
    return TrialResources.train_job(cfg.tune, cfg.ray, cfg.rl)


def _setup(cfg: RunConfig, argv: Optional[Sequence[str]]) -> _Setup:
    """Validate, build the held-out rows and the in-memory data, start Ray and open the parent run."""
    import ray

    from mdm.platform.tokenizer import load_tokenizer
    from mdm.platform.tracking.context import DESCRIPTION_TAG, context_tags, describe_command
    from mdm.platform.tracking.dataset import describe_dataset
    from mdm.platform.train.driver import tokenizer_path
    from mdm.platform.compare.compare_eval import build_eval_task, held_out_rows

    _check(cfg)
    space = comparison_space(cfg)
    cfg = absolute_paths(cfg)
    name = cfg.tune.name or sweep_name(cfg, space).replace("sweep-", "compare-", 1)
    c = cfg.compare
    tok_path = tokenizer_path(cfg)
    tokenizer = load_tokenizer(tok_path, cfg.model.trust_remote_code)
    eval_rows = held_out_rows(build_eval_task(cfg), tokenizer, c.eval_split, c.eval_limit)
    tracker = connect(cfg.tracking, cfg.ray)
    data = None
    if c.runner == "in_process":
        from mdm.platform.train.inprocess import load_memory_data

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        data = load_memory_data(cfg, pad_id=pad, vocab_size=len(tokenizer))
    need = _resources(cfg)
    concurrent = need.max_concurrent(ray.cluster_resources(), cfg.tune.max_concurrent_trials)
    too_big = need.too_big(ray.cluster_resources())
    if too_big:
        print(f"mdm compare: warning: {too_big}", file=sys.stderr)
    n_trials = len(space.trials)
    print(f"mdm compare {name}: {n_trials} trials = {n_trials // len(c.seeds)} configurations x {len(c.seeds)} "
          f"seeds, equal {c.equalize}, runner {c.runner}, up to {concurrent} at once"
          + (f"; data {data.summary}" if data else ""), file=sys.stderr)
    context = context_tags()
    space_yaml = space.describe_yaml()
    rule = (f"Batch rule: equal **{c.equalize}** (`compare.equalize`; train.batch_size_per_gpu="
            f"{cfg.train.batch_size_per_gpu}{' sequence-forwards' if c.equalize == 'forwards' else ' sequences'}"
            f" per micro-batch). Runner: {c.runner}. Held-out: {len(eval_rows)} problems of {c.eval_split}. "
            f"Paired by seed against {c.baseline}.")
    parent_id = None
    if tracker is not None:
        parent_id = open_parent(tracker, name, space, {
            **{k: v for k, v in flatten(cfg).items() if k.startswith("compare.")}, "trials": n_trials},
            tags={**context, "mdm.kind": "comparison", "mdm.equalize": c.equalize,
                  DESCRIPTION_TAG: describe_command(f"mdm comparison {name}", space_yaml, rule, argv)})
    dataset = None if cfg.rl.enabled else describe_dataset(  # RL: prompts from the task, no dataset
        cfg.train.train_data_path, rows=None if data is None else data.n_train + data.n_eval)
    inputs = TrialInputs(base=cfg, space=space, sweep=name, parent_id=parent_id, tokenizer_path=tok_path,
                         eval_rows=eval_rows, context=context, dataset=dataset, data=data)
    return _Setup(cfg, name, inputs, tracker, need, concurrent, rule, space_yaml, argv)


def _run_round(setup: _Setup, seeds: list[int], round_no: int, callbacks: Sequence[Callback]
               ) -> list[dict[str, Any]]:
    """Train every configuration on `seeds` as one Tune experiment (resumed when interrupted); its rows."""
    from mdm.platform.tuner.reporter import trial_reporter

    cfg = with_overrides(setup.cfg, {"compare.seeds": list(seeds)}) if round_no > 1 else setup.cfg
    name = setup.name if round_no == 1 else f"{setup.name}-r{round_no}"
    space = setup.inputs.space if round_no == 1 else comparison_space(cfg)
    inputs = dataclasses.replace(setup.inputs, base=cfg, space=space, sweep=name)
    if round_no > 1:
        print(f"mdm compare {setup.name}: round {round_no}, seeds {seeds}", file=sys.stderr)
    reporter = trial_reporter(space, {"step": "step", "train/loss": "train loss", "eval/loss": "eval loss",
                                      DONE_KEY: "accuracy"}, DONE_KEY, "max", keys=swept_keys(space))
    exp = Experiment(name, storage_root(cfg), comparison_trial, {"inputs": inputs}, space.param_space("random"),
                     setup.resources, setup.concurrent, cfg.tune.max_failures,
                     TrialNamer(space, functools.partial(display_label, flatten(cfg), space)), reporter, callbacks,
                     {"num_samples": 1, "reuse_actors": True})
    results, _ = fit(exp, "mdm compare", "comparison")
    return result_rows(results, inputs)


def run_comparison(cfg: RunConfig, *, callbacks: Sequence[Callback] = (), argv: Optional[Sequence[str]] = None
                   ) -> ComparisonResult:
    """Run (or resume) the comparison the `compare` section describes; see the module docstring."""
    setup = _setup(cfg, argv)
    c = setup.cfg.compare
    seeds, all_seeds, rows, round_no = list(c.seeds), list(c.seeds), [], 1
    while True:
        rows += _run_round(setup, seeds, round_no, callbacks)
        groups = group_rows(setup.cfg, rows)
        if c.target_halfwidth is None:
            break
        n_next = next_seed_count(headline(groups)[0], c.target_halfwidth, len(all_seeds), c.max_seeds)
        if n_next <= len(all_seeds):
            break
        seeds = list(range(max(all_seeds) + 1, max(all_seeds) + 1 + n_next - len(all_seeds)))
        all_seeds += seeds
        round_no += 1
    return _finish(setup, rows, groups)


def _finish(setup: _Setup, rows: list[dict[str, Any]], groups: list[agg.Group]) -> ComparisonResult:
    """Write the summary, print it, close the children and the parent run."""
    from mdm.platform.tracking.context import DESCRIPTION_TAG, describe_command, run_link

    cfg, name, tracker, c = setup.cfg, setup.name, setup.tracker, setup.cfg.compare
    parent_id = setup.inputs.parent_id
    controls = sorted({r["group"] for r in rows if r["control"]})
    verdict = "\n".join(verdict_lines(*headline(groups), controls, target=c.target_halfwidth)
                        + ["before training (mean over seeds): " + d for d in diagnostics_lines(groups)])
    columns = table_metrics(cfg)
    res = ComparisonResult(name, rows, groups, agg.format_table(groups, columns) + ("\n" + verdict if verdict else ""),
                           parent_run_id=parent_id, tracking_uri=tracker.uri if tracker else None, verdict=verdict)
    res.files = write_results(res, Path(cfg.train.output_dir) / name, cfg,
                              {"baseline": c.baseline, "paired_metric": c.paired_metrics[0], "verdict": verdict,
                               "seeds": sorted({r["seed"] for r in rows})})
    n_eval = len(setup.inputs.eval_rows)
    print(f"\n== {name}: mean ± std over seeds and the paired difference from {c.baseline} (equal {c.equalize}; "
          f"accuracy on {n_eval} held-out {c.eval_split} problems) ==\n{res.table}")
    failed = [r for r in rows if r["status"] != "FINISHED"]
    for r in failed:
        print(f"  {r['label']} ({r['trial_id']}): {r['status']} {r['error'] or ''}", file=sys.stderr)
    if tracker is not None and parent_id is not None:
        tracker.client.set_tag(parent_id, DESCRIPTION_TAG, describe_command(
            f"mdm comparison {name}", setup.space_yaml, setup.rule, setup.argv,
            head="Result, mean ± std over seeds, paired differences:\n\n" + agg.markdown_table(groups, columns)
            + ("\n\n" + verdict if verdict else "")))
        scored = [{"trial_id": r["trial_id"], "status": r["status"], "metric": r["metrics"].get(DONE_KEY)}
                  for r in rows]
        finish_parent(tracker, parent_id, scored, DONE_KEY, "max", artifacts=list(res.files.values()))
        res.experiment_id = tracker.experiment_id()
        print(f"MLflow parent run: {run_link(tracker.uri, res.experiment_id, parent_id)}")
    print(f"files: {Path(cfg.train.output_dir) / name}")
    return res
