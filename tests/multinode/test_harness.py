"""Proof that the multi-node harness is a real cluster whose nodes share no disk (issue #14).

    python -m pytest -q tests/multinode/test_harness.py        # ~2 minutes on 2 cores, needs root

The package's one cluster (head + node_a + node_b, S3, MLflow; see harness.py and conftest.py) serves the
whole module, with both worker nodes alive at its start. The node-failure
test kills a worker node, so it runs last (pytest keeps the file's order).
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest

from .harness import MultiNodeCluster, last_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PLACEMENT_AND_STORAGE = """
import json, os, ray
import pyarrow.fs as pafs

ray.init(logging_level="ERROR")
shared = os.environ["MN_SHARED_DIR"]
marker = os.path.abspath("driver_marker.txt")  # the driver's working dir on the head
with open(marker, "w") as f:
    f.write("head only")

@ray.remote(num_cpus=1)
def where(paths):
    return {"node_id": ray.get_runtime_context().get_node_id(), "name": os.environ["MN_NODE_NAME"],
            "sees": {p: os.path.exists(p) for p in paths}}

@ray.remote(num_cpus=1)
def write(uri, shared_path, local_path, text):
    fs, path = pafs.FileSystem.from_uri(uri)  # endpoint and credentials from AWS_* in the environment
    with fs.open_output_stream(path) as f:
        f.write(text.encode())
    for p in (shared_path, local_path):
        with open(p, "w") as f:
            f.write(text)
    return os.environ["MN_NODE_NAME"]

@ray.remote(num_cpus=1)
def read(uri, shared_path, local_path):
    fs, path = pafs.FileSystem.from_uri(uri)
    with fs.open_input_stream(path) as f:
        s3_text = f.read().decode()
    with open(shared_path) as f:
        return os.environ["MN_NODE_NAME"], s3_text, f.read(), os.path.exists(local_path)

paths = [marker, os.environ["HEAD_TEMP_DIR"], shared]
pinned = {n: ray.get(where.options(resources={n: 0.01}).remote(paths)) for n in ("node_a", "node_b")}
unpinned = ray.get([where.remote(paths) for _ in range(4)])
uri, shared_path = "s3://mdm/handoff/from_a.txt", os.path.join(shared, "from_a.txt")
local_path = os.environ["LOCAL_PATH"]  # under /tmp: node_a's own tmpfs
args = (uri, shared_path, local_path)
writer = ray.get(write.options(resources={"node_a": 0.01}).remote(*args, "written on node_a"))
reader = ray.get(read.options(resources={"node_b": 0.01}).remote(*args))
print(json.dumps({"driver_node": ray.get_runtime_context().get_node_id(), "pinned": pinned, "unpinned": unpinned,
                  "writer": writer, "reader": reader, "marker": marker, "local_path": local_path}))
"""


def test_tasks_run_on_workers_that_share_only_s3_and_the_shared_mount(cluster: MultiNodeCluster) -> None:
    env = {"HEAD_TEMP_DIR": cluster.head.temp_dir, "LOCAL_PATH": str(cluster.root / "local_from_a.txt")}
    out = cluster.python_json(PLACEMENT_AND_STORAGE, env=env)
    head_id, pinned = out["driver_node"], out["pinned"]
    assert {pinned[n]["name"] for n in pinned} == {"node_a", "node_b"}
    ids = {pinned["node_a"]["node_id"], pinned["node_b"]["node_id"]}
    assert len(ids) == 2 and head_id not in ids
    # The head has no CPUs: unpinned tasks go to worker nodes too.
    assert {t["node_id"] for t in out["unpinned"]} <= ids
    for t in [*pinned.values(), *out["unpinned"]]:
        sees = t["sees"]
        assert not sees[out["marker"]], "the driver's working dir on the head is visible on a worker node"
        assert not sees[cluster.head.temp_dir], "the head's Ray temp dir is visible on a worker node"
        assert sees[str(cluster.shared_dir)], "the shared mount is missing on a worker node"
    assert Path(out["marker"]).read_text() == "head only"  # it was written: just not on the workers
    # node_a -> node_b through S3 and through the shared mount; not through node_a's own /tmp.
    assert out["writer"] == "node_a"
    assert out["reader"] == ["node_b", "written on node_a", "written on node_a", False]
    assert not Path(out["local_path"]).exists()  # nor is node_a's /tmp the head's
    assert (cluster.shared_dir / "from_a.txt").read_text() == "written on node_a"
    # A worker's private temp dir exists only in its own mount namespace.
    assert not Path(cluster.workers["node_a"].temp_dir).exists()
    assert cluster.node_path("node_a", cluster.workers["node_a"].temp_dir).is_dir()


MLFLOW_FROM_A_WORKER = """
import json, os, ray

ray.init(logging_level="ERROR")

@ray.remote(num_cpus=1, resources={"node_b": 0.01})
def log_run():
    import mlflow  # MLFLOW_TRACKING_URI (http://127.0.0.1:5000, the head's server) is set on every node

    mlflow.set_experiment("multinode")
    with mlflow.start_run() as run:
        mlflow.log_param("node", os.environ["MN_NODE_NAME"])
        for step, loss in enumerate([2.0, 1.0, 0.5]):
            mlflow.log_metric("loss", loss, step=step)
        with open("/tmp/note.txt", "w") as f:
            f.write("from node_b")
        mlflow.log_artifact("/tmp/note.txt")  # uploaded through the server, which stores it in S3
    return run.info.run_id

run_id = ray.get(log_run.remote())
import mlflow
import pyarrow.fs as pafs
from mlflow.tracking import MlflowClient

run = MlflowClient().get_run(run_id)
note = open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="note.txt")).read()
fs, root = pafs.FileSystem.from_uri("s3://mdm/mlartifacts")
in_s3 = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.path.endswith("note.txt")]
print(json.dumps({"params": run.data.params, "metrics": run.data.metrics, "status": run.info.status,
                  "artifact_uri": run.info.artifact_uri, "note": note, "in_s3": in_s3}))
"""


def test_mlflow_server_takes_a_run_from_a_worker_node(cluster: MultiNodeCluster) -> None:
    out = cluster.python_json(MLFLOW_FROM_A_WORKER, timeout=180)
    assert out["params"] == {"node": "node_b"}
    assert out["metrics"] == {"loss": 0.5} and out["status"] == "FINISHED"
    assert out["artifact_uri"].startswith("mlflow-artifacts:"), out["artifact_uri"]  # proxied, no shared disk
    assert out["note"] == "from node_b"
    assert len(out["in_s3"]) == 1, out


JOB_SCRIPT = """
import os, ray

ray.init()
data = open("data.txt").read()

@ray.remote(num_cpus=1, resources={"worker_node": 0.01})
def read_on_worker():
    # Ray ships the working dir to the worker node (no shared disk); cwd is the node's own copy.
    return os.environ["MN_NODE_NAME"], open("data.txt").read()

print("JOB_OUTPUT", data, *ray.get(read_on_worker.remote()))
"""


def test_ray_job_submit_with_working_dir(cluster: MultiNodeCluster, tmp_path: Path) -> None:
    job_dir = tmp_path / "job"  # under /tmp: hidden from the worker nodes
    job_dir.mkdir()
    (job_dir / "main.py").write_text(JOB_SCRIPT)
    (job_dir / "data.txt").write_text("payload-42")
    job = cluster.submit_job(["python", "main.py"], working_dir=job_dir, timeout=150)
    assert job.status == "SUCCEEDED", f"{job.status}\n{job.logs}\n{cluster.diagnostics()}"
    assert re.search(r"JOB_OUTPUT payload-42 node_[ab] payload-42", job.logs), job.logs


def test_nothing_listens_outside_the_private_namespace(cluster: MultiNodeCluster) -> None:
    inside = cluster.listeners()
    assert {6379, 8265, 9000, 5000} <= {port for _, port in inside}
    assert all(addr.is_loopback for addr, _ in inside), inside
    assert cluster.escaped_processes() == []
    # Listeners that appeared in the host's namespace since the cluster started (other engineers' tests come
    # and go) must not be the harness's.
    assert cluster.host_listener_leaks() == []


SURVIVE_NODE_LOSS = """
import json, os, sys, time, ray

ray.init(logging_level="ERROR")
attempts = sys.argv[1]  # in the shared mount
# Nodes an earlier test killed (the cluster serves the whole package) stay in ray.nodes(), dead: count them.
dead_before = [n["Alive"] for n in ray.nodes()].count(False)

@ray.remote(num_cpus=1, resources={"worker_node": 1}, max_retries=3)
def work():
    name = os.environ["MN_NODE_NAME"]
    first = not os.listdir(attempts)
    open(os.path.join(attempts, name), "w").close()
    if first:
        time.sleep(600)  # the test kills this node meanwhile
    return name

result = ray.get(work.remote(), timeout=240)
deadline = time.time() + 90
while time.time() < deadline:  # the GCS marks the node dead after its health checks fail
    nodes = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
    if list(nodes.values()).count(False) > dead_before:
        break
    time.sleep(0.5)
print(json.dumps({"result": result, "nodes": nodes}))
"""


def test_a_task_survives_the_loss_of_a_worker_node(cluster: MultiNodeCluster) -> None:
    cluster.nodes()
    ids = dict(cluster.node_ids)
    attempts = cluster.shared_dir / f"attempts_{uuid.uuid4().hex[:8]}"
    attempts.mkdir()
    driver = cluster.python_background(SURVIVE_NODE_LOSS, "survive", str(attempts))
    deadline = time.time() + 120
    while not list(attempts.iterdir()):
        assert driver.poll() is None and time.time() < deadline, cluster.log_tail("survive")
        time.sleep(0.2)
    victim = next(attempts.iterdir()).name
    survivor = ({"node_a", "node_b"} - {victim}).pop()
    cluster.kill_node(victim)
    assert driver.wait(timeout=200) == 0, cluster.log_tail("survive")
    out = last_json(cluster.log_tail("survive"))
    assert out["result"] == survivor
    assert out["nodes"][ids[victim]] is False and out["nodes"][ids[survivor]] is True
    assert out["nodes"][ids["head"]] is True
    assert {n["name"] for n in cluster.nodes() if n["alive"]} == {"head", survivor}

    # The node comes back (a new Ray node id, empty private storage) and takes work again.
    cluster.start_node(victim)
    assert cluster.node_ids[victim] != ids[victim]
    back = cluster.python_json(BACK_ON, victim, str(cluster.root / "local_from_a.txt"))
    assert back == [victim, cluster.node_ids[victim], False]  # node_a's old /tmp file went with it


BACK_ON = """
import json, os, sys, ray

ray.init(logging_level="ERROR")

@ray.remote(num_cpus=1)
def where(path):
    return os.environ["MN_NODE_NAME"], ray.get_runtime_context().get_node_id(), os.path.exists(path)

print(json.dumps(ray.get(where.options(resources={sys.argv[1]: 0.01}).remote(sys.argv[2]))))
"""
