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
