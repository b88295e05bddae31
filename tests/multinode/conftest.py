"""Fixtures of the multi-node tests (issue #14): a real Ray cluster whose nodes share no disk.

    @pytest.mark.slow
    def test_something(cluster):                       # cluster: harness.MultiNodeCluster, started
        cluster.python_json("import ray, json; ray.init(); print(json.dumps(ray.cluster_resources()))")

One cluster (~40 s to start on 2 cores) serves every module of this package that keeps the default
`cluster_options`: it starts with the first test that asks for `cluster` and is torn down after the package's
last test, also when a test fails. Each module gets it with every worker node alive: a node an earlier module
killed (the node-failure tests) is started again first. Its options are SHARED_OPTIONS: every process imports
mdm from this checkout (PYTHONPATH), and the GCS declares a killed node dead after ~3 missed 1 s health checks
(Ray's default: ~5 x 3 s, plus a 10 s timeout), so the node-failure tests wait seconds, not half a minute, for
Ray to react. A module that needs another cluster overrides `cluster_options` (keyword arguments of
MultiNodeCluster) and gets its own, for that module only, e.g.

    @pytest.fixture(scope="module")
    def cluster_options():
        return {"workers": ("node_a",), "mlflow": False}

Without root (no `unshare -n` / `nsenter`) the tests are skipped, saying why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from .harness import MultiNodeCluster, namespaces_available

REPO = Path(__file__).resolve().parents[2]
SHARED_OPTIONS: dict[str, Any] = {
    "extra_env": {"PYTHONPATH": str(REPO / "src")},
    "head_env": {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "3000",
                 "RAY_health_check_failure_threshold": "3"},
}


def _started(options: dict[str, Any]) -> MultiNodeCluster:
    if not namespaces_available():
        pytest.skip("needs root with unshare/nsenter (private network and mount namespaces)")
    c = MultiNodeCluster(**options)
    try:
        c.start()
    except BaseException:
        c.close()
        raise
    return c


@pytest.fixture(scope="package")
def shared_cluster() -> Iterator[MultiNodeCluster]:
    """The package's one cluster (SHARED_OPTIONS); modules take it through `cluster`."""
    c = _started(SHARED_OPTIONS)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def cluster_options() -> Optional[dict[str, Any]]:
    """None: this module runs on the shared cluster. Override with MultiNodeCluster's keyword arguments for a
    cluster of the module's own."""
    return None


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest, cluster_options: Optional[dict[str, Any]]) -> Iterator[MultiNodeCluster]:
    if cluster_options is None:
        c = request.getfixturevalue("shared_cluster")
        for name, node in c.workers.items():  # an earlier module's node-failure test may have left one dead
            if not node.alive:
                c.start_node(name)
        yield c
        return
    c = _started(cluster_options)
    try:
        yield c
    finally:
        c.close()
