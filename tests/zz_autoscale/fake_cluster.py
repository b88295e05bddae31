"""A local autoscaling Ray cluster on one machine (Ray's fake multi-node provider), for tests and demos.

    with FakeAutoscalingCluster(head_cpus=2, worker_cpus=1, worker_gpus=1, max_workers=2) as cluster:
        ray.init(address=cluster.address)
        ...   # tasks/actors asking for GPUs make the autoscaler add "gpu_worker" nodes (logical GPUs)
        cluster.worker_nodes()   # alive non-head nodes

Why not `ray.cluster_utils.AutoscalingCluster`: in the Ray 2.60 wheel it reads
`fake_multi_node/example.yaml`, which the wheel does not ship (FileNotFoundError), and its start/shutdown
run `ray stop --force`, which kills every Ray process of the user (other engineers' runs and tests too).
This class writes the full autoscaler config itself (the monitor only validates it against the schema),
starts the head with `RAY_FAKE_CLUSTER=1 ray start --head --block` in its own session, on free loopback
ports and its own `--temp-dir` (so plain `ray.init()` elsewhere never finds it through
/tmp/ray/ray_current_cluster), and shuts down by signalling only the process tree it started (the fake
worker nodes are raylets spawned by the head's autoscaler monitor, so they are in that tree).

CLI (for trying it by hand): `python -m fake_cluster --max-workers 2` prints the address and
blocks until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

import psutil

WORKER_TYPE = "gpu_worker"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def autoscaler_config(head_resources: dict[str, float], worker_resources: dict[str, float], max_workers: int,
                      gcs_address: str, idle_timeout_minutes: float = 0.1,
                      upscaling_speed: float = 1.0) -> dict[str, Any]:
    """The cluster YAML of the fake provider (the content example.yaml would have), one worker type."""
    return {
        "cluster_name": "mdm-fake",
        "max_workers": max_workers,
        "upscaling_speed": upscaling_speed,
        "idle_timeout_minutes": idle_timeout_minutes,
        # gcs_address: the fake provider otherwise assumes <node ip>:6379 for the workers to join.
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": dict(head_resources), "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {"resources": dict(worker_resources), "node_config": {}, "min_workers": 0,
                          "max_workers": max_workers},
        },
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class FakeAutoscalingCluster:
    """Head node (no GPU) + an autoscaled worker type with logical GPUs, `min_workers` 0."""

    def __init__(self, head_cpus: float = 2, worker_cpus: float = 1, worker_gpus: float = 1, max_workers: int = 2,
                 idle_timeout_minutes: float = 0.1, temp_dir: Optional[str] = None) -> None:
        self.head_cpus = head_cpus
        self.worker_resources = {"CPU": worker_cpus, "GPU": worker_gpus}
        self.max_workers = max_workers
        self.idle_timeout_minutes = idle_timeout_minutes
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short path: Ray's unix sockets live under it and sun_path is limited to 107 bytes.
        self._own_temp_dir = temp_dir is None
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="mdmfc_", dir="/tmp")
        self._proc: Optional[subprocess.Popen] = None
        self._log = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = 120.0) -> str:
        """Start the head (and its autoscaler monitor); return the address for `ray.init(address=...)`."""
        cfg = autoscaler_config({"CPU": self.head_cpus}, self.worker_resources, self.max_workers, self.address,
                                self.idle_timeout_minutes)
        cfg_path = os.path.join(self.temp_dir, "autoscaler.yaml")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)  # JSON is YAML; the monitor reads it with yaml.safe_load
        cmd = ["ray", "start", "--head", "--block", f"--port={self.port}", "--node-ip-address=127.0.0.1",
               f"--num-cpus={self.head_cpus}", "--num-gpus=0", f"--temp-dir={self.temp_dir}",
               f"--autoscaling-config={cfg_path}", "--include-dashboard=false", "--disable-usage-stats",
               f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}",
               f"--dashboard-agent-grpc-port={_free_port()}", f"--metrics-export-port={_free_port()}",
               f"--runtime-env-agent-port={_free_port()}", f"--node-manager-port={_free_port()}",
               f"--object-manager-port={_free_port()}"]
        env = dict(os.environ, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
                   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
        env.pop("RAY_ADDRESS", None)
        self._log = open(os.path.join(self.temp_dir, "ray_start.log"), "w")
        self._proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self._wait_ready(timeout_s)
        return self.address

    def _wait_ready(self, timeout_s: float) -> None:
        # `ray start` prints this line once the head's GCS and raylet are up (before --block waits).
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = open(self._log.name).read()
            if "Ray runtime started" in text:
                return
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"ray start for the fake cluster exited with {self._proc.returncode}; "
                                   f"log {self._log.name}:\n{text[-3000:]}")
            time.sleep(0.5)
        self.shutdown()
        raise TimeoutError(f"fake cluster at {self.address} not ready after {timeout_s:.0f}s; log: {self._log.name}")

    def shutdown(self, timeout_s: float = 20.0) -> None:
        """Stop the processes this cluster started (and nothing else)."""
        if self._proc is None:
            return
        try:
            root = psutil.Process(self._proc.pid)
            tree = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        # Fake worker raylets first (their parent, the monitor, would otherwise orphan them), then the head.
        for p in reversed(tree):
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(tree, timeout=timeout_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._proc = None
        if self._log is not None:
            self._log.close()
        if self._own_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "FakeAutoscalingCluster":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ inspection (driver connected)
    @staticmethod
    def worker_nodes() -> list[dict]:
        """Alive non-head nodes of the connected cluster (`ray.nodes()` entries with a GPU resource)."""
        import ray

        return [n for n in ray.nodes() if n["Alive"] and "GPU" in n.get("Resources", {})]


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m fake_cluster", description=__doc__.split("\n")[0])
    p.add_argument("--head-cpus", type=float, default=2)
    p.add_argument("--max-workers", type=int, default=2)
    args = p.parse_args(argv)
    cluster = FakeAutoscalingCluster(head_cpus=args.head_cpus, max_workers=args.max_workers)
    cluster.start()
    print(f"fake autoscaling cluster at {cluster.address} (temp dir {cluster.temp_dir}); Ctrl-C stops it")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
