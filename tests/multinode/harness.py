"""A real multi-node Ray cluster on one machine whose nodes share no disk: the harness of issue #14.

    from tests.multinode.harness import MultiNodeCluster
    with MultiNodeCluster() as cluster:                   # or the module-scoped `cluster` fixture (conftest)
        out = cluster.python_json("import ray, json; ray.init(); print(json.dumps(ray.nodes()))")
        job = cluster.submit_job(["python", "script.py"], working_dir="some/dir")
        cluster.kill_node("node_a")

What it starts (needs root: `unshare`, `nsenter`, `mount`):
- a private network namespace (held by `nsexec.py hold`) where only `lo` exists; every process of the
  cluster runs in it, so nothing it opens is reachable from outside, and the ports are fixed (no other
  test can take them);
- a Ray head (`--num-cpus 0`, dashboard and job server on 127.0.0.1:8265, GCS on 127.0.0.1:6379), in the
  machine's mount namespace, like the test process; drivers run here (`python`, `submit_job`);
- worker nodes (default `node_a`, `node_b`; `--num-cpus 2`; resources `{"worker_node": 1, "<name>": 1}`),
  each in its own mount namespace where an empty tmpfs covers `hide` (default `/tmp`, which holds the
  head's temp dir, the driver's working dir, pytest's tmp_path) and `shared_dir` alone is bind-mounted
  back (NFS-like): a file the head writes is missing on the workers unless it goes through `shared_dir`,
  S3 or Ray itself;
- S3 (moto's ThreadedMotoServer on 127.0.0.1:9000, buckets `buckets`) and an MLflow tracking server on
  127.0.0.1:5000 (sqlite store, artifacts proxied into `s3://<first bucket>/mlartifacts`).
Every process started inside gets `env`: S3 endpoint and fake credentials,
`MLFLOW_TRACKING_URI`, `RAY_AUTH_MODE=disabled`, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1` (a second node
refuses to join without it; only ever set inside the private namespace, where there is no other address)
and `MN_NODE_NAME` (`head` or the worker's name), so a task can tell where it runs.

Teardown (`close`, also on failure) kills every process in the network namespace (only the cluster's can
be there) and removes `root`. `ray stop` is never used: it kills every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil

from .drivers import WAIT_JOB, WAIT_NODES
from .procfs import IPAddress, host_listeners, last_json, namespaces_available, ns_id, pids_in_ns, tcp_listeners

__all__ = ["MultiNodeCluster", "Node", "JobResult", "HarnessError", "last_json", "namespaces_available"]

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
RAY, MLFLOW, PYTHON = str(BIN / "ray"), str(BIN / "mlflow"), sys.executable
GCS_PORT, DASHBOARD_PORT, S3_PORT, MLFLOW_PORT = 6379, 8265, 9000, 5000
READY_MARK = "block forever"  # `ray start --block` logs this once the node runs


class HarnessError(RuntimeError):
    pass


@dataclass
class Node:
    """One `ray start --block` process; index 0 is the head. Ports are fixed per index (own netns)."""

    name: str
    index: int
    temp_dir: str
    log: Path
    proc: subprocess.Popen | None = None
    mnt_ns: str | None = None  # the worker's own mount namespace, set once it runs

    def port(self, k: int) -> int:
        # 20000+: between Ray's worker ports (10002..19999, split per node below) and ephemeral ports.
        return 20000 + 100 * self.index + k

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class JobResult:
    submission_id: str
    status: str
    logs: str


class MultiNodeCluster:
    """The cluster; `start()` (or `with`) starts it, `close()` removes every trace. Arguments:

    workers: names of the worker nodes (at most 4; each also a custom resource of capacity 1 on its node).
    worker_cpus, object_store_mb: per worker node (logical CPUs: oversubscribing a small machine is fine).
    buckets: S3 buckets to create (none: no S3 server). mlflow: start the MLflow tracking server.
    hide: paths covered by an empty tmpfs on every worker node (add e.g. a cache dir the head fills).
    head_env: extra environment of the head's processes only (e.g. Ray system config `RAY_<flag>`).
    extra_env: extra environment of every process in the namespace (nodes, drivers, servers).

    Attributes: root (everything on disk, under /tmp), shared_dir (the NFS-like dir, same path everywhere),
    driver_dir (drivers' cwd, head only), logs (one `<name>.log` per process started), head / workers
    (`Node`), gcs_address, dashboard_url, s3_endpoint, mlflow_uri, env, node_ids.
    """

    def __init__(self, workers: Sequence[str] = ("node_a", "node_b"), *, worker_cpus: int = 2,
                 object_store_mb: int = 256, buckets: Sequence[str] = ("mdm",), mlflow: bool = True,
                 hide: Sequence[str] = ("/tmp",), head_env: dict[str, str] | None = None,
                 extra_env: dict[str, str] | None = None, start_timeout: float = 120.0):
        if len(workers) > 4 or len(set(workers)) < len(workers) or "head" in workers:
            raise HarnessError(f"workers must be at most 4 distinct names, not 'head': {workers}")
        self.worker_names, self.worker_cpus, self.object_store_mb = list(workers), worker_cpus, object_store_mb
        self.buckets, self.use_mlflow, self.hide = list(buckets), mlflow, list(hide)
        self.head_env, self.extra_env, self.start_timeout = dict(head_env or {}), dict(extra_env or {}), start_timeout
        # Short, under /tmp: Ray's unix socket paths under --temp-dir must stay below ~107 characters.
        self.root = Path(tempfile.mkdtemp(prefix="mn_", dir="/tmp"))
        self.logs, self.shared_dir, self.driver_dir = self.root / "logs", self.root / "shared", self.root / "driver"
        for d in (self.logs, self.shared_dir, self.driver_dir, self.root / "mlflow"):
            d.mkdir()
        self.gcs_address = f"127.0.0.1:{GCS_PORT}"
        self.dashboard_url = f"http://127.0.0.1:{DASHBOARD_PORT}"
        self.s3_endpoint = f"http://127.0.0.1:{S3_PORT}" if self.buckets else None
        self.mlflow_uri = f"http://127.0.0.1:{MLFLOW_PORT}" if mlflow else None
        self.head = Node("head", 0, str(self.root / "head"), self.logs / "head.log")
        self.workers = {n: Node(n, i + 1, str(self.root / n), self.logs / f"{n}.log") for i, n in enumerate(workers)}
        self.holder: subprocess.Popen | None = None
        self.netns: str | None = None
        self._procs: list[subprocess.Popen] = []
        self.node_ids: dict[str, str] = {}  # node name -> latest Ray node id (nodes(), wait_for_nodes())
        self._seen: dict[str, str] = {}  # every Ray node id seen -> node name
        self.host_listeners_at_start = host_listeners()
        # Processes of earlier tests in this pytest session are not the harness's to judge.
        self.preexisting = {p.pid for p in psutil.Process().children(recursive=True)}

    # -- environment and processes in the namespace ------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The environment of every process in the namespace (the caller's, minus proxies and RAY_ADDRESS)."""
        env = {k: v for k, v in os.environ.items()
               if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "ray_address")}
        env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                   PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   TOKENIZERS_PARALLELISM="false", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                   MN_NODE_NAME="head", MN_SHARED_DIR=str(self.shared_dir))
        if self.s3_endpoint:
            env.update(AWS_ENDPOINT_URL=self.s3_endpoint, MLFLOW_S3_ENDPOINT_URL=self.s3_endpoint,
                       AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                       AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")
        if self.mlflow_uri:
            env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        env.update(self.extra_env)
        return env

    def nsenter(self, cmd: Sequence[str]) -> list[str]:
        """`cmd` wrapped to run in the cluster's network namespace (and the machine's mount namespace)."""
        if self.holder is None:
            raise HarnessError("cluster not started")
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--", *cmd]

    def popen(self, cmd: Sequence[str], name: str, *, env: dict[str, str] | None = None,
              cwd: str | Path | None = None) -> subprocess.Popen:
        """Start `cmd` in the namespace in the background, stdout+stderr to `logs/<name>.log`."""
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(self.nsenter(cmd), env={**self.env, **(env or {})}, cwd=cwd or self.driver_dir,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._procs.append(proc)
        return proc

    def run(self, cmd: Sequence[str], *, timeout: float = 120, check: bool = True,
            env: dict[str, str] | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run `cmd` in the namespace and wait; raises HarnessError with its output if it fails (check)."""
        out = subprocess.run(self.nsenter(cmd), env={**self.env, **(env or {})}, cwd=cwd or self.driver_dir,
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise HarnessError(f"{' '.join(cmd)} exited {out.returncode}\n--- stdout\n{out.stdout[-6000:]}"
                               f"\n--- stderr\n{out.stderr[-6000:]}")
        return out

    def driver_script(self, code: str) -> Path:
        path = self.driver_dir / f"driver_{uuid.uuid4().hex[:8]}.py"
        path.write_text(code)
        return path

    def python(self, code: str, *args: str, timeout: float = 120, check: bool = True,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `code` as a Ray driver on the head (`RAY_ADDRESS` set, cwd `driver_dir`: hidden from workers)."""
        return self.run([PYTHON, str(self.driver_script(code)), *args], timeout=timeout, check=check,
                        env={"RAY_ADDRESS": self.gcs_address, **(env or {})})

    def python_json(self, code: str, *args: str, **kw: Any) -> Any:
        """`python`, then the last stdout line parsed as JSON (the script prints its result last)."""
        out = self.python(code, *args, **kw)
        try:
            return last_json(out.stdout)
        except ValueError:
            raise HarnessError(f"no JSON line in the driver's output\n--- stdout\n{out.stdout[-3000:]}"
                               f"\n--- stderr\n{out.stderr[-6000:]}") from None

    def python_background(self, code: str, name: str, *args: str) -> subprocess.Popen:
        """`python` without waiting; the output goes to `logs/<name>.log` (see `log_tail`)."""
        return self.popen([PYTHON, str(self.driver_script(code)), *args], name, env={"RAY_ADDRESS": self.gcs_address})

    def submit_job(self, entrypoint: Sequence[str], working_dir: str | Path, *, runtime_env: dict | None = None,
                   args: Sequence[str] = (), cwd: str | Path | None = None, timeout: float = 180) -> JobResult:
        """`ray job submit --working-dir` from inside the namespace (run in `cwd`, default `driver_dir`, with
        extra `args` such as `--runtime-env cluster/runtime_env.yaml`), then wait for a terminal status."""
        sid = f"mn_{uuid.uuid4().hex[:10]}"
        cmd = [RAY, "job", "submit", "--address", self.dashboard_url, "--submission-id", sid, "--no-wait",
               "--working-dir", str(working_dir), *args]
        if runtime_env:
            cmd += ["--runtime-env-json", json.dumps(runtime_env)]
        self.run([*cmd, "--", *entrypoint], timeout=120, cwd=cwd)
        res = self.python_json(WAIT_JOB, self.dashboard_url, sid, str(timeout), timeout=timeout + 60)
        return JobResult(sid, res["status"], res["logs"])

    # -- cluster lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "MultiNodeCluster":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> "MultiNodeCluster":
        self.holder = subprocess.Popen(["unshare", "-n", "--", PYTHON, str(HERE / "nsexec.py"), "hold", str(self.root)],
                                       stdout=subprocess.PIPE, text=True, start_new_session=True)
        ready, _, _ = select.select([self.holder.stdout], [], [], 30)
        if not ready or self.holder.stdout.readline().strip() != "ready":
            raise HarnessError("the namespace holder did not start (root and `unshare -n` needed)")
        self.netns = ns_id(self.holder.pid, "net")
        if self.netns in (None, ns_id(os.getpid(), "net")):  # teardown kills by this id: never the host's
            raise HarnessError(f"the holder is not in a private network namespace ({self.netns})")
        if self.buckets:
            s3 = self.popen([PYTHON, str(HERE / "s3_server.py"), "--port", str(S3_PORT),
                             *[a for b in self.buckets for a in ("--bucket", b)]], "s3")
        self._start_node(self.head)
        if self.buckets:
            self._wait_log(s3, self.logs / "s3.log", "ready", "S3 server")
        if self.use_mlflow:
            # MLflow 3 serves with uvicorn, 4 workers by default: one is enough here. Artifacts are proxied
            # (--serve-artifacts is the default): clients upload over HTTP, the server writes to S3. Its
            # host-header check (--allowed-hosts) admits localhost/127.0.0.1 on any port by default.
            dest = f"s3://{self.buckets[0]}/mlartifacts" if self.buckets else str(self.root / "mlflow" / "artifacts")
            mlf = self.popen([MLFLOW, "server", "--host", "127.0.0.1", "--port", str(MLFLOW_PORT), "--workers", "1",
                              "--backend-store-uri", f"sqlite:///{self.root}/mlflow/mlflow.db",
                              "--artifacts-destination", dest], "mlflow")
        self._wait_node(self.head)
        for node in self.workers.values():
            self._start_node(node)
        for node in self.workers.values():
            self._wait_node(node)
        if self.use_mlflow:
            self._wait_port(mlf, MLFLOW_PORT, "MLflow server")
        self.wait_for_nodes(1 + len(self.workers))
        return self

    def _start_node(self, node: Node) -> None:
        head = node.index == 0
        cmd = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--temp-dir", node.temp_dir,
               "--object-store-memory", str(self.object_store_mb * 2**20), "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(node.port(0)), "--dashboard-agent-grpc-port", str(node.port(1)),
               "--runtime-env-agent-port", str(node.port(2)), "--metrics-export-port", str(node.port(3)),
               "--node-manager-port", str(node.port(4)), "--object-manager-port", str(node.port(5)),
               "--min-worker-port", str(10002 + 2000 * node.index), "--max-worker-port", str(11999 + 2000 * node.index)]
        env = {"MN_NODE_NAME": node.name}
        if head:
            cmd += ["--head", "--port", str(GCS_PORT), "--num-cpus", "0", "--include-dashboard", "true",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(DASHBOARD_PORT),
                    "--ray-client-server-port", str(node.port(6))]
            env.update(self.head_env)
        else:
            cmd += ["--address", self.gcs_address, "--num-cpus", str(self.worker_cpus),
                    "--resources", json.dumps({"worker_node": 1, node.name: 1})]
            mounts = [a for p in self.hide for a in ("--hide", p)] + ["--bind", str(self.shared_dir),
                                                                      "--mkdir", node.temp_dir]
            cmd = ["unshare", "-m", "--propagation", "private", "--", PYTHON, str(HERE / "nsexec.py"), "mounts",
                   *mounts, "--", *cmd]
        node.log.write_text("")
        node.mnt_ns = None
        node.proc = self.popen(cmd, node.name, env=env)

    def _wait_node(self, node: Node) -> None:
        self._wait_log(node.proc, node.log, READY_MARK, f"Ray node {node.name}")
        if node.index:
            node.mnt_ns = ns_id(node.proc.pid, "mnt")

    def _wait_log(self, proc: subprocess.Popen, log: Path, mark: str, what: str) -> None:
        deadline = time.time() + self.start_timeout
        while mark not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.time() > deadline:
                raise HarnessError(f"{what} did not start (exit {proc.poll()}):\n{self.log_tail(log.stem)}")
            time.sleep(0.25)

    def _wait_port(self, proc: subprocess.Popen, port: int, what: str) -> None:
        deadline = time.time() + self.start_timeout
        while port not in {p for _, p in self.listeners()}:
            if proc.poll() is not None or time.time() > deadline:
                raise HarnessError(f"{what} not listening on {port}:\n{self.log_tail(what.split()[0].lower())}")
            time.sleep(0.25)

    def start_node(self, name: str) -> Node:
        """(Re)start worker node `name` (after `kill_node`) with fresh private storage; waits until it runs."""
        node = self.workers[name]
        if node.alive:
            raise HarnessError(f"{name} is running")
        self._start_node(node)
        self._wait_node(node)
        self.wait_for_nodes(1 + sum(w.alive for w in self.workers.values()))
        return node

    def kill_node(self, name: str, timeout: float = 30) -> None:
        """SIGKILL every process of worker node `name` (its whole mount namespace), like a machine dying."""
        node, netns = self.workers[name], self.netns
        if node.mnt_ns in (None, ns_id(os.getpid(), "mnt")):  # never the host's mount namespace
            raise HarnessError(f"{name} has no private mount namespace ({node.mnt_ns})")
        self._kill_until_gone(lambda: sorted(set(pids_in_ns("mnt", node.mnt_ns)) & set(pids_in_ns("net", netns))),
                              signal.SIGKILL, timeout)
        node.proc.wait(timeout)

    def wait_for_nodes(self, alive: int, timeout: float = 90) -> list[dict]:
        """Wait until exactly `alive` nodes are alive in `ray.nodes()`; returns `nodes()`."""
        return self._nodes(alive, timeout)

    def nodes(self) -> list[dict]:
        """`ray.nodes()` summarised: node_id, alive, name ('head' or the worker's), resources; a restarted
        worker appears twice (dead and alive). `node_ids` maps each name to its latest node id."""
        return self._nodes(-1, 0)

    def _nodes(self, alive: int, timeout: float) -> list[dict]:
        nodes = self.python_json(WAIT_NODES, str(alive), str(timeout), json.dumps(self.worker_names),
                                 timeout=timeout + 60)
        for n in nodes:  # a dead node may report no resources: name it from what we saw while it lived
            n["name"] = n["name"] or self._seen.get(n["node_id"])
            self._seen[n["node_id"]] = n["name"]
            if n["alive"]:
                self.node_ids[n["name"]] = n["node_id"]
        return nodes

    def close(self) -> None:
        """Kill every process of the namespace (TERM, then KILL), reap ours, remove `root`. Idempotent."""
        if self.netns is not None:
            # A short grace period (Ray's processes exit cleanly on TERM), then KILL whatever is left.
            netns = self.netns
            self._kill_until_gone(lambda: pids_in_ns("net", netns), signal.SIGTERM, 3)
            self._kill_until_gone(lambda: pids_in_ns("net", netns), signal.SIGKILL, 30)
        for proc in [self.holder, *self._procs]:
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait(10)
        self.holder, self.netns, self._procs = None, None, []
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_until_gone(self, pids: Callable[[], list[int]], sig: int, timeout: float) -> None:
        """Signal `pids()` until it is empty (a dying raylet may still fork) or `timeout` runs out."""
        deadline, sent = time.time() + timeout, set()
        while (found := [p for p in pids() if p != os.getpid()]) and time.time() < deadline:
            for pid in set(found) - sent:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
                sent.add(pid)
            for proc in [self.holder, *self._procs]:
                if proc is not None:
                    proc.poll()  # reap our own children: a zombie has no namespace link, so it drops out
            time.sleep(0.2)

    # -- inspection ------------------------------------------------------------------------------------
    def processes(self) -> list[int]:
        """PIDs of every process in the cluster's network namespace."""
        return pids_in_ns("net", self.netns) if self.netns else []

    def escaped_processes(self) -> list[psutil.Process]:
        """Descendants of this test process started since the harness was made, outside the private network
        namespace (should be none)."""
        return [p for p in psutil.Process().children(recursive=True)
                if p.pid not in self.preexisting and ns_id(p.pid, "net") not in (None, self.netns)]

    def host_listener_leaks(self) -> list[tuple[str, int, str]]:
        """Listening sockets in the *host's* namespace, new since construction, owned by the harness's
        processes (descendants of this process or naming `root`): (address, pid, command). Should be []."""
        ours = {p.pid for p in psutil.Process().children(recursive=True)} | set(self.processes())
        leaks = []
        for addr, who in host_listeners() - self.host_listeners_at_start:
            for pid in map(int, re.findall(r"pid=(\d+)", who)):
                try:
                    cmd = " ".join(psutil.Process(pid).cmdline())
                except psutil.Error:
                    cmd = ""
                if pid in ours or str(self.root) in cmd:
                    leaks.append((addr, pid, cmd))
        return leaks

    def listeners(self) -> list[tuple[IPAddress, int]]:
        """(address, port) of every listening TCP socket inside the namespace (from /proc/<holder>/net)."""
        return tcp_listeners(self.holder.pid)

    def node_path(self, name: str, path: str | Path) -> Path:
        """Where this process can read `path` as worker `name` sees it (its mount namespace, while alive)."""
        return Path(f"/proc/{self.workers[name].proc.pid}/root") / str(path).lstrip("/")

    def log_tail(self, name: str, n: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else f"(no log {path})"

    def diagnostics(self) -> str:
        """The tail of every log the harness wrote, for assertion messages."""
        return "\n".join(f"=== {p.stem}\n{self.log_tail(p.stem, 2500)}" for p in sorted(self.logs.glob("*.log")))
