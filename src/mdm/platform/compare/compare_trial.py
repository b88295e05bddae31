"""One comparison trial, run by Ray Tune: train one cell of the grid, score it on the held-out split, and
record it as an MLflow child run of the comparison (tagged with the digests that show it is paired with the
other configurations of its seed: `mdm.init_digest`, `mdm.data_digest`).

    Experiment(name, root, comparison_trial, {"inputs": TrialInputs(...)}, ...)   # compare.run_comparison

`compare.runner: in_process` trains in this (Tune trial) process with `train.inprocess.fit_in_process` on the
data the driver validated once, with `compare.cpus_per_trial` torch threads, then samples the held-out
answers with the trained model still in memory (`compare_eval.score_held_out`). `ray_train` runs the cell as a
Ray Train job (`tuner.trial.train_job`, as a sweep's trial) and scores its export with batch inference
(`run_inference`).

Either way the child run is named by its swept values (`MIRROR+PPOTS(EPRS) lr=1e-3 seed=1`, identity
`<sweep>-<trial id>` in the tag `mdm.run`, trial id in `mdm.trial_id`, configuration in `mdm.group`), logs
the config without per-run-unique keys and with inert keys as "inert", MLflow's context tags from the
driver, the training data as a dataset input, system metrics while training, the losses and `diag/` metrics
at every logging step, `eval/accuracy` with the predictions as a table and a JSONL file, `eval/loss_quad` and
`eval/loglik_per_token` with their standard errors (compare_eval.low_noise_eval), the timings (`time/setup_s`,
`time/train_s`, `time/train_cpu_s`, `time/eval_s`, `time/finish_s`, `time/trial_s`), and the export as files
(`final_model`) and as an MLflow model (`tracking.log_model`). Every report to Tune carries `step`; the last
one carries `eval/accuracy`, which marks the trial complete.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from mdm.platform.config_ops import dump_config, flatten, with_overrides
from mdm.platform.runs import child_run_name, export_dir, tracked_params
from mdm.platform.compare.compare_space import cell_label, cell_overrides, group_label
from mdm.platform.tuner.space import SweepSpace
from mdm.platform.tuner.parent_run import child_tags
from mdm.platform.rl.driver import driver_for
from mdm.platform.tuner.trial import start_trial, train_job

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig

GROUP_TAG = "mdm.group"
DONE_KEY = "eval/accuracy"


@dataclass
class TrialInputs:
    """What the driver prepared once for every trial (shipped through the object store)."""

    base: Any
    space: SweepSpace
    sweep: str
    parent_id: Optional[str]
    tokenizer_path: str
    eval_rows: list[dict[str, Any]]
    context: dict[str, str] = field(default_factory=dict)
    dataset: Any = None                      # tracking.dataset.DatasetRecord
    data: Any = None                         # train.inprocess.MemoryData (in_process runner)


def trial_config(inputs: TrialInputs, config: dict[str, Any], trial_id: str) -> tuple[Any, str, str, str]:
    """(config of this cell, run name, display label, configuration label) for a Tune trial config."""
    params = cell_overrides(inputs.base, inputs.space.overrides_for(config))
    run_name = child_run_name(inputs.sweep, trial_id)
    cfg = with_overrides(inputs.base, {**params, "run_name": run_name})
    flat = flatten(cfg)
    return cfg, run_name, cell_label(flat, inputs.space), group_label(flat, inputs.space)


def display_label(base: Mapping[str, Any], space: SweepSpace, params: Mapping[str, Any]) -> str:
    """A trial's display label from its overrides `params` over the flattened base config `base`: Tune's name
    for it (`tuner.TrialNamer`, its terminal table's first column)."""
    return cell_label({**base, **params}, space)


def comparison_trial(config: dict[str, Any], *, inputs: TrialInputs) -> None:
    """The Tune function trainable (see the module docstring)."""
    t_start = time.perf_counter()
    _quiet()
    trial_id = start_trial(inputs.base.auto_import)
    cfg, run_name, label, group = trial_config(inputs, config, trial_id)
    tags = {**inputs.context, **child_tags(inputs.parent_id, inputs.sweep, trial_id), GROUP_TAG: group,
            "mdm.equalize": cfg.compare.equalize}
    if cfg.compare.runner == "in_process":
        _in_process(cfg, inputs, run_name, label, tags, t_start)
    else:
        _ray_train(cfg, inputs, run_name, label, tags)


def _quiet() -> None:
    """The trial's output reaches the driver's terminal: keep MLflow's and transformers' chatter out of it."""
    import logging

    from transformers.utils import logging as hf_logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()


def _in_process(cfg: RunConfig, inputs: TrialInputs, run_name: str, label: str, tags: dict[str, str],
                t_start: float) -> None:
    import torch
    from ray import tune

    from mdm.platform.tokenizer import load_tokenizer
    from mdm.platform.tracking.session import tracked_run
    from mdm.platform.tracking.tracker import Tracker
    from mdm.platform.train.checkpoint import write_export
    from mdm.platform.train.inprocess import fit_in_process
    from mdm.platform.compare.compare_eval import build_eval_task, low_noise_eval, score_held_out

    torch.set_num_threads(max(1, int(cfg.compare.cpus_per_trial)))
    tokenizer = load_tokenizer(inputs.tokenizer_path, cfg.model.trust_remote_code)
    tracker = Tracker.open(cfg.tracking) if cfg.tracking.enabled else None
    with tracked_run(tracker, run_name, params=tracked_params(cfg), config_yaml=dump_config(cfg), tags=tags,
                     display_name=label, dataset=inputs.dataset) as run:      # FAILED on any exception
        with run.system_metrics(cfg.tracking.system_metrics_interval_s):
            t_fit = time.perf_counter()
            fit = fit_in_process(cfg, tokenizer, inputs.data,
                                 log=lambda step, m: (run.metrics(m, step=step), tune.report({"step": step, **m})))
            t_eval = time.perf_counter()
            ev, records = score_held_out(fit.model, cfg, tokenizer, build_eval_task(cfg), inputs.eval_rows)
            low_noise = low_noise_eval(fit.model, cfg, inputs.data.eval, inputs.eval_rows)
            t_finish = time.perf_counter()
            out = export_dir(cfg, run_name)
            write_export(fit.model, tokenizer, out, merge_lora=cfg.export.merge_lora)  # the Trainer's export
            run.tags(fit.tags)
            run.log_predictions(records, str(Path(out).parent / f"predictions_{cfg.compare.eval_split}.jsonl"))
            run.log_export(out, dump_config(cfg) if cfg.tracking.log_model else None)
            step, now = int(fit.final["step"]), time.perf_counter()
            final = {**fit.final, **low_noise, DONE_KEY: ev["accuracy"], "eval/n": ev["n"], "eval/nfe": ev["nfe"],
                     "time/setup_s": (t_fit - t_start) + fit.timings["setup_s"],
                     "time/train_s": fit.timings["train_s"], "time/train_cpu_s": fit.timings["train_cpu_s"],
                     "time/eval_s": fit.timings["eval_s"] + (t_finish - t_eval), "time/finish_s": now - t_finish,
                     "time/trial_s": now - t_start, "batch_size": cfg.train.batch_size_per_gpu}
            final["time/outside_frac"] = 1.0 - final["time/train_s"] / final["time/trial_s"]
        run.metrics({k: v for k, v in final.items() if "/" in k}, step=step)
    tune.report({**final, "step": step})  # after the block: the run is FINISHED before the trial completes


def _ray_train(cfg: RunConfig, inputs: TrialInputs, run_name: str, label: str, tags: dict[str, str]) -> None:
    """A Ray Train job for the cell, then batch inference on the held-out split into the same run."""
    from ray import tune

    from mdm.platform.infer.generation.job import run_inference
    from mdm.platform.tracking.session import find_run
    from mdm.platform.tracking.tracker import Tracker

    result = train_job(cfg, run_name, tags, label, driver=driver_for(cfg))
    m = dict(result.metrics or {})
    export = m["export_dir"]
    split = cfg.compare.eval_split
    # An RL cell samples its rollouts above temperature 0; its held-out answers are greedy, as the SFT cells'.
    scored = with_overrides(cfg, {"sampler.temperature": 0.0}) if cfg.rl.enabled else cfg
    ev = run_inference(scored, model=export, task=cfg.eval.task or cfg.train.task, split=split,
                       limit=cfg.compare.eval_limit, out=str(Path(export).parent / f"predictions_{split}.jsonl"))
    final = {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and "/" in k}
    final.update({DONE_KEY: float(ev["accuracy"]), "eval/n": float(ev["n"]),
                  "batch_size": float(cfg.train.batch_size_per_gpu)})
    step = int(m.get("step", 0))
    # The run holding the latest attempt (a resumed Train job may have continued in a fresh run).
    # The training metrics are in the run already (the workers logged them): only the score joins them.
    find_run(Tracker.open(cfg.tracking) if cfg.tracking.enabled else None, run_name).metrics(
        {DONE_KEY: final[DONE_KEY], "eval/n": final["eval/n"]}, step=step)
    tune.report({**final, "step": step})
