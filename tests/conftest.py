"""Shared test set-up: keep every Ray port on loopback and make token auth explicit (see README)."""

import os
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller takes at most one report per worker per poll, and polls every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s); a worker's next `ray.train.report` waits until the previous one
# is taken (a queue of one). The tests' tiny runs report every step, so at the default they train at one step per
# 2 s, whatever the model: poll every 0.25 s instead (a 12-step run: ~65 s -> ~43 s on 2 busy cores). Every Ray
# the tests start inherits it: in this process, embedded in a subprocess, `ray start` heads, the multinode cluster.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Two Ray Train features the tests have no use for, each a cost on every run of 2 busy cores: the preemption
# watcher (an actor per run polling for cloud nodes being drained; the product's embedded Ray turns it off too,
# `runtime.ray_runtime.EMBEDDED_ENV`) and Train's Prometheus metrics (nothing scrapes them here).
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
# Every `mlflow server` a test starts would also start MLflow's job runner: six huey consumer processes (~250 MB
# and a busy start each) for GenAI jobs no test runs. The tracking API and the UI do not need them.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
# Under pytest-xdist (`-n 2`, the README's command) each worker process gets its own Ray temp dir: a plain
# `ray.init()` looks there (ray_current_cluster) for a cluster to join, so one worker's `ray start` heads are never
# found by the other's tests, and their session folders (logs, sockets) stay apart.
if os.environ.get("PYTEST_XDIST_WORKER") and "RAY_TMPDIR" not in os.environ:
    import tempfile

    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix=f"ray-{os.environ['PYTEST_XDIST_WORKER']}-", dir="/tmp")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only `shared/` folder beside the repository (GSM8K data, the LLaDA reference fixture)."""
    if not SHARED.is_dir():
        pytest.fail(f"expected the shared data folder at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A real S3 server (moto, in-process) on 127.0.0.1 with bucket `mdm`; the AWS_* environment points the
    pyarrow/boto3 clients at it for the session. Yields the endpoint URL."""
    import socket
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from multinode.s3_server import S3Server

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    server = S3Server(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="mdm")
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

