"""Shared test set-up: keep every Ray port on loopback and make token auth explicit (see README), and one local
Ray (`ray_local`) for the tests that use one.

`ray_local` is the session's one in-process Ray (2 CPUs, loopback, no dashboard): it starts when a test first
asks for it and stays up while the tests that follow use it. The modules that use it therefore run one after
another, after the other modules of their directory (each module keeps its tests' order;
`pytest_collection_modifyitems` below), and Ray is shut down before the first test of a module that does not
use it, and at the end of the session: every other module sees no Ray in this process, as it would alone. A test
that shuts Ray down (or starts its own) is fine: the next `ray_local` starts it again.
"""

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

import pytest  # noqa: E402
from typing import Any, Optional  # noqa: E402

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


# -- the shared local Ray -------------------------------------------------------------------------------------
LOCAL_RAY = {"num_cpus": 2, "include_dashboard": False, "_node_ip_address": "127.0.0.1", "log_to_driver": False}
_ray_up = {"ours": False}  # True while the Ray of this process is the one ray_local started
_ray_modules: set[str] = set()  # node ids of the modules with a test that uses ray_local


def _uses_ray(item: pytest.Item) -> bool:
    return "ray_local" in getattr(item, "fixturenames", ())


def _module_id(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _dir_id(item: pytest.Item) -> str:
    return _module_id(item).rpartition("/")[0]


def _stop_local_ray() -> None:
    if _ray_up["ours"]:
        import ray

        _ray_up["ours"] = False
        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(scope="module")
def ray_local():
    """The local Ray (LOCAL_RAY), started here unless this session's is still up; returns the `ray` module."""
    import ray

    if not (_ray_up["ours"] and ray.is_initialized()):
        if ray.is_initialized():  # a Ray some test started its own way
            ray.shutdown()
        ray.init(**LOCAL_RAY)
        _ray_up["ours"] = True
    return ray


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Within each directory, the modules that use ray_local move after the others (stable; every module stays
    whole and in order), so that one Ray serves them one after another."""
    _ray_modules.clear()
    _ray_modules.update(_module_id(i) for i in items if _uses_ray(i))
    if not _ray_modules:
        return
    out: list[pytest.Item] = []
    i = 0
    while i < len(items):  # a run of items in one directory
        j = i
        while j < len(items) and _dir_id(items[j]) == _dir_id(items[i]):
            j += 1
        block = items[i:j]
        out += [t for t in block if _module_id(t) not in _ray_modules]
        out += [t for t in block if _module_id(t) in _ray_modules]
        i = j
    items[:] = out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: Optional[pytest.Item]) -> Any:
    """After the item's fixtures are torn down: stop the shared Ray before a module that does not use it."""
    yield
    if nextitem is None or (_module_id(nextitem) != _module_id(item) and _module_id(nextitem) not in _ray_modules):
        _stop_local_ray()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _stop_local_ray()
