"""End to end through Ray Jobs: a real head node on 127.0.0.1, `ray job submit` of experiments/gsm8k.py.

    pytest tests/experiments/test_ray_job.py -q          # ~2-4 minutes on 2 CPUs

The test starts its own head (`ray start --head`) bound to loopback, with every port it opens chosen free
and a private `--temp-dir`, submits `experiments/gsm8k.py --preset tiny` on local GSM8K (../shared) with
`ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml`, waits for SUCCEEDED, then reads
the MLflow store (an absolute sqlite path in tmp, passed with --set) for the run's eval metrics and its
predictions artifact.

Stopping the head: `ray stop` kills every Ray process of this user on the machine, which would take down
the Ray instances of other tests running in parallel. So the test stops only its own node: the processes
whose command line names its private temp dir (GCS, raylet, dashboard, log monitor, ...) and all their
descendants (workers, the job supervisor, the job's driver), SIGTERM, then SIGKILL for what is left after a
short grace period (Ray's processes exit on TERM; one that does not would hold the teardown for nothing).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import psutil  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env() -> dict[str, str]:
    # Explicit, whatever the caller's shell says: no token auth (see README "Ray token auth"), loopback head.
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def _stop_node(temp_dir: str) -> None:
    """Terminate the processes of the node that uses `temp_dir`, and their descendants; nothing else."""
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid != os.getpid() and temp_dir in " ".join(p.info["cmdline"] or []):
                roots.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    procs = {p.pid: p for p in roots}
    for p in roots:
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for p in procs.values():
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def head_node() -> Iterator[str]:
    """A Ray head on 127.0.0.1 with a free port for everything it listens on; yields the dashboard URL."""
    temp_dir = tempfile.mkdtemp(prefix="rayg_", dir="/tmp")  # short: Ray's unix socket paths must fit
    gcs, dash, nm, om, metrics, agent_http, agent_grpc, rt_env, client = _free_ports(9)
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
           f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--metrics-export-port={metrics}",
           f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--runtime-env-agent-port={rt_env}", f"--ray-client-server-port={client}",
           "--num-cpus=4", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"ray start failed:\n{out.stdout}\n{out.stderr}"
        yield f"http://127.0.0.1:{dash}"
    finally:
        _stop_node(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_logs(address: str, job_id: str) -> str:
    out = subprocess.run([RAY, "job", "logs", "--address", address, job_id], env=_env(), capture_output=True,
                         text=True, timeout=60)
    return out.stdout[-6000:] + out.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gsm8k_job_succeeds_and_logs_to_mlflow(head_node: str, shared_dir: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlruns.db'}"  # absolute: the job runs in its own working-dir copy
    outputs = tmp_path / "outputs"
    job_id = f"gsm8k_test_{os.getpid()}_{int(time.time())}"
    entry = ["python", "experiments/gsm8k.py", "--preset", "tiny",
             "--data-dir", str((shared_dir / "data" / "gsm8k").resolve()), "--limit", "48",
             "--work-dir", str(tmp_path / "work"),
             "--set", "train.max_steps=3", "--set", "train.batch_size_per_gpu=4", "--set", "train.max_len=256",
             "--set", "train.logging_steps=1", "--set", "eval.limit=4", "--set", "eval.batch_size=4",
             "--set", "sampler.gen_length=16", "--set", "sampler.block_length=16", "--set", "sampler.steps=8",
             "--set", f"tracking.tracking_uri={store}", "--set", f"train.output_dir={outputs}",
             "--set", f"ray.storage_path={tmp_path / 'ray_results'}"]
    submit = subprocess.run([RAY, "job", "submit", "--address", head_node, "--submission-id", job_id, "--no-wait",
                             "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--", *entry],
                            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=180)
    assert submit.returncode == 0, f"ray job submit failed:\n{submit.stdout}\n{submit.stderr}"

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head_node)
    deadline = time.time() + 780
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.time() < deadline:
        time.sleep(3)
        status = client.get_job_status(job_id)
    assert status == JobStatus.SUCCEEDED, f"job {job_id} ended {status}:\n{_job_logs(head_node, job_id)}"

    # The summary the script wrote, and the MLflow run it points at.
    summaries = list(outputs.glob("*/summary.json"))
    assert len(summaries) == 1, f"expected one summary.json under {outputs}: {summaries}"
    summary = json.loads(summaries[0].read_text())
    assert summary["n_eval"] == 4 and 0.0 <= summary["accuracy"] <= 1.0
    client_ml = MlflowClient(tracking_uri=store)
    exp = client_ml.get_experiment_by_name("gsm8k")
    assert exp is not None, f"no MLflow experiment 'gsm8k' in {store}"
    runs = client_ml.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{summary['run_name']}'")
    assert len(runs) == 1, f"expected one run named {summary['run_name']}, got {len(runs)}"
    run = runs[0]
    assert run.info.run_id == summary["mlflow_run_id"]
    metrics = run.data.metrics
    assert "eval/loss" in metrics and metrics["eval/loss"] > 0, sorted(metrics)
    prefix = "infer/gsm8k/test/llada"  # task / split / sampler (the tiny preset's)
    assert abs(metrics[f"{prefix}/accuracy"] - summary["accuracy"]) < 1e-9, sorted(metrics)
    arts = [a.path for a in client_ml.list_artifacts(run.info.run_id, prefix)]
    pred = [a for a in arts if a.endswith(".jsonl")]
    assert pred, f"no predictions artifact under {prefix}: {arts}"
    local = client_ml.download_artifacts(run.info.run_id, pred[0], str(tmp_path / "dl"))
    rows = [json.loads(line) for line in Path(local).read_text().splitlines()]
    assert len(rows) == 4 and {"task", "prompt", "gold_raw", "prediction", "meta", "id"} <= set(rows[0])
