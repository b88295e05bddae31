"""The project's own jobs on a real 3-node cluster whose nodes share no disk (issue #14), end to end.

    python -m pytest -q tests/multinode/test_cluster_jobs.py --durations=0     # needs root; a few minutes

One cluster (head with 0 CPUs, node_a, node_b, S3 on 127.0.0.1:9000, the MLflow tracking server on
127.0.0.1:5000; see harness.py) serves the module. Everything that crosses nodes goes through the storage root
`s3://mdm/...` (`ray.storage_path`) or the tracking server; the job's working directory and the drivers' files
stay on the head, hidden from the workers. Every process imports mdm from this checkout (PYTHONPATH), so the
workers run the code under test, not whatever copy is installed. Tests that kill a node restart it after.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from .harness import BIN, MultiNodeCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
ROOT = "s3://mdm/cluster"
# A few steps of the tiny preset: enough to checkpoint, export, sample and score.
STEPS = 8
TINY = [f"train.max_steps={STEPS}", "train.save_steps=3", "train.logging_steps=1", "train.warmup_steps=1",
        "eval.limit=6", "eval.batch_size=3", "sampler.steps=8", "sampler.gen_length=16", "sampler.block_length=16",
        "ray.num_workers=2", "ray.cpus_per_worker=0.5", "eval.cpus_per_actor=0.5"]


@pytest.fixture(scope="module")
def cluster_options() -> dict[str, Any]:
    return {"extra_env": {"PYTHONPATH": str(REPO / "src")}}


def sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def job_dir(tmp_path: Path) -> Path:
    """The job's working directory (under /tmp: on the head only): the experiment scripts and their configs."""
    d = tmp_path / "job"
    shutil.copytree(REPO / "experiments", d / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    return d


def summary_of(logs: str) -> dict[str, Any]:
    text = logs[logs.rindex("== gsm8k summary =="):].split("\n", 1)[1]
    return json.JSONDecoder().raw_decode(text.lstrip())[0]


TRAIN_WORKERS_AND_RUN = """
import json, sys
import mlflow, ray
from mlflow.tracking import MlflowClient
from ray.util.state import list_actors
from mdm.platform import storage

ray.init(logging_level="ERROR")
run_id, model, preds = sys.argv[1:4]
nodes = sorted({a.node_id for a in list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True,
                                               limit=1000)})
client = MlflowClient()
run = client.get_run(run_id)
def files(path=None):
    out = []
    for e in client.list_artifacts(run_id, path):
        out += files(e.path) if e.is_dir else [e.path]
    return out
print(json.dumps({"train_nodes": nodes, "metrics": sorted(run.data.metrics), "status": run.info.status,
                  "artifacts": files(), "model_in_s3": storage.exists(storage.join(model, "model.safetensors")),
                  "preds_in_s3": storage.exists(preds),
                  "n_preds": sum(1 for line in storage.iter_lines(preds) if line.strip())}))
"""


def gsm8k_job(cluster: MultiNodeCluster, tmp_path: Path, *extra: str, timeout: float = 420) -> dict[str, Any]:
    """`ray job submit -- python experiments/gsm8k.py --preset tiny ...` on the S3 storage root; its summary."""
    job = cluster.submit_job(["python", "experiments/gsm8k.py", "--preset", "tiny", "--limit", "64",
                              *sets(f"ray.storage_path={ROOT}", *TINY, *extra)], working_dir=job_dir(tmp_path),
                             timeout=timeout)
    assert job.status == "SUCCEEDED", f"{job.status}\n{job.logs[-8000:]}\n{cluster.diagnostics()}"
    return summary_of(job.logs)


@pytest.fixture(scope="module")
def trained(cluster: MultiNodeCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The main job, run once: its summary (run name, model and predictions URIs, MLflow run id)."""
    return gsm8k_job(cluster, tmp_path_factory.mktemp("main"))


def test_gsm8k_job_on_the_cluster_then_infer_from_a_fresh_driver(cluster: MultiNodeCluster,
                                                                  trained: dict[str, Any]) -> None:
    s = trained
    assert s["model"] == f"{ROOT}/outputs/{s['run_name']}/final", s
    assert s["predictions"] == f"{ROOT}/outputs/{s['run_name']}/predictions_test.jsonl", s
    assert s["steps"] == STEPS and s["n_eval"] == 6 and s["mlflow_tracking_uri"] == cluster.mlflow_uri, s

    cluster.nodes()
    out = cluster.python_json(TRAIN_WORKERS_AND_RUN, s["mlflow_run_id"], s["model"], s["predictions"])
    workers = {cluster.node_ids["node_a"], cluster.node_ids["node_b"]}
    assert out["train_nodes"] and set(out["train_nodes"]) <= workers, (out, cluster.node_ids)
    assert out["status"] == "FINISHED"
    assert {"train/loss", "train/lr", "infer/gsm8k/test/llada/accuracy"} <= set(out["metrics"]), out["metrics"]
    assert "final_model/config.json" in out["artifacts"], out["artifacts"]
    assert "infer/gsm8k/test/llada/predictions_test.jsonl" in out["artifacts"], out["artifacts"]
    assert out["model_in_s3"] and out["preds_in_s3"] and out["n_preds"] == 6, out

    # A fresh driver on the head, knowing only the MLflow run: the actors fetch the model on their own nodes.
    fresh = f"{ROOT}/fresh/preds.jsonl"
    cluster.run([str(BIN / "mdm"), "infer", "--task", "gsm8k", "--model", f"mlflow:{s['mlflow_run_id']}",
                 "--out", fresh, "--limit", "4", "--config", str(REPO / "experiments/configs/tiny.yaml"),
                 *sets("sampler.steps=8", "sampler.gen_length=16", "sampler.block_length=16", "eval.batch_size=2",
                       "eval.cpus_per_actor=0.5", "eval.progress=false")],
                timeout=240, env={"RAY_ADDRESS": cluster.gcs_address})
    check = cluster.python_json("import json, sys\nfrom mdm.platform import storage\n"
                                "print(json.dumps([json.loads(l)['meta']['index'] for l in storage.iter_lines("
                                "sys.argv[1]) if l.strip()]))", fresh)
    assert check == [0, 1, 2, 3]
