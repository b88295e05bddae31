"""The torch process group of a worker group that runs on this one machine, with no TCP listener.

    TorchTrainer(..., torch_config=LocalTorchConfig())    # only when every worker shares this machine

Ray Train's own setup (`init_method` env or tcp) starts torch's TCPStore on rank 0, and torch binds that
store to every interface (`::`), whatever MASTER_ADDR says (pytorch/pytorch#173909): on a laptop's embedded
Ray that is an unauthenticated port on the network for as long as training runs. When all workers share this
machine's filesystem, the rendezvous can be a file instead (torch's FileStore, `init_method="file://..."`),
and the collectives' own sockets stay on loopback (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME, set for the
embedded Ray's workers by `mdm.platform.runtime.ray_runtime`). The rest is Ray's setup, reused: the backend
choice (nccl with GPUs, else gloo), the torch environment variables, the group's timeout. The driver uses it
only with an embedded (or this process's already-started local) Ray, never on a cluster, where the workers
do not share a disk. Ray has no public way to do this (see `file_rendezvous_backend`), so it builds on
Ray's private `_TorchBackend` (the same in Ray 2.50-2.60); every private Ray name is used in that one function.
"""

from __future__ import annotations

import functools
import os
import tempfile
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ray
from ray.train.torch import TorchConfig


@functools.cache  # one class per process, not a new one at each `backend_cls` lookup
def file_rendezvous_backend() -> type:
    """Ray's torch backend with a fresh rendezvous file per worker-group start instead of a TCP store.

    Ray's private internals, on purpose and only here: Ray's public `TorchConfig` takes `init_method` "env"
    or "tcp" only (both start torch's TCPStore) and offers no public hook for another rendezvous, so this
    subclasses the private `_TorchBackend` (keeping its shutdown and training-start steps) and reuses its
    private helpers for the environment variables and the group itself. Check these names on a Ray upgrade.
    """
    from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

    if TYPE_CHECKING:
        from ray.train._internal.base_worker_group import BaseWorkerGroup

    class FileRendezvousBackend(_TorchBackend):
        def on_start(self, worker_group: BaseWorkerGroup, backend_config: TorchConfig) -> None:
            backend = backend_config.backend
            if backend is None:
                backend = "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
            # A new file each start: torch's FileStore must not find one left by a group that crashed.
            url = "file://" + os.path.join(tempfile.gettempdir(), f"mdm-rendezvous-{uuid.uuid4().hex}")
            worker_group.execute(_set_torch_distributed_env_vars)
            ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend=backend,
                                                       world_rank=i, world_size=len(worker_group),
                                                       init_method=url, timeout_s=backend_config.timeout_s)
                     for i in range(len(worker_group))])

    return FileRendezvousBackend


@dataclass
class LocalTorchConfig(TorchConfig):
    """`TorchConfig` whose process group meets through a file on this machine (see the module docstring)."""

    @property
    def backend_cls(self) -> type:
        return file_rendezvous_backend()
