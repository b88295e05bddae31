"""`mdm tracking-server`: a real MLflow server on 127.0.0.1 that clients log to over HTTP, artifacts proxied.

Run: pytest tests/platform/tracking/test_tracking_server.py
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from mdm.platform.cli import main as mdm_main


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_refuses_a_wide_bind_without_auth(capsys):
    assert mdm_main(["tracking-server", "--host", "0.0.0.0"]) == 2
    assert "--auth" in capsys.readouterr().err
    assert mdm_main(["tracking-server", "--host", "0.0.0.0", "--auth", "--print-command"]) == 0
    assert "--app-name basic-auth" in capsys.readouterr().out


@pytest.mark.slow
def test_clients_log_metrics_and_artifacts_over_http(tmp_path):
    from mlflow.tracking import MlflowClient

    port = _port()
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "mdm", "tracking-server", "--store", str(store), "--port", str(port),
                             "--workers", "1"], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(uri + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"server did not come up: {proc.stdout.read() if proc.poll() is not None else ''}")
        # Every socket the server's process tree listens on is on loopback.
        listening = []
        for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
            try:
                listening += [c.laddr for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            except psutil.NoSuchProcess:  # a short-lived helper process of the server
                pass
        assert listening and all(a.ip in ("127.0.0.1", "::1") for a in listening), listening

        client = MlflowClient(tracking_uri=uri)
        exp = client.create_experiment("e")
        run = client.create_run(exp, run_name="r").info.run_id
        client.log_metric(run, "train/loss", 1.5, step=3)
        art = tmp_path / "model"
        art.mkdir()
        (art / "config.json").write_text('{"a": 1}')
        client.log_artifacts(run, str(art), "final_model")
        # The artifact went through the server into the store's artifact root, not the client's cwd.
        assert client.get_run(run).info.artifact_uri.startswith("mlflow-artifacts:")
        assert list(store.glob("mlartifacts/**/final_model/config.json"))
        back = client.download_artifacts(run, "final_model", str(tmp_path / "back"))
        assert open(os.path.join(back, "config.json")).read() == '{"a": 1}'
        assert [m.value for m in client.get_metric_history(run, "train/loss")] == [1.5]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
