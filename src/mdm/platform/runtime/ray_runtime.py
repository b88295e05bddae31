"""Where the run happens: an embedded local Ray, or an existing cluster.

    from mdm.platform.runtime.ray_runtime import ensure_ray
    ensure_ray(cfg.ray)          # no-op when Ray is already initialised in this process

`ray.address` (or the RAY_ADDRESS environment variable) joins that cluster ("auto", "ray://host:10001");
without either an embedded Ray starts on this machine with every server on 127.0.0.1, checked after start.
Ray decides at `import ray` whether a local node may serve other machines (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER,
on by default on Linux, which rewrites 127.0.0.1 to the machine's address and binds GCS, raylet, agents and
workers to every interface): `mdm/__init__.py` turns it off before anything imports Ray, and `ensure_ray`
applies the same setting when Ray was imported before mdm. Set the variable to 1 yourself to opt out.

The embedded Ray starts its dashboard (on 127.0.0.1): Ray's State API is served by it, and Ray Train's
placement-group cleaner polls that API every second (without it: a warning a second, and no cleanup after a
crashed controller). That cleaner, an actor, finds the cluster by RAY_ADDRESS or else by scanning the machine
for GCS processes, which fails as soon as a second Ray runs there (another notebook, another user): so the
embedded GCS port is chosen here (RAY_GCS_SERVER_PORT) and the workers get RAY_ADDRESS pointing at it. Its
workers also bind gloo and NCCL to the loopback interface (the process group meets through a file,
`mdm.platform.train.local_pg`, since torch's TCP store would listen on every interface).

The terminal gets mdm's lines, one bar per phase and Ray's warnings; Ray's detail goes to its log files (the
session's `logs/`, printed at start): Ray Data logs INFO to `ray-data.log` only (`ray_data_logging.yaml`, via
RAY_DATA_LOGGING_CONFIG), Ray Train's INFO lines go to its `train/` files (`TRAIN_LOG_LEVEL`, on the
trainer's RunConfig), the workers draw no Hugging Face progress bars (they would arrive as one frozen line
each), and one local node runs no preemption watcher (nothing drains a laptop; on one node the watcher only
logs a core_worker error about its constructor arguments). Token authentication is on for the embedded
Ray, as Ray itself defaults to, but set explicitly so Ray does not warn about choosing it (`_token_auth`).

Before any actor starts, `check_worker_fit` makes sure the Train workers leave CPU for Ray Data's read and
map tasks: two 1-CPU workers on a 2-CPU Ray plus a Dataset hang with no error.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import ray

if TYPE_CHECKING:
    from mdm.platform.runtime.ray_config import RayConfig

# Ray Data's read and map tasks ask for 1 CPU each: at least that much must stay free beside the workers.
DATA_CPU_RESERVE = 1.0
LOOPBACK = ("127.0.0.1", "::1")
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # Ray's token authentication: "token" or "disabled" (see `_token_auth`)
TRAIN_LOG_LEVEL = "WARNING"  # ray.train.LoggingConfig: Train's INFO lines stay in its log files
DATA_LOGGING_CONFIG = str(Path(__file__).with_name("ray_data_logging.yaml"))
# Defaults (a user's own setting wins) for this process and, inherited, the embedded Ray's processes.
QUIET_ENV = {"RAY_DATA_LOGGING_CONFIG": DATA_LOGGING_CONFIG}
EMBEDDED_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# For the embedded Ray's workers only (the driver keeps its download bars). MDM_EMBEDDED_RAY tells code in
# those workers (a Tune trial's driver) that the whole cluster is this machine (`is_local_cluster`).
WORKER_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "MDM_EMBEDDED_RAY": "1"}


def _accelerator_env() -> dict[str, str]:
    """DeepSpeed picks its accelerator when imported (transformers imports it to save a model) and, finding no
    GPU, warns on every worker's terminal that it fell back to the CPU. The embedded Ray's workers run on this
    machine: without a GPU here, name the CPU for it (a user's DS_ACCELERATOR wins)."""
    import torch

    return {} if torch.cuda.device_count() > 0 and torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu"}


def _loopback_interface() -> dict[str, str]:
    """One machine: the collectives' sockets on the loopback interface too (the process group itself meets
    through a file, `mdm.platform.train.local_pg`); gloo and NCCL otherwise bind the hostname's address."""
    names = {name for _, name in socket.if_nameindex()}
    lo = next((n for n in ("lo", "lo0") if n in names), None)
    return {"GLOO_SOCKET_IFNAME": lo, "NCCL_SOCKET_IFNAME": lo} if lo else {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cluster_address(ray_cfg: RayConfig) -> Optional[str]:
    """The cluster to join (`ray.address`, else RAY_ADDRESS), or None for an embedded local Ray."""
    return ray_cfg.address or os.environ.get("RAY_ADDRESS") or None


def is_local_cluster(ray_cfg: RayConfig) -> bool:
    """True when every node of the Ray this process uses is this machine, sharing its disk: a Ray started in
    this process (embedded, or a test's `ray.init()`), or a worker of mdm's embedded Ray. A worker of any
    other Ray (a Tune trial's driver on a cluster, which may see no RAY_ADDRESS) is not."""
    if os.environ.get("MDM_EMBEDDED_RAY") == "1":
        return True
    if cluster_address(ray_cfg) is not None:
        return False
    return not (ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE)


def alive_nodes() -> int:
    """How many nodes of the Ray this process joined are alive (Ray must be initialised)."""
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def _quiet(env: dict[str, str]) -> None:
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if "ray.data" in sys.modules:  # Ray Data read its logging config at import; read it again
        from ray.data._internal.logging import configure_logging

        configure_logging()


def _loopback_only() -> bool:
    """Keep an embedded Ray on loopback unless the user set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER to 1."""
    if os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0").strip().lower() in ("1", "true"):
        return False
    from ray._private import ray_constants

    # Read once at `import ray`: a program that imported Ray before mdm got Linux's default (every interface).
    ray_constants.ENABLE_RAY_CLUSTER = False
    return True


def _token_auth() -> None:
    """The embedded Ray with token authentication, said explicitly. Ray turns it on by itself for a new local
    cluster when RAY_AUTH_MODE is unset, and then warns about it on the terminal; setting the mode beforehand
    keeps the same protection (a token in ~/.ray/auth_token, made when missing) without the warning. A user's
    RAY_AUTH_MODE wins (`disabled` opts out)."""
    if AUTH_MODE_ENV in os.environ:
        return
    os.environ[AUTH_MODE_ENV] = "token"  # inherited by the node's processes, which start after this
    from ray._raylet import Config

    Config.initialize("")  # this process's RayConfig read the variable at `import ray`: read it again


def ensure_ray(ray_cfg: RayConfig) -> bool:
    """Initialise Ray for this process; returns True when this call started it (embedded or joined)."""
    if ray.is_initialized():
        return False
    address = cluster_address(ray_cfg)
    if address:
        _quiet(QUIET_ENV)
        ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
        return True
    loopback = _loopback_only()
    _token_auth()
    _quiet({**QUIET_ENV, **EMBEDDED_ENV})
    worker_env = {k: os.environ.get(k, v) for k, v in
                  {**WORKER_ENV, **_accelerator_env(), **(_loopback_interface() if loopback else {})}.items()}
    port = os.environ.get("RAY_GCS_SERVER_PORT")
    if loopback:
        port = port or str(_free_port())
        worker_env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    saved = os.environ.get("RAY_GCS_SERVER_PORT")
    try:
        if port:
            os.environ["RAY_GCS_SERVER_PORT"] = port  # read when the node starts; not left for later inits
        ctx = ray.init(num_cpus=ray_cfg.num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                       _node_ip_address="127.0.0.1", log_to_driver=True, logging_level=logging.WARNING,
                       runtime_env={"env_vars": worker_env})
    finally:
        if saved is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
    node_ip = ray.util.get_node_ip_address()
    if loopback and node_ip not in LOOPBACK:
        ray.shutdown()
        raise RuntimeError(f"the embedded Ray came up on {node_ip}, not 127.0.0.1; set "
                           f"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Python starts")
    logs = os.path.join(ctx.address_info.get("session_dir", "?"), "logs")
    print(f"mdm: embedded Ray on {node_ip} (dashboard http://{ctx.dashboard_url}; Ray's logs: {logs})",
          file=sys.stderr, flush=True)
    return True


def check_worker_fit(ray_cfg: RayConfig) -> None:
    """Raise ValueError when the worker group cannot start or would starve Ray Data of CPUs."""
    total = float(ray.cluster_resources().get("CPU", 0.0))
    want = ray_cfg.num_workers * ray_cfg.cpus_per_worker
    if want + DATA_CPU_RESERVE > total + 1e-9:
        raise ValueError(
            f"ray.num_workers ({ray_cfg.num_workers}) x ray.cpus_per_worker ({ray_cfg.cpus_per_worker}) = "
            f"{want:g} CPUs leaves less than {DATA_CPU_RESERVE} of the cluster's {total:g} CPUs for Ray Data's "
            f"read/map tasks, which would hang; lower ray.cpus_per_worker (fractions are fine) or add CPUs")
    if ray_cfg.use_gpu:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if ray_cfg.num_workers * ray_cfg.gpus_per_worker > gpus + 1e-9:
            raise ValueError(f"ray.use_gpu: {ray_cfg.num_workers} workers x {ray_cfg.gpus_per_worker} GPU need "
                             f"more than the cluster's {gpus:g} GPUs")
