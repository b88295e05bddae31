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
Every process started inside gets `env` (the ns_env below): S3 endpoint and fake credentials,
`MLFLOW_TRACKING_URI`, `RAY_AUTH_MODE=disabled`, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1` (a second node
refuses to join without it; only ever set inside the private namespace, where there is no other address)
and `MN_NODE_NAME` (`head` or the worker's name), so a task can tell where it runs.

Teardown (`close`, also on failure) kills every process in the network namespace (only the cluster's can
be there) and removes `root`. `ray stop` is never used: it kills every Ray on the machine.
"""

from __future__ import annotations

import ipaddress
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
from typing import Any, Sequence

import psutil

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
    def __init__(self, workers: Sequence[str] = ("node_a", "node_b"), *, worker_cpus: int = 2,
                 object_store_mb: int = 256, buckets: Sequence[str] = ("mdm",), mlflow: bool = True,
                 hide: Sequence[str] = ("/tmp",), head_env: dict[str, str] | None = None,
                 extra_env: dict[str, str] | None = None, start_timeout: float = 120.0):
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
        self.host_listeners_at_start = host_listeners()

    # -- environment and processes in the namespace ------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
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
                   timeout: float = 180) -> JobResult:
        """`ray job submit --working-dir` from inside the namespace, then wait for a terminal status."""
        sid = f"mn_{uuid.uuid4().hex[:10]}"
        cmd = [RAY, "job", "submit", "--address", self.dashboard_url, "--submission-id", sid, "--no-wait",
               "--working-dir", str(working_dir)]
        if runtime_env:
            cmd += ["--runtime-env-json", json.dumps(runtime_env)]
        self.run([*cmd, "--", *entrypoint], timeout=120)
        res = self.python_json(_WAIT_JOB, self.dashboard_url, sid, str(timeout), timeout=timeout + 60)
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
        self.netns = os.readlink(f"/proc/{self.holder.pid}/ns/net")
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
            node.mnt_ns = os.readlink(f"/proc/{node.proc.pid}/ns/mnt")

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
        return node

    def kill_node(self, name: str, timeout: float = 30) -> None:
        """SIGKILL every process of worker node `name` (its whole mount namespace), like a machine dying."""
        node = self.workers[name]
        if node.mnt_ns is None:
            raise HarnessError(f"{name} never started")
        self._kill_until_gone(lambda p: _ns(p, "mnt") == node.mnt_ns, signal.SIGKILL, timeout)
        node.proc.wait(timeout)

    def wait_for_nodes(self, alive: int, timeout: float = 90) -> list[dict]:
        """Wait until exactly `alive` nodes are alive in `ray.nodes()`; returns `nodes()`."""
        return self.python_json(_WAIT_NODES, str(alive), str(timeout), json.dumps(self.worker_names),
                                timeout=timeout + 60)

    def nodes(self) -> list[dict]:
        """`ray.nodes()` summarised: node_id, alive, name (MN node name), resources."""
        return self.python_json(_WAIT_NODES, "-1", "0", json.dumps(self.worker_names))

    def close(self) -> None:
        """Kill every process of the namespace (TERM, then KILL), reap ours, remove `root`. Idempotent."""
        if self.netns is not None:
            # A short grace period (Ray's processes exit cleanly on TERM), then KILL whatever is left.
            self._kill_until_gone(lambda p: _ns(p, "net") == self.netns, signal.SIGTERM, 3)
            self._kill_until_gone(lambda p: _ns(p, "net") == self.netns, signal.SIGKILL, 30)
        for proc in [self.holder, *self._procs]:
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait(10)
        self.holder, self.netns, self._procs = None, None, []
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_until_gone(self, match: Any, sig: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while True:
            procs = [p for p in psutil.process_iter() if p.pid != os.getpid() and match(p)]
            if not procs or time.time() > deadline:
                return
            for p in procs:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=min(3.0, max(0.1, deadline - time.time())))
            for proc in self._procs:
                proc.poll()  # reap our own children, or they stay as zombies in the scan

    # -- inspection ------------------------------------------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        """Every process in the cluster's network namespace."""
        return [p for p in psutil.process_iter() if self.netns and _ns(p, "net") == self.netns]

    def escaped_processes(self) -> list[psutil.Process]:
        """Descendants of this test process outside the private network namespace (should be none)."""
        return [p for p in psutil.Process().children(recursive=True) if _ns(p, "net") not in (None, self.netns)]

    def host_listener_leaks(self) -> list[tuple[str, int, str]]:
        """Listening sockets in the *host's* namespace, new since construction, owned by the harness's
        processes (descendants of this process or naming `root`): (address, pid, command). Should be []."""
        ours = {p.pid for p in psutil.Process().children(recursive=True)} | {p.pid for p in self.processes()}
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

    def listeners(self) -> list[tuple[ipaddress._BaseAddress, int]]:
        """(address, port) of every listening TCP socket inside the namespace (from /proc/<holder>/net)."""
        out = []
        for name in ("tcp", "tcp6"):
            for line in Path(f"/proc/{self.holder.pid}/net/{name}").read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A":  # TCP_LISTEN
                    addr, port = f[1].split(":")
                    out.append((_proc_addr(addr), int(port, 16)))
        return out

    def node_path(self, name: str, path: str | Path) -> Path:
        """Where this process can read `path` as worker `name` sees it (its mount namespace, while alive)."""
        return Path(f"/proc/{self.workers[name].proc.pid}/root") / str(path).lstrip("/")

    def log_tail(self, name: str, n: int = 4000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else f"(no log {path})"

    def diagnostics(self) -> str:
        """The tail of every log the harness wrote, for assertion messages."""
        return "\n".join(f"=== {p.stem}\n{self.log_tail(p.stem, 2500)}" for p in sorted(self.logs.glob("*.log")))


def _ns(p: psutil.Process, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{p.pid}/ns/{kind}")
    except OSError:
        return None


def _proc_addr(hexaddr: str) -> ipaddress._BaseAddress:
    raw = bytes.fromhex(hexaddr)  # /proc/net/tcp*: 32-bit words in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def namespaces_available() -> bool:
    """Whether this process may create network and mount namespaces (root, unshare, nsenter present)."""
    try:
        return subprocess.run(["unshare", "-n", "-m", "--propagation", "private", "true"],
                              capture_output=True, timeout=30).returncode == 0 and shutil.which("nsenter") is not None
    except (OSError, subprocess.TimeoutExpired):
        return False


def last_json(text: str) -> Any:
    """The last line of `text` that parses as a JSON object or list (a driver's result; Ray may log after it)."""
    for line in reversed(text.splitlines()):
        if line.strip().startswith(("{", "[")):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise ValueError("no JSON line")


def host_listeners() -> set[tuple[str, str]]:
    """(local address, owning processes) of the listening TCP sockets in *this* (the host's) namespace."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
    return {(f[3], f[5] if len(f) > 5 else "") for f in (ln.split() for ln in out.splitlines()) if len(f) > 3}


_WAIT_NODES = """
import json, sys, time, ray
want, timeout, names = int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
ray.init(logging_level="ERROR")
deadline = time.time() + timeout
while True:
    nodes = [{"node_id": n["NodeID"], "alive": n["Alive"], "resources": n["Resources"],
              "name": next((k for k in names if k in n["Resources"]),
                           "head" if "node:__internal_head__" in n["Resources"] else None)} for n in ray.nodes()]
    if want < 0 or sum(n["alive"] for n in nodes) == want:
        break
    if time.time() > deadline:
        sys.exit(f"{sum(n['alive'] for n in nodes)} nodes alive, want {want}: {nodes}")
    time.sleep(0.5)
print(json.dumps(nodes))
"""

_WAIT_JOB = """
import json, sys, time
from ray.job_submission import JobSubmissionClient
address, sid, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
client = JobSubmissionClient(address)
deadline = time.time() + timeout
while not client.get_job_status(sid).is_terminal() and time.time() < deadline:
    time.sleep(1)
print(json.dumps({"status": str(client.get_job_status(sid).value), "logs": client.get_job_logs(sid)}))
"""
