"""The tracking spool against a real `mlflow server` on 127.0.0.1 (sqlite backend): training never waits on it.

- Records appended to the spool reach the server in order, each (run, key, step) exactly once: after a
  shipper that died mid-send (part of its batch on the server, its cursor not moved), after a torn line,
  and when synced again. Tags, artifacts and the run's end go through it too; `mdm tracking sync RUN_DIR`
  ships what is left.
- With nothing answering, the shipper says once that tracking is offline and keeps every record.
- The Done-means test: a real `mdm train` run (Ray, one worker) logging to a real server that is killed at a
  step and started again only after longer than MLflow's HTTP retry budget (set small here): the step counter
  (the spool's own records, written by training) advances during the outage, the run finishes, and the server
  holds every step's metrics exactly once.

Run: pytest tests/platform/tracking/test_tracking_spool.py
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from mdm.platform.cli import main as mdm_main  # noqa: E402
from mdm.platform.tracking.shipper import Shipper  # noqa: E402
from mdm.platform.tracking.spool import Cursor, Spool, metric, tag  # noqa: E402
from mdm.platform.tracking.spool_logger import end_run  # noqa: E402


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """`mdm tracking-server` (a real `mlflow server`) on 127.0.0.1 that the test can kill and start again."""

    def __init__(self, store: Path) -> None:
        self.store, self.port, self.proc = store, _port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        self.proc = subprocess.Popen([sys.executable, "-m", "mdm", "tracking-server", "--store", str(self.store),
                                      "--port", str(self.port), "--workers", "1"], start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"mlflow server did not come up at {self.uri}")

    def kill(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # a crash: nothing is flushed or answered
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow_server")).start()
    yield srv
    srv.kill()


def _run(uri: str, name: str) -> str:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("spool") or client.get_experiment(client.create_experiment("spool"))
    return client.create_run(exp.experiment_id, run_name=name).info.run_id


def _points(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def test_ships_each_step_once_across_a_crash_mid_send_and_a_torn_line(server, tmp_path):
    run_id = _run(server.uri, "crash")
    spool = Spool.create(str(tmp_path / "run" / "tracking_spool"), server.uri, run_id)
    spool.append([metric("train/loss", 1.0 / (s + 1), s) for s in range(10)] + [tag("mdm.init_digest", "ab")])
    shipper = Shipper(spool, announce=lambda line: None)
    assert shipper.sync() and shipper.shipped == 11
    assert _points(server.uri, run_id, "train/loss") == list(range(10))

    # A shipper dies mid-send: steps 10..19 are in flight, 10..14 reached the server, the cursor did not move.
    start = spool.size()
    spool.append([metric("train/loss", 0.5, s) for s in range(10, 20)])
    cur = spool.cursor()
    spool.set_cursor(Cursor(cur.offset, cur.run_id, inflight_end=spool.size()))
    MlflowClient(tracking_uri=server.uri).log_batch(
        run_id, metrics=[m for m in _as_metrics(spool.pending(100, start)[0]) if m.step < 15])
    # ... and a process dies halfway through writing a line; a restarted one appends after it.
    with open(spool.records_path, "ab") as f:
        f.write(b'{"kind": "metric", "key": "train/lo')
    spool.append([metric("train/loss", 0.25, 20)])
    again = Shipper(Spool.open(str(tmp_path / "run")), announce=lambda line: None)
    assert again.sync()
    assert _points(server.uri, run_id, "train/loss") == list(range(21))  # each step once, none lost
    assert Shipper(spool, announce=lambda line: None).sync()  # nothing left: nothing sent twice
    assert _points(server.uri, run_id, "train/loss") == list(range(21))
    assert MlflowClient(tracking_uri=server.uri).get_run(run_id).data.tags["mdm.init_digest"] == "ab"


def _as_metrics(records):
    from mlflow.entities import Metric

    return [Metric(r["key"], r["value"], r["ts"], r["step"]) for _, r in records]


def test_artifacts_end_and_cli_sync(server, tmp_path, capsys):
    run_id = _run(server.uri, "cli")
    spool_dir = tmp_path / "run" / "tracking_spool"
    spool = Spool.create(str(spool_dir), server.uri, run_id)
    art = tmp_path / "plot.txt"
    art.write_text("p")
    spool.append([metric("eval/loss", 2.0, 4), spool.add_artifact(str(art), "plots")])
    art.unlink()  # the spool kept its own copy (a temporary file may be gone when the server is back)
    assert mdm_main(["tracking", "sync", str(tmp_path / "run")]) == 0
    assert "2 record(s) shipped" in capsys.readouterr().err
    client = MlflowClient(tracking_uri=server.uri)
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/plot.txt"]
    assert end_run(server.uri, run_id, str(spool_dir), "FINISHED", timeout_s=30)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert _points(server.uri, run_id, "eval/loss") == [4]


def test_offline_says_so_once_and_keeps_every_record(tmp_path):
    dead = f"http://127.0.0.1:{_port()}"  # nothing listens there
    lines: list[str] = []
    spool = Spool.create(str(tmp_path / "tracking_spool"), dead, "r0")
    shipper = Shipper(spool, announce=lines.append).start()
    for s in range(5):
        spool.append([metric("train/loss", 1.0, s)])
        shipper.notify()
        time.sleep(0.3)
    t0 = time.monotonic()
    assert not shipper.close(timeout_s=1.0)
    assert time.monotonic() - t0 < 5  # the end waits a bounded time, not MLflow's retry budget
    assert len(lines) == 1 and "offline" in lines[0] and dead in lines[0], lines
    assert [r["step"] for _, r in spool.pending(100)[0]] == list(range(5))
    assert mdm_main(["tracking", "sync", str(tmp_path)]) == 1


STEPS, KILL_AT, OUTAGE_S = 60, 10, 12.0
# MLflow's HTTP retry budget in this test's processes (Ray's workers inherit it): about 3 s of retries, so the
# outage outlasts it several times over (the default, 7 retries with backoff 2, is about 4 minutes).
RETRY_BUDGET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


@pytest.fixture(scope="module")
def small_retry_budget():
    old = {k: os.environ.get(k) for k in RETRY_BUDGET}
    os.environ.update(RETRY_BUDGET)
    yield
    for k, v in old.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _spooled_step(records: Path) -> int:
    """The last training step in the spool: training's own step counter, as written by the worker."""
    if not records.exists():
        return -1
    steps = [json.loads(line).get("step", -1) for line in records.read_bytes().splitlines()
             if line.startswith(b'{') and b'"train/loss"' in line]
    return max(steps, default=-1)


@pytest.mark.slow
def test_training_goes_on_through_a_server_outage_and_the_server_gets_every_step_once(
        small_retry_budget, ray_local, arithmetic_data, server, tmp_path):
    from mdm.platform.config import load_config
    from mdm.platform.train.driver import train_driver

    sets = {"train.train_data_path": arithmetic_data["train"], "data.tokenizer": arithmetic_data["tokenizer"],
            "run_name": "spooled", "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2,
            "model.mlp_hidden_size": 64, "train.batch_size_per_gpu": 8, "train.max_len": 64,
            "train.max_steps": STEPS, "train.logging_steps": 1, "train.save_strategy": "no",
            "train.eval_strategy": "no", "deepspeed.enabled": False, "ray.num_workers": 1,
            "ray.cpus_per_worker": 0.5, "ray.storage_path": str(tmp_path / "ray"),
            "train.output_dir": str(tmp_path / "out"), "tracking.tracking_uri": server.uri,
            "tracking.experiment_name": "spool-train", "tracking.system_metrics_interval_s": 0,
            "tracking.log_model": False, "tracking.flush_timeout_s": 300}
    cfg = load_config([], [f"{k}={v}" for k, v in sets.items()])
    records = tmp_path / "out" / "spooled" / "tracking_spool" / "records.jsonl"
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = train_driver(cfg)
        except BaseException as e:  # noqa: BLE001  (re-raised below, in the test's thread)
            outcome["error"] = e

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while _spooled_step(records) < KILL_AT and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert thread.is_alive() and _spooled_step(records) >= KILL_AT, outcome
    server.kill()
    at_kill, t_kill = _spooled_step(records), time.monotonic()
    time.sleep(OUTAGE_S)
    at_restart = _spooled_step(records)  # the server is still down: it has not been started yet
    server.start()
    outage_s, at_back = time.monotonic() - t_kill, _spooled_step(records)
    thread.join(600)
    print(f"\noutage {outage_s:.0f}s (server killed at step {at_kill}, up again at step {at_back}); "
          f"steps made while down: {at_back - at_kill} (in the first {OUTAGE_S:.0f}s: {at_restart - at_kill})")
    if "error" in outcome:
        raise outcome["error"]
    assert at_restart > at_kill, "training made no progress while the tracking server was down"
    result = outcome["result"]
    assert result.error is None and result.metrics["step"] == STEPS
    client = MlflowClient(tracking_uri=server.uri)
    exp = client.get_experiment_by_name("spool-train")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`mdm.run` = 'spooled'")
    assert [r.info.status for r in runs] == ["FINISHED"]
    for key in ("train/loss", "train/lr", "train/grad_norm"):
        assert _points(server.uri, runs[0].info.run_id, key) == list(range(1, STEPS + 1)), key


def test_a_full_spool_disk_is_one_line_and_keeps_what_was_written(tmp_path):
    """The spool's disk full (its file on /dev/full, which answers every write ENOSPC): a StorageError whose one
    line names the file, the space and how to ship what the spool holds, which `mdm train` prints
    (interrupt.storage_failure)."""
    from mdm.platform.storage import StorageError

    spool = Spool.create(str(tmp_path / "spool"), "sqlite:///unused.db", "run0", "r")
    spool.records_path.unlink(missing_ok=True)
    spool.records_path.symlink_to("/dev/full")
    with pytest.raises(StorageError) as e:
        spool.append([metric("train/loss", 0.9, step=2)])
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"tracking spool not written: no space left on the device holding "
                                                f"{spool.records_path}: it needs about 0.0 MiB, ")
    assert f"mdm tracking sync {spool.dir}" in line
