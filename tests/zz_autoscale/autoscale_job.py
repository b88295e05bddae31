"""The autoscaling batch-inference job, run by test_autoscale_infer.py in its own process.

    python tests/zz_autoscale/autoscale_job.py WORKDIR      # writes WORKDIR/report.json

Starts a fake autoscaling cluster (head without GPUs; worker type with 1 logical GPU, min_workers 0,
max_workers 2), runs `run_inference` with GPU actors (1..2, initial 2, waiting for both) on 32 arithmetic
problems, records the worker nodes seen before, during and after the job, and shuts down only the
processes it started.
Its own process because connecting to a second cluster needs a fresh Ray driver.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402

from mdm.platform.infer.generation.job import run_inference  # noqa: E402
from mdm.platform.config import load_config  # noqa: E402
from fake_cluster import FakeAutoscalingCluster  # noqa: E402

HERE = Path(__file__).resolve().parent


def _make_tiny_model(out_dir: str) -> str:
    spec = importlib.util.spec_from_file_location("_bi_test", HERE.parent / "platform" / "infer" / "test_batch_infer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_tiny_model(out_dir)


def main(workdir: str) -> int:
    work = Path(workdir)
    model_dir = _make_tiny_model(str(work / "model"))
    report: dict = {}
    t0 = time.monotonic()
    with FakeAutoscalingCluster(head_cpus=2, worker_cpus=1, worker_gpus=1, max_workers=2,
                                idle_timeout_minutes=0.1) as cluster:
        report["cluster_start_s"] = time.monotonic() - t0
        ray.init(address=cluster.address, log_to_driver=False)
        report["worker_nodes_before"] = len(cluster.worker_nodes())
        report["head_node_ids"] = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "GPU" not in n["Resources"]]
        seen: set[str] = set()

        def watch(done: int, total: int) -> None:
            seen.update(n["NodeID"] for n in cluster.worker_nodes())

        cfg = load_config([], ["sampler.gen_length=16", "sampler.block_length=16", "sampler.steps=8",
                               "eval.batch_size=2", "eval.min_actors=1", "eval.max_actors=2", "eval.initial_actors=2",
                               "eval.wait_for_actors_s=300",
                               "eval.gpus_per_actor=1", "eval.cpus_per_actor=0.5", "eval.log_mlflow=false",
                               "eval.progress=false"])
        metrics = run_inference(cfg, model=model_dir, task="arithmetic", out=str(work / "preds.jsonl"), limit=32,
                                progress_callback=watch)
        report["job_s"] = metrics["job_s"]
        report["worker_nodes_seen"] = sorted(seen)
        records = [json.loads(line) for line in (work / "preds.jsonl").read_text().splitlines()]
        report["indices"] = [r["meta"]["index"] for r in records]
        report["actors"] = sorted({r["meta"]["actor"] for r in records})
        # Scale-down: idle worker nodes go after idle_timeout_minutes (6 s) plus the monitor's period.
        t_end = time.monotonic()
        while cluster.worker_nodes() and time.monotonic() - t_end < 90:
            time.sleep(1)
        report["worker_nodes_after"] = len(cluster.worker_nodes())
        report["scale_down_s"] = time.monotonic() - t_end
        ray.shutdown()
    report["total_s"] = time.monotonic() - t0
    (work / "report.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
