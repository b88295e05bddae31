"""The run lease (`mdm.platform.train.lease`): one live holder per run name; a dead holder's lease is taken over.

Live holders are real processes (this one, a child), dead ones are processes that have exited; a holder on
another machine is a lease file with another host name, judged by its heartbeat. On a local disk and on an
S3 server (moto's, on 127.0.0.1) through pyarrow, as a cluster's storage would be.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from mdm.platform.train import lease as lease_mod
from mdm.platform.train.lease import LEASE_FILE, LeaseError, RunLease


def _write(path, **holder) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"started": "earlier", "command": "mdm train", "token": "other", **holder}))


def test_second_live_holder_is_refused_naming_the_first(tmp_path):
    first = RunLease.acquire(str(tmp_path), "run-a")
    try:
        with pytest.raises(LeaseError) as e:
            RunLease.acquire(str(tmp_path), "run-a")
        msg = str(e.value)
        assert msg.startswith(f"run run-a is already being trained by {first.holder['host']} pid "
                              f"{first.holder['pid']} (started "), msg
        assert f"lease {tmp_path}/run-a/{LEASE_FILE}" in msg and "run_name" in msg
        RunLease.acquire(str(tmp_path), "run-b").release()  # another name is another lease
    finally:
        first.release()
    assert not (tmp_path / "run-a").exists()  # the lease made the run's directory; empty, it goes with it
    again = RunLease.acquire(str(tmp_path), "run-a")  # released: free again
    (tmp_path / "run-a" / "checkpoint_0").mkdir()  # the run wrote something: its directory stays
    again.release()
    assert sorted(p.name for p in (tmp_path / "run-a").iterdir()) == ["checkpoint_0"]


def test_lease_of_a_process_that_exited_is_taken_over(tmp_path, capsys):
    import socket

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    _write(tmp_path / "r" / LEASE_FILE, host=socket.gethostname(), pid=child.pid, pid_start="1",
           heartbeat=time.time())
    held = RunLease.acquire(str(tmp_path), "r")
    held.release()
    note = capsys.readouterr().err.strip()
    assert note.startswith(f"mdm: taking over the lease of run r from {socket.gethostname()} pid {child.pid} ")
    assert note.endswith(f"process {child.pid} no longer exists") and len(note.splitlines()) == 1


def test_live_process_on_this_host_holds_even_with_an_old_heartbeat(tmp_path):
    import socket

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write(tmp_path / "r" / LEASE_FILE, host=socket.gethostname(), pid=child.pid,
               pid_start=lease_mod._pid_start(child.pid), heartbeat=time.time() - 3600)
        with pytest.raises(LeaseError, match=f"pid {child.pid}"):
            RunLease.acquire(str(tmp_path), "r")
        # The same pid with another start time is another process: the holder is gone.
        _write(tmp_path / "r" / LEASE_FILE, host=socket.gethostname(), pid=child.pid, pid_start="1",
               heartbeat=time.time())
        RunLease.acquire(str(tmp_path), "r").release()
    finally:
        child.kill()
        child.wait()


def test_other_host_is_judged_by_its_heartbeat(tmp_path, capsys):
    _write(tmp_path / "r" / LEASE_FILE, host="node-7", pid=4242, heartbeat=time.time() - 5)
    with pytest.raises(LeaseError, match="node-7 pid 4242"):
        RunLease.acquire(str(tmp_path), "r")
    _write(tmp_path / "r" / LEASE_FILE, host="node-7", pid=4242, heartbeat=time.time() - lease_mod.STALE_AFTER_S - 5)
    RunLease.acquire(str(tmp_path), "r").release()
    assert "no heartbeat for 1" in capsys.readouterr().err


def test_heartbeat_refreshes_while_held(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_mod, "HEARTBEAT_S", 0.2)
    held = RunLease.acquire(str(tmp_path), "r")
    try:
        first = json.loads((tmp_path / "r" / LEASE_FILE).read_text())["heartbeat"]
        time.sleep(1.0)
        assert json.loads((tmp_path / "r" / LEASE_FILE).read_text())["heartbeat"] > first
    finally:
        held.release()


def test_lease_on_s3(monkeypatch):
    """The same rules on an object store (moto's S3 server on 127.0.0.1), as `ray.storage_path: s3://...`."""
    import importlib.util
    from pathlib import Path

    import boto3

    # The multi-node suite's moto server: moto 5.2.1's CompleteMultipartUpload answer, corrected for pyarrow.
    path = Path(__file__).parents[2] / "multinode" / "s3_server.py"
    spec = importlib.util.spec_from_file_location("_s3_server", path)
    s3_server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(s3_server)
    server = s3_server.S3Server(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(lease_mod, "SETTLE_S", 0.1)
        boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="runs")
        root = "s3://runs/mdm"
        first = RunLease.acquire(root, "r")
        with pytest.raises(LeaseError, match=f"pid {first.holder['pid']}"):
            RunLease.acquire(root, "r")
        first.release()
        RunLease.acquire(root, "r").release()
    finally:
        server.stop()


class _Flaky:
    """The lease's pyarrow filesystem, failing every call with an I/O error while `down` (storage unreachable)."""

    def __init__(self, fs) -> None:
        self.fs, self.down = fs, False

    def __getattr__(self, name):
        attr = getattr(self.fs, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self.down:
                raise OSError("When reading information for key 'x' in bucket 'mdm': AWS Error NETWORK_CONNECTION")
            return attr(*args, **kwargs)
        return call


def test_storage_outage_warns_once_keeps_beating_and_release_never_raises(tmp_path, monkeypatch, capsys):
    """Unreachable storage is not a taken-over lease: the heartbeat warns once, beats again when storage is back;
    a release during an outage warns instead of raising (it would hide how the run ended)."""
    monkeypatch.setattr(lease_mod, "HEARTBEAT_S", 0.05)
    held = RunLease.acquire(str(tmp_path), "run-f")
    held.fs = flaky = _Flaky(held.fs)
    flaky.down = True
    time.sleep(0.4)
    flaky.down = False
    before = json.loads((tmp_path / "run-f" / LEASE_FILE).read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads((tmp_path / "run-f" / LEASE_FILE).read_text())["heartbeat"] > before  # beating again
    flaky.down = True
    held.release()
    err = capsys.readouterr().err
    assert err.count("mdm: warning: could not renew the lease") == 1 and "is renewed again" in err
    assert "taken over" not in err
    assert "mdm: warning: could not release the lease" in err and "AWS Error NETWORK_CONNECTION" in err
