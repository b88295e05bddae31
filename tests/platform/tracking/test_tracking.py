"""MLflow tracking: run resume by name, params/tags/config artifact in a real sqlite store, and the
unreachable-server error that stops `mdm train` before Ray or any worker starts."""

from __future__ import annotations

import os
import socket

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from mdm.platform.config import load_config  # noqa: E402
from mdm.platform.config_ops import dump_config, flatten  # noqa: E402
from mdm.platform.tracking.tracker import Tracker, TrackingError, check_reachable, resolve_uri  # noqa: E402
from mdm.platform.commands.train import run  # noqa: E402


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_relative_sqlite_uri_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None) == f"sqlite:///{tmp_path}/mlruns.db"
    assert resolve_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_unreachable_server_names_address():
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(TrackingError, match=uri.replace(".", r"\.")):
        check_reachable(uri, timeout_s=2)


def test_mdm_train_fails_fast_on_unreachable_tracking(tmp_path, capsys, arithmetic_data):
    uri = f"http://127.0.0.1:{_closed_port()}"
    cfg = load_config([], [f"train.train_data_path={arithmetic_data['train']}",
                           f"data.tokenizer={arithmetic_data['tokenizer']}", f"tracking.tracking_uri={uri}",
                           f"ray.storage_path={tmp_path / 'ray'}", f"train.output_dir={tmp_path / 'out'}"])
    assert run(cfg) == 2
    err = capsys.readouterr().err
    assert uri in err and "cannot reach the MLflow tracking server" in err
    # Nothing was started or written: the check precedes Ray, the data pass and the worker group.
    assert not (tmp_path / "ray").exists() and not (tmp_path / "out").exists()


def test_start_run_logs_params_and_config_and_resumes_by_name(tmp_path):
    cfg = load_config([], ["train.lr=0.003", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db"])
    tracker = Tracker.open(cfg.tracking)
    run_id = tracker.start_run("arith-1234", params=flatten(cfg), config_yaml=dump_config(cfg),
                               tags={"mlflow.parentRunId": "parent-xyz", "team": "d"})
    again = tracker.start_run("arith-1234", params=flatten(cfg), config_yaml=dump_config(cfg))
    assert again == run_id
    client = MlflowClient(tracking_uri=tracker.uri)
    runs = client.search_runs([tracker.experiment_id()])
    assert [r.info.run_id for r in runs] == [run_id]  # resumed, not duplicated
    data = client.get_run(run_id).data
    assert data.params["train.lr"] == "0.003" and data.params["model.d_model"] == str(cfg.model.d_model)
    assert data.tags["mlflow.parentRunId"] == "parent-xyz" and data.tags["mlflow.runName"] == "arith-1234"
    assert "config.yaml" in [a.path for a in client.list_artifacts(run_id)]
    other = tracker.start_run("arith-5678", params={}, config_yaml="")
    assert other != run_id
