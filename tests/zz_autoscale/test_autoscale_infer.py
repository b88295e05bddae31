"""Autoscaling batch inference on Ray's fake multi-node provider (runs last: `zz_` sorts after the rest).

The job runs in a child process (autoscale_job.py) against its own cluster on its own ports and temp dir;
it never runs `ray stop`, so Ray instances of other tests or people on the machine are untouched. It
checks what the issue asks: no worker nodes at the start, the autoscaler adds GPU nodes, more than one
actor (on those nodes) serves the job, every row comes back exactly once, and the idle nodes are removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).resolve().parent / "autoscale_job.py"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_actor_pool_grows_with_autoscaled_gpu_nodes(tmp_path):
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(JOB), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=540)
    assert proc.returncode == 0, f"autoscale job failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["worker_nodes_before"] == 0
    assert len(rep["worker_nodes_seen"]) >= 2, rep               # the autoscaler added GPU nodes
    assert rep["indices"] == list(range(32))                     # complete, each index once, ordered
    actor_nodes = {a.rsplit(":", 1)[0] for a in rep["actors"]}
    assert len(rep["actors"]) >= 2, rep["actors"]                # the pool really ran more than one actor
    assert actor_nodes <= set(rep["worker_nodes_seen"]) and not actor_nodes & set(rep["head_node_ids"])
    assert rep["worker_nodes_after"] == 0, rep                   # and the idle nodes were removed
