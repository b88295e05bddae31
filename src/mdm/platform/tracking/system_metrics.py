"""MLflow's system-metrics monitor around a stretch of work: CPU, memory, disk, network, and GPUs when
`nvidia-ml-py` is installed (`pip install "mdm[gpu]"`), logged to the run as `system/...` every few seconds.

    stop = start_system_metrics(uri, run_id, interval_s=cfg.tracking.system_metrics_interval_s)
    train(); stop()
    with system_metrics(uri, run_id, interval_s=10): train()       # the same, as a context manager

Run where the work happens (the rank-0 Train worker, the comparison trial), so the numbers describe that
machine. `interval_s` <= 0 turns it off. A monitor that cannot start (psutil missing) only warns; its
thread is a daemon that also stops by itself once the run is no longer RUNNING. Stopping logs one last
sample, so work shorter than the interval still shows its CPU and memory.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator, Optional

log = logging.getLogger(__name__)


def start_system_metrics(uri: Optional[str], run_id: Optional[str], interval_s: float = 10.0) -> Callable[[], None]:
    """Start sampling system metrics into `run_id`; returns the function that stops it (a no-op when off)."""
    if not uri or not run_id or interval_s <= 0:
        return lambda: None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=True,
                                       tracking_uri=uri)
        monitor.start()
    except Exception as e:  # noqa: BLE001  (a courtesy: never stop training for it)
        log.warning("system metrics are off for run %s: %s", run_id, e)
        return lambda: None

    def stop() -> None:
        monitor.finish()
        # MLflow's loop drops the samples of an unfinished interval: one last sample, so that a stretch
        # shorter than the interval is recorded too.
        try:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as e:  # noqa: BLE001
            log.warning("last system-metrics sample for run %s not logged: %s", run_id, e)

    return stop


@contextlib.contextmanager
def system_metrics(uri: Optional[str], run_id: Optional[str], interval_s: float = 10.0) -> Iterator[None]:
    """Sample system metrics into `run_id` while the block runs."""
    stop = start_system_metrics(uri, run_id, interval_s)
    try:
        yield
    finally:
        stop()
