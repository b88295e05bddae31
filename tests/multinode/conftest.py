"""Fixtures of the multi-node tests (issue #14): a real Ray cluster whose nodes share no disk.

    @pytest.mark.slow
    def test_something(cluster):                       # cluster: harness.MultiNodeCluster, started
        cluster.python_json("import ray, json; ray.init(); print(json.dumps(ray.cluster_resources()))")

`cluster` is module-scoped: one cluster (~40 s to start on 2 cores) serves every test of a module and is
torn down after it, also when a test fails. A module changes the cluster by overriding `cluster_options`
(keyword arguments of MultiNodeCluster), e.g.

    @pytest.fixture(scope="module")
    def cluster_options():
        return {"workers": ("node_a",), "mlflow": False}

Without root (no `unshare -n` / `nsenter`) the tests are skipped, saying why.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from .harness import MultiNodeCluster, namespaces_available


@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    """Keyword arguments of MultiNodeCluster for this module's `cluster`; override in a test module."""
    return {}


@pytest.fixture(scope="module")
def cluster(cluster_options: dict[str, Any]) -> Iterator[MultiNodeCluster]:
    if not namespaces_available():
        pytest.skip("needs root with unshare/nsenter (private network and mount namespaces)")
    c = MultiNodeCluster(**cluster_options)
    try:
        c.start()
        yield c
    finally:
        c.close()
