"""The tuner core without Ray: the trial status rule, error text, the parent's status, concurrency of an
in-process trial, the scoped environment, and a trial namer that survives
pickling (Tune pickles it).

Sweeps and comparisons end to end (which run all of it under real Tune, a killed and resumed sweep
included) are in test_tune.py; a sweep's concurrency is in test_tune_space.py.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from types import SimpleNamespace

from mdm.platform.config import load_config
from mdm.platform.sweep.sweep import sweep_label
from mdm.platform.tuner.parent_run import parent_status
from mdm.platform.tuner.space import parse_sweep
from mdm.platform.tuner.tuner import ERROR_CHARS, TrialNamer, TrialResources, environ, error_text, trial_status


def test_status_rule_failed_beats_done_and_neither_is_killed():
    assert trial_status(RuntimeError("x"), done=True) == "FAILED"
    assert trial_status(None, done=True) == "FINISHED"
    assert trial_status(None, done=False) == "KILLED"


def test_parent_finishes_when_one_trial_finished():
    assert parent_status(["FAILED", "KILLED", "FINISHED"]) == "FINISHED"
    assert parent_status(["FAILED", "KILLED"]) == "FAILED"
    assert parent_status([]) == "FAILED"


def test_error_text_is_the_first_line_cut_to_the_limit():
    assert error_text(None) is None
    assert error_text(ValueError("bad lr\nTraceback ...")) == "bad lr"
    assert error_text(ValueError("x" * 1000)) == "x" * ERROR_CHARS
    assert error_text(ValueError("")) == "ValueError"


def test_in_process_trials_reserve_nothing_and_ignore_gpus():
    need = TrialResources(cpus=1.5)
    assert need.max_concurrent({"CPU": 8.0, "GPU": 0.0}) == 5     # 8 / 1.5 = 5.3
    assert need.max_concurrent({"CPU": 1.0}) == 1                 # never below one
    assert need.max_concurrent({"CPU": 8.0}, fixed=2) == 2


def test_an_rl_trial_counts_its_rollout_actors_and_a_trial_too_big_is_named():
    cfg = load_config([], ["rl.enabled=true", "rl.rollout_actors=2", "rl.actor_cpus=1", "ray.num_workers=1",
                           "ray.cpus_per_worker=1", "tune.cpus_per_trial=0.1", "tune.reserve_cpus=0"])
    need = TrialResources.train_job(cfg.tune, cfg.ray, cfg.rl)
    assert need.group_cpus == 3.0 and need.too_big({"CPU": 4.0}) is None
    assert need.too_big({"CPU": 3.0}).startswith("one trial needs 3.1 CPUs (tune.cpus_per_trial 0.1 + its worker "
                                                 "group and rollout actors 3) and the cluster has 3 free")
    sft = TrialResources.train_job(cfg.tune, cfg.ray, load_config().rl)  # rl.enabled false: no actors
    assert sft.group_cpus == 1.0


def test_environ_sets_then_restores_and_removes():
    os.environ["MDM_TEST_KEEP"] = "old"
    os.environ.pop("MDM_TEST_NEW", None)
    with environ({"MDM_TEST_KEEP": "1", "MDM_TEST_NEW": "2"}):
        assert os.environ["MDM_TEST_KEEP"] == "1" and os.environ["MDM_TEST_NEW"] == "2"
    assert os.environ.pop("MDM_TEST_KEEP") == "old" and "MDM_TEST_NEW" not in os.environ


def test_trial_namer_names_a_trial_by_its_overrides_after_pickling():
    cfg = load_config()
    space = parse_sweep({"train.lr": {"grid": [1e-3, 3e-4]}}, cfg)
    trial = SimpleNamespace(config={"grid": space.trials[1], "sample": {}})
    # Tune pickles the namer; a label over plain values pickles by reference (the sweep's label holds the
    # root config, whose run-time class cloudpickle would rebuild in place if unpickled in this process).
    namer = pickle.loads(pickle.dumps(TrialNamer(space, functools.partial(json.dumps, sort_keys=True))))
    assert namer(trial) == '{"train.lr": 0.0003}'
    assert TrialNamer(space, functools.partial(sweep_label, cfg, space))(trial) == "lr=3e-4"


def test_a_complete_trial_is_finished_by_its_last_report_when_its_history_file_lacks_the_key(tmp_path):
    """What a sweep resumed after its driver was killed mid-trial left on disk (seen in test_tune.py's grid): the
    restarted trial's progress.csv with the killed attempt's header (no `export_dir`, no `eval/loss`) and an
    empty result.json, while Tune's last report is whole. The row is FINISHED with the last report's values."""
    import pandas as pd
    from ray.tune import Result

    from mdm.platform.sweep.sweep_results import COMPLETED_KEY, sweep_rows
    from mdm.platform.tuner.tuner import trial_outcome

    history = pd.DataFrame({"step": [1, 2, 3, 4], "train/loss": [5.0, 4.9, 4.8, 4.7]})
    last = {"step": 4, "eval/loss": 4.5, COMPLETED_KEY: "/out/final", "train/loss": 4.7}
    whole = Result(metrics=last, checkpoint=None, error=None, path=str(tmp_path / "t_00001"),
                   metrics_dataframe=history)
    out = trial_outcome(whole, COMPLETED_KEY)
    assert out.status == "FINISHED" and out.last == last
    space = parse_sweep({"train.lr": {"grid": [1e-3]}}, load_config([]))
    row = sweep_rows([whole], space, "s", "eval/loss", lambda params: "x")[0]
    assert (row["status"], row["metric"], row["step"]) == ("FINISHED", 4.5, 4)
    # a trial stopped before its last report stays KILLED, with its history's values
    cut = Result(metrics={"step": 2, "train/loss": 4.9}, checkpoint=None, error=None,
                 path=str(tmp_path / "t_00002"), metrics_dataframe=history.head(2))
    assert trial_outcome(cut, COMPLETED_KEY).status == "KILLED"
    assert sweep_rows([cut], space, "s", "train/loss", lambda params: "x")[0]["metric"] == 4.9
