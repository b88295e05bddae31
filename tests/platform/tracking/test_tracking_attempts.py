"""Attempts of a run in MLflow (`mdm.platform.tracking.attempts`), on a real sqlite store.

An attempt killed after its last checkpoint logged points the next attempt logs again; `begin_attempt` moves
the run to a fresh MLflow run of the same name holding the kept points, and folds the old one beneath it.
The end-to-end version (a SIGKILLed `train_driver`, then the same command again) is in test_rerun_safety.py.
"""

from __future__ import annotations

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mdm.platform.tracking.attempts import begin_attempt, current_run
from mdm.platform.tracking.dataset import DatasetRecord, log_dataset


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating one costs seconds); each test takes its own experiment."""
    root = tmp_path_factory.mktemp("attempts")
    return MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns.db"), root


def _run(store, name="gsm8k-ab12"):
    client, root = store
    n = len(client.search_experiments())
    exp = client.create_experiment(f"t{n}", artifact_location=(root / f"art{n}").as_uri())
    run_id = client.create_run(exp, run_name=name, tags={"mlflow.parentRunId": "sweep-parent", "team": "d"}).info.run_id
    client.log_param(run_id, "train.lr", "0.001")
    client.log_text(run_id, "train: {lr: 0.001}\n", "config.yaml")
    log_dataset(client, run_id, DatasetRecord(name="train", source="/data/train.jsonl", digest="ab12", profile=None))
    return client, exp, run_id


def _log(client, run_id, steps, attempt):
    client.log_batch(run_id, metrics=[Metric("train/loss", 10.0 * attempt + s, 1000 * attempt + s, s) for s in steps]
                     + [Metric("ppots/w_mean", 0.5, 1000 * attempt, 0)])


def test_resume_past_lost_points_moves_to_a_clean_run(store):
    client, exp, first = _run(store)
    assert begin_attempt(client, first, kept_through=None) == first  # a fresh run: nothing logged yet
    _log(client, first, range(1, 7), attempt=1)                       # killed after step 6, checkpoint at 4

    second = begin_attempt(client, first, kept_through=4)
    assert second != first and current_run(client, first) == second
    _log(client, second, range(5, 9), attempt=2)

    hist = sorted((m.step, m.value) for m in client.get_metric_history(second, "train/loss"))
    assert hist == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 14.0), (5, 25.0), (6, 26.0), (7, 27.0), (8, 28.0)]
    new, old = client.get_run(second), client.get_run(first)
    assert new.info.run_name == "gsm8k-ab12" and new.info.status == "RUNNING"
    assert new.data.params == {"train.lr": "0.001"}
    assert new.data.tags["team"] == "d" and new.data.tags["mlflow.parentRunId"] == "sweep-parent"
    assert new.data.tags["mdm.attempt"] == "2" and new.data.tags["mdm.resumed_from_step"] == "4"
    assert [a.path for a in client.list_artifacts(second)] == ["config.yaml"]
    [ds] = new.inputs.dataset_inputs  # the dataset the run trains on stays shown beside it
    assert (ds.dataset.name, ds.dataset.digest, ds.tags[0].value) == ("train", "ab12", "train")
    # The lost attempt keeps its whole history, renamed, ended and folded under the run that replaced it.
    assert old.info.run_name == "gsm8k-ab12 (attempt 1, superseded)" and old.info.status == "KILLED"
    assert old.data.tags["mdm.superseded_by"] == second and old.data.tags["mlflow.parentRunId"] == second
    assert old.data.tags["mdm.superseded_after_step"] == "4"
    assert len(client.get_metric_history(first, "train/loss")) == 6
    # Exactly one run answers to the name.
    named = client.search_runs([exp], filter_string="tags.`mlflow.runName` = 'gsm8k-ab12'")
    assert [r.info.run_id for r in named] == [second]


def test_resume_right_after_a_checkpoint_stays_in_the_run(store):
    client, _, run_id = _run(store)
    begin_attempt(client, run_id, kept_through=None)
    _log(client, run_id, range(1, 5), attempt=1)  # killed right after the step-4 checkpoint
    assert begin_attempt(client, run_id, kept_through=4) == run_id
    tags = client.get_run(run_id).data.tags
    assert tags["mdm.attempt"] == "2" and tags["mdm.resumed_from_step"] == "4"


def test_restart_from_scratch_keeps_no_point(store):
    client, _, first = _run(store)
    _log(client, first, range(1, 3), attempt=1)  # killed before its first checkpoint
    second = begin_attempt(client, first, kept_through=None)
    assert second != first and client.get_metric_history(second, "train/loss") == []
    assert client.get_metric_history(second, "ppots/w_mean") == []  # step 0 is the new attempt's to log


def test_an_evaluation_of_the_export_lands_in_the_run_that_holds_the_latest_attempt(store, tmp_path):
    """`mdm infer --model <output_dir>/<run>/final` logs into that training run: after a resume moved it to a
    fresh MLflow run, into the fresh one (not the KILLED attempt, which still carries the run's name tag)."""
    from mdm.platform.config import load_config
    from mdm.platform.infer.model_source import ModelSource
    from mdm.platform.infer.outputs import log_evaluation
    from mdm.platform.tracking.tracker import Tracker

    client, root = store
    cfg = load_config([], [f"tracking.tracking_uri=sqlite:///{root}/mlruns.db", "tracking.experiment_name=evals"])
    tracker = Tracker.open(cfg.tracking)
    first = tracker.start_run("r1", params={}, config_yaml="")
    _log(client, first, range(1, 4), attempt=1)
    second = begin_attempt(client, first, kept_through=2)
    export = tmp_path / "out" / "r1" / "final"
    src = ModelSource(str(export), str(export), "hf_dir")
    prefix = "infer/arithmetic/test/llada"
    assert log_evaluation(cfg, src, "arithmetic", "test", {"accuracy": 0.5}, [], prefix) == second
    assert client.get_run(second).data.metrics["infer/arithmetic/test/llada/accuracy"] == 0.5
    assert "infer/arithmetic/test/llada/accuracy" not in client.get_run(first).data.metrics
