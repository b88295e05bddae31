"""Where the run happens: an embedded local Ray, or an existing cluster.

    from mdm.platform.runtime.ray_runtime import ensure_ray
    ensure_ray(cfg.ray)          # no-op when Ray is already initialised in this process

`ray.address` (or the RAY_ADDRESS environment variable) joins that cluster ("auto", "ray://host:10001");
without either an embedded Ray starts on this machine, bound to 127.0.0.1, without a dashboard.
Before any actor starts, `check_worker_fit` makes sure the Train workers leave CPU for Ray Data's read and
map tasks: two 1-CPU workers on a 2-CPU Ray plus a Dataset hang with no error.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import ray

# Ray Data's read and map tasks ask for 1 CPU each: at least that much must stay free beside the workers.
DATA_CPU_RESERVE = 1.0


def cluster_address(ray_cfg: Any) -> Optional[str]:
    """The cluster to join (`ray.address`, else RAY_ADDRESS), or None for an embedded local Ray."""
    return ray_cfg.address or os.environ.get("RAY_ADDRESS") or None


def ensure_ray(ray_cfg: Any) -> bool:
    """Initialise Ray for this process; returns True when this call started it (embedded or joined)."""
    if ray.is_initialized():
        return False
    address = cluster_address(ray_cfg)
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(num_cpus=ray_cfg.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=True)
    return True


def check_worker_fit(ray_cfg: Any) -> None:
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
