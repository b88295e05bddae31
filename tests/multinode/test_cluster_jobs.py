"""The project's own jobs on a real 3-node cluster whose nodes share no disk (issue #14), end to end.

    python -m pytest -q tests/multinode/test_cluster_jobs.py --durations=0     # needs root; a few minutes

The package's one cluster (head with 0 CPUs, node_a, node_b, S3 on 127.0.0.1:9000, the MLflow tracking server
on 127.0.0.1:5000; see harness.py and conftest.py, which also sets the fast node-death detection the failure
tests rely on) serves the module. Everything that crosses nodes goes through the storage root
`s3://mdm/...` (`ray.storage_path`) or the tracking server; the job's working directory and the drivers' files
stay on the head, hidden from the workers. Every process imports mdm from this checkout (PYTHONPATH), so the
workers run the code under test, not whatever copy is installed. The main job is submitted as the README says,
from a checkout's root with `--working-dir . --runtime-env cluster/runtime_env.yaml` (its `py_modules` ship
src/mdm). The node-failure tests come last; one that kills a node restarts it when a later test needs both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from .harness import BIN, MultiNodeCluster, last_json

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
ROOT = "s3://mdm/cluster"
# A few steps of the tiny preset: enough to checkpoint, export, sample and score.
STEPS = 8
TINY = [f"train.max_steps={STEPS}", "train.save_steps=3", "train.logging_steps=1", "train.warmup_steps=1",
        "eval.limit=6", "eval.batch_size=3", "sampler.steps=8", "sampler.gen_length=16", "sampler.block_length=16",
        "ray.num_workers=2", "ray.cpus_per_worker=0.5", "eval.cpus_per_actor=0.5",
        "train.eval_strategy=steps", "train.eval_steps=4", "train.train_ratio=0.5"]


def sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def job_dir(tmp_path: Path) -> Path:
    """The job's working directory (under /tmp: on the head only), laid out as the checkout the README submits
    from: the experiment scripts and configs, `cluster/runtime_env.yaml`, and `src/mdm` (its `py_modules`)."""
    d = tmp_path / "job"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "experiments", d / "experiments", ignore=skip)
    shutil.copytree(REPO / "src" / "mdm", d / "src" / "mdm", ignore=skip)
    (d / "cluster").mkdir()
    shutil.copy(REPO / "cluster" / "runtime_env.yaml", d / "cluster" / "runtime_env.yaml")
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
exp = client.get_experiment_by_name("gsm8k")
named = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{run.info.run_name}'")
pred_art = client.download_artifacts(run_id, "infer/gsm8k/test/llada/predictions_test.jsonl")
rows = [json.loads(line) for line in open(pred_art) if line.strip()]
print(json.dumps({"train_nodes": nodes, "metrics": run.data.metrics, "status": run.info.status,
                  "run_name": run.info.run_name, "runs_named": len(named),
                  "artifact_rows": len(rows), "row_keys": sorted(rows[0]) if rows else [],
                  "artifacts": files(), "model_in_s3": storage.exists(storage.join(model, "model.safetensors")),
                  "preds_in_s3": storage.exists(preds),
                  "n_preds": sum(1 for line in storage.iter_lines(preds) if line.strip())}))
"""


def gsm8k_job(cluster: MultiNodeCluster, tmp_path: Path, *extra: str, timeout: float = 420) -> dict[str, Any]:
    """`ray job submit -- python experiments/gsm8k.py --preset tiny ...` on the S3 storage root; its summary."""
    # As the README submits it: from the checkout's root, `--working-dir . --runtime-env cluster/runtime_env.yaml`.
    job = cluster.submit_job(["python", "experiments/gsm8k.py", "--preset", "tiny", "--limit", "64",
                              *sets(f"ray.storage_path={ROOT}", *TINY, *extra)], working_dir=".",
                             args=["--runtime-env", "cluster/runtime_env.yaml"], cwd=job_dir(tmp_path),
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
    assert out["run_name"] == s["run_name"] and out["runs_named"] == 1, out  # one run, in experiment "gsm8k"
    metrics = out["metrics"]
    assert {"train/loss", "train/lr", "infer/gsm8k/test/llada/accuracy"} <= set(metrics), sorted(metrics)
    assert metrics.get("eval/loss", 0) > 0, sorted(metrics)
    assert 0.0 <= s["accuracy"] <= 1.0 and abs(metrics["infer/gsm8k/test/llada/accuracy"] - s["accuracy"]) < 1e-9
    assert out["artifact_rows"] == 6, out
    assert {"task", "prompt", "gold_raw", "prediction", "meta", "id"} <= set(out["row_keys"]), out
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


SWEEP_RUNS = """
import json, sys
import pyarrow.fs as pafs
from mlflow.tracking import MlflowClient
from mdm.platform import storage

name, root = sys.argv[1:3]
client = MlflowClient()
exp = client.get_experiment_by_name("sweep")
runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`mdm.sweep` = '{name}'")
parent = [r for r in runs if r.data.tags.get("mdm.role") == "parent"]
children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == (parent[0].info.run_id if parent else None)]
fs, path = storage.resolve(root)
ckpts = sorted(i.path.rsplit("/", 3)[-3] for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
               if i.path.endswith("/worker_0.pt"))
print(json.dumps({"parents": len(parent), "parent_status": parent[0].info.status if parent else None,
                  "children": sorted((r.data.tags.get("mdm.run"), r.info.status, "train/loss" in r.data.metrics)
                                     for r in children), "ckpt_runs": ckpts,
                  "best": storage.exists(f"{root}/outputs/{name}/best_config.yaml")}))
"""


def test_tune_sweep_runs_its_trials_on_the_workers(cluster: MultiNodeCluster, trained: dict[str, Any],
                                                   tmp_path: Path) -> None:
    """`mdm tune` from a driver on the head: 2 trials on the worker nodes, checkpoints in S3, the parent and
    both child runs on the tracking server. The data and tokenizer are the main job's, in S3."""
    data = f"{ROOT}/data/gsm8k/tiny/first64"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("train.lr: {grid: [1.0e-3, 3.0e-3]}\n")
    root = f"{ROOT}/sweeps"
    out = cluster.run([str(BIN / "mdm"), "tune", "--config", str(REPO / "experiments/configs/base.yaml"),
                       "--config", str(REPO / "experiments/configs/tiny.yaml"), "--sweep", str(sweep),
                       *sets(f"ray.storage_path={root}", f"train.train_data_path={data}/train-len384.jsonl",
                             f"data.tokenizer={data}/tokenizer", "train.max_steps=4", "train.save_steps=2",
                             "train.logging_steps=2", "train.warmup_steps=1", "ray.cpus_per_worker=0.5",
                             "tune.metric=train/loss", "tune.max_concurrent_trials=2", "tune.name=cluster-sweep",
                             "tracking.experiment_name=sweep")],
                      timeout=400, env={"RAY_ADDRESS": cluster.gcs_address}, cwd=tmp_path)
    res = cluster.python_json(SWEEP_RUNS, "cluster-sweep", root)
    assert res["parents"] == 1 and res["parent_status"] == "FINISHED", (res, out.stdout[-3000:])
    assert len(res["children"]) == 2 and all(st == "FINISHED" and loss for _, st, loss in res["children"]), res
    trial_runs = sorted(run for run, _, _ in res["children"])
    assert sorted(set(res["ckpt_runs"])) == trial_runs, res  # each trial's Train checkpoints are in S3
    assert res["best"], res


LOSSES = """
import json, sys
from mlflow.tracking import MlflowClient
from mdm.platform.tracking.attempts import RESUMED_FROM, current_run

client = MlflowClient()
out = {}
for run_id in sys.argv[1:]:
    run_id = current_run(client, run_id)
    out[run_id] = {"loss": {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")},
                   "resumed_from": client.get_run(run_id).data.tags.get(RESUMED_FROM)}
print(json.dumps(list(out.values())))
"""


TRAIN_ONLY = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
from experiments import gsm8k
from mdm.platform.tracking.tracker import Tracker
from mdm.platform.train.driver import train_driver

# The main job's config, data and run (same preset, same --set), trained without the evaluation after it.
args = gsm8k.parse_args(sys.argv[1:])
cfg = gsm8k.build_config(args)
cfg = gsm8k.build_config(args, gsm8k.prepare_data(cfg, args))
result = train_driver(cfg)
print(json.dumps({{"steps": result.metrics["step"], "mlflow_run_id": Tracker.open(cfg.tracking).find_run(cfg.run_name)}}))
"""


def train_nodes(cluster: MultiNodeCluster) -> list[str]:
    """The worker nodes where a Ray Train worker process runs now (found by its process title)."""
    import psutil

    from .procfs import pids_in_ns

    found = []
    for name, node in cluster.workers.items():
        for pid in pids_in_ns("mnt", node.mnt_ns) if node.alive else []:
            try:
                if "RayTrainWorker" in " ".join(psutil.Process(pid).cmdline()):
                    found.append(name)
                    break
            except psutil.Error:
                continue
    return found


def test_training_survives_the_loss_of_a_worker_node_then_of_its_driver(cluster: MultiNodeCluster,
                                                                        trained: dict[str, Any], tmp_path: Path) -> None:
    """Kill the node of the Train workers after the first checkpoint: Ray Train restarts the group on the other
    node from the checkpoint in S3. Then SIGKILL the driver (its whole process group, as when `ray job submit`'s
    entrypoint dies) once the next checkpoint is in: submitting the same command again takes over the dead
    driver's lease, resumes from the latest checkpoint Ray Train recorded (step 6, or 3 when the kill beat the
    record) and finishes. Every step's loss equals the uninterrupted run's (the main job, same config and seed)
    within 1e-4, in one MLflow run (issue #25, item 3)."""
    import re

    cmd = [sys.executable, str(cluster.driver_script(TRAIN_ONLY)), "--preset", "tiny", "--limit", "64",
           *sets(f"ray.storage_path={ROOT}", *TINY, "run_name=gsm8k-nodekill", "ray.max_failures=2")]
    env = {"RAY_ADDRESS": cluster.gcs_address}
    driver = cluster.popen(cmd, "nodekill", env=env, cwd=tmp_path)
    step = _progress(cluster, driver, "nodekill", until=lambda s: s > 3 and bool(train_nodes(cluster)))
    assert step < STEPS, "training finished before the node could be killed"
    victims = train_nodes(cluster)
    cluster.kill_node(victims[0])
    mark = len(cluster.log_tail("nodekill", 10**8))  # the restarted group's progress is what follows
    # Step 6 shown: its checkpoint is reported (Ray Train may not have recorded it yet: then the resume is from 3).
    step = _progress(cluster, driver, "nodekill", until=lambda s: s >= 6, after=mark)
    assert step < STEPS, "training finished before the driver could be killed"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    cluster.start_node(victims[0])

    rerun = cluster.popen(cmd, "nodekill_rerun", env=env, cwd=tmp_path)  # the same command, submitted again
    assert rerun.wait(timeout=400) == 0, cluster.log_tail("nodekill_rerun", 8000)
    log = cluster.log_tail("nodekill_rerun", 10**6)
    resumed = re.search(r"; resuming from step (\d+) \(", log)
    assert "taking over the lease of run gsm8k-nodekill" in log and resumed, log[-4000:]
    s = last_json(log)
    assert s["steps"] == STEPS, s

    ref, killed = cluster.python_json(LOSSES, trained["mlflow_run_id"], s["mlflow_run_id"])
    print(f"killed {victims[0]} at step 4+, then the driver at step {step}; resumed from {resumed.group(1)}; "
          f"losses {killed['loss']} vs uninterrupted {ref['loss']}")
    assert int(killed["resumed_from"] or 0) == int(resumed.group(1)) in (3, 6), killed  # the last resume
    assert sorted(map(int, killed["loss"])) == list(range(1, STEPS + 1)), killed
    for k, v in ref["loss"].items():
        assert killed["loss"][k] == pytest.approx(v, abs=1e-4), (k, killed["loss"], ref["loss"])


def _progress(cluster: MultiNodeCluster, driver, log: str, until, after: int = 0) -> int:
    """Wait until `until(step)` for the training step the driver's progress bar shows (after byte `after` of its
    log); that step."""
    import re
    import time

    deadline = time.time() + 240
    while True:
        assert driver.poll() is None and time.time() < deadline, cluster.log_tail(log, 8000)
        steps = re.findall(rf"(\d+)\.00/{STEPS}\.0", cluster.log_tail(log, 10**8)[after:])  # tqdm: "4.00/12.0"
        step = int(steps[-1]) if steps else 0
        if until(step):
            return step
        time.sleep(0.3)


INFER_WITH_PROGRESS = """
import json, sys
from mdm.platform.config import load_config
from mdm.platform.infer.generation.job import run_inference

model, out, progress, tiny = sys.argv[1:5]
# 1.5 CPUs an actor on 2-CPU nodes: one sampler actor on each worker node.
cfg = load_config([tiny], ["eval.min_actors=2", "eval.max_actors=2", "eval.initial_actors=2", "eval.batch_size=1",
                           "eval.cpus_per_actor=1.5", "eval.wait_for_actors_s=120", "eval.progress=false",
                           "eval.log_mlflow=false", "sampler.steps=32", "sampler.gen_length=32",
                           "sampler.block_length=32"])

def note(done, total):
    with open(progress, "a") as f:
        f.write(f"{done}\\n")

m = run_inference(cfg, model=model, task="gsm8k", out=out, split="test", limit=int(sys.argv[5]),
                  progress_callback=note)
rows = [json.loads(line) for line in open(out)]
print(json.dumps({"indices": [r["meta"]["index"] for r in rows], "actors": sorted({r["meta"]["actor"] for r in rows}),
                  "rows": m["rows"]}))
"""


def test_batch_inference_survives_the_loss_of_a_worker_node(cluster: MultiNodeCluster, trained: dict[str, Any],
                                                             tmp_path: Path) -> None:
    """Sampler actors on both worker nodes; one node dies mid-job; every index comes back exactly once."""
    import time

    cluster.nodes()
    ids = dict(cluster.node_ids)
    n, progress, out = 20, tmp_path / "progress.txt", tmp_path / "preds.jsonl"
    driver = cluster.popen([sys.executable, str(cluster.driver_script(INFER_WITH_PROGRESS)), trained["model"],
                            str(out), str(progress), str(REPO / "experiments/configs/tiny.yaml"), str(n)],
                           "infer_kill", env={"RAY_ADDRESS": cluster.gcs_address})
    deadline = time.time() + 240
    while not progress.exists() or int(progress.read_text().split()[-1]) < 4:
        assert driver.poll() is None and time.time() < deadline, cluster.log_tail("infer_kill", 8000)
        time.sleep(0.2)
    done_at_kill = int(progress.read_text().split()[-1])
    cluster.kill_node("node_a")
    assert driver.wait(timeout=300) == 0, cluster.log_tail("infer_kill", 8000)
    res = last_json(cluster.log_tail("infer_kill", 20000))
    served = {a.split(":")[0] for a in res["actors"]}  # "<node id>:<pid>" of the actor that sampled each row
    print(f"killed node_a after {done_at_kill} of {n} rows; actors {res['actors']}")
    assert done_at_kill < n, "inference finished before the node could be killed"
    assert served == {ids["node_a"], ids["node_b"]}, (res["actors"], ids)  # both nodes sampled rows
    assert sorted(res["indices"]) == list(range(n)) and res["rows"] == n
