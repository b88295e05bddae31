"""The tracked-run session (`mdm.platform.tracking.session`) on a real sqlite MLflow store.

- `tracked_run` opens the run by name with its params, tags, config YAML and dataset input, and ends it
  FINISHED; an exception in the block ends it FAILED and propagates; the same name again resumes the run;
- an attached session (the Ray worker's) follows its attempt into a fresh run, and the opener then ends that
  run, not the superseded one; `find_run` by name finds that run too;
- predictions are written as JSONL, logged beside it and as an MLflow table;
- without a tracker every method does nothing (and the predictions file is still written).
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from mdm.platform.config import load_config
from mdm.platform.tracking.dataset import describe_dataset
from mdm.platform.tracking.session import TrackedRun, attach_run, find_run, tracked_run
from mdm.platform.tracking.tracker import Tracker


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    root = tmp_path_factory.mktemp("session")
    cfg = load_config([], [f"tracking.tracking_uri=sqlite:///{root}/mlruns.db", "tracking.experiment_name=sess"])
    return Tracker.open(cfg.tracking)


RECORDS = [{"task": "t", "prompt": "1+1?", "gold_raw": "2", "prediction": "2", "meta": {"score": 1.0}, "id": "a"}]


def test_opens_fills_and_finishes_then_resumes(tracker, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"input_ids": [1, 2], "prompt_length": 1}\n')
    with tracked_run(tracker, "sess-1", params={"train.lr": 0.01}, config_yaml="train: {lr: 0.01}\n",
                     tags={"team": "d"}, display_name="lr=0.01", dataset=describe_dataset(str(data), rows=1)) as run:
        run.metrics({"train/loss": 1.5}, step=3)
        run.tags({"mdm.init_digest": "abc"})
        path = run.log_predictions(RECORDS, str(tmp_path / "predictions_test.jsonl"), "eval")
    client = tracker.client
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "lr=0.01"
    assert got.data.params == {"train.lr": "0.01"} and got.data.tags["team"] == "d"
    assert got.data.tags["mdm.run"] == "sess-1" and got.data.tags["mdm.init_digest"] == "abc"
    assert got.data.metrics == {"train/loss": 1.5}
    assert [d.dataset.name for d in got.inputs.dataset_inputs] == ["train"]
    assert [json.loads(line) for line in path.read_text().splitlines()] == RECORDS
    arts = {a.path for a in client.list_artifacts(run.run_id, "eval")}
    assert arts == {"eval/predictions_test.jsonl", "eval/predictions_test.json"}
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.run_id)}
    with tracked_run(tracker, "sess-1", params={}, config_yaml="") as again:
        assert again.run_id == run.run_id


def test_an_exception_ends_the_run_failed(tracker):
    with pytest.raises(RuntimeError, match="boom"):
        with tracked_run(tracker, "sess-2", params={}, config_yaml="") as run:
            raise RuntimeError("boom")
    assert tracker.client.get_run(run.run_id).info.status == "FAILED"


def test_the_opener_ends_the_run_an_attached_attempt_moved_to(tracker):
    with tracked_run(tracker, "sess-3", params={}, config_yaml="") as run:
        run.metrics({"train/loss": 2.0}, step=5)        # a killed attempt's point past its checkpoint (step 0)
        worker = attach_run(tracker.uri, run.run_id)
        worker.begin_attempt(kept_through=None)           # from scratch: no earlier point may stay
        worker.metrics({"train/loss": 1.0}, step=5)
    assert worker.run_id != run.run_id
    client = MlflowClient(tracker.uri)
    assert client.get_run(worker.run_id).info.status == "FINISHED"
    assert client.get_run(run.run_id).info.status == "KILLED"  # superseded, folded beneath the new run
    assert [m.value for m in client.get_metric_history(worker.run_id, "train/loss")] == [1.0]
    assert find_run(tracker, "sess-3").run_id == worker.run_id  # by name, past the superseded run
    assert not find_run(tracker, "no-such-run").enabled and not find_run(None, "sess-3").enabled


def test_without_a_tracker_nothing_is_logged(tmp_path):
    with tracked_run(None, "off", params={}, config_yaml="") as run:
        assert not run.enabled and run.run_id is None
        run.metrics({"a/b": 1.0}, step=1)
        run.tags({"x": "y"})
        run.begin_attempt(3)
        run.log_export(str(tmp_path), "cfg")
        with run.system_metrics(1.0):
            pass
        assert run.log_predictions(RECORDS, str(tmp_path / "p.jsonl")).exists()
    assert not TrackedRun().enabled
