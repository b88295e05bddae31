"""`ray` section: where to run and how big the Train worker group is (read by the trainer and tune)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class RayConfig:
    """`address`: None starts an embedded local Ray unless RAY_ADDRESS is set; "auto" or "ray://..." joins.
    `cpus_per_worker`: keep the workers' CPUs below the cluster's so Ray Data's read tasks always get a CPU
    (two 1-CPU workers on a 2-CPU machine starve the reader and hang, with no error); fractions are fine.
    Ray Data's tasks each ask for 1 CPU, so the trainer checks num_workers x cpus_per_worker + 1 <= the
    cluster's CPUs before starting (e.g. on a 2-CPU laptop: 2 workers x 0.5 CPU, or 1 worker x 1.0).
    Ray also sets each worker's OMP_NUM_THREADS (torch's thread count) to floor(cpus_per_worker), at least
    1, unless the environment sets it.
    `storage_path`: checkpoints and run state; a local directory or any pyarrow/fsspec URI (s3://, gs://).
    `gpu_mem_gib`: memory of one GPU for `mdm train`'s memory plan (train/plan_check.py); None: the driver's
    CUDA device, else Ray's accelerator type.
    `stop_grace_s`: on Ctrl-C or SIGTERM the workers save their next checkpoint if it comes within this many
    seconds, then stop (train/stop.py); 0 stops at once (the last complete checkpoint is what resumes). Keep it
    below a scheduler's kill timeout (Kubernetes: terminationGracePeriodSeconds, 30 s by default)."""

    address: Optional[str] = None
    num_cpus: Optional[int] = None
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 1.0
    storage_path: str = "ray_results"
    max_failures: int = 0
    num_to_keep: int = 2
    gpu_mem_gib: Optional[float] = None
    stop_grace_s: float = 60.0

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"ray.num_workers must be >= 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"ray.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.stop_grace_s < 0:
            raise ValueError(f"ray.stop_grace_s must be >= 0 seconds (0: stop at once), got {self.stop_grace_s}")
        if self.gpu_mem_gib is not None and self.gpu_mem_gib <= 0:
            raise ValueError(f"ray.gpu_mem_gib must be > 0 GiB (or null: detected), got {self.gpu_mem_gib}")
