"""Rank 0's writer into a run through the tracking spool: training appends to the node's disk and goes on.

    log = SpoolLogger(uri, run_id, "outputs/gsm8k-ab12cd34/tracking_spool")   # starts the shipper thread
    log.metrics({"train/loss": 1.2}, step=10); log.tags({...}); log.artifact(path, "final_model")
    run_id = log.begin_attempt(kept_through=120)   # in order with the records; waits a little for the answer
    log.close(timeout_s=60)                        # ship what is left; one line naming `mdm tracking sync` if not

The same methods as tracker.RunLogger (which logs directly); spool.py says what is kept and how, shipper.py
how it reaches the server.
"""

from __future__ import annotations

import os
from typing import Optional

from mlflow.tracking import MlflowClient

from mdm.platform.tracking.shipper import Shipper, say
from mdm.platform.tracking.spool import Spool, metric, tag

ATTEMPT_WAIT_S = 30.0  # how long a starting attempt waits to learn its run id (the server may be down)


class SpoolLogger:
    """Appends to the spool at `spool_dir` (made for `uri`, `run_id` if new) and ships it in the background."""

    def __init__(self, uri: str, run_id: str, spool_dir: str, run_name: str = "") -> None:
        self.spool = Spool.create(spool_dir, uri, run_id, run_name)
        self.client = MlflowClient(tracking_uri=uri)
        self.uri, self.run_id = uri, run_id
        self.shipper = Shipper(self.spool).start()

    @property
    def online(self) -> bool:
        return self.shipper.online

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.spool.append([metric(k, v, step) for k, v in values.items() if v is not None])
        self.shipper.notify()

    def tags(self, values: dict[str, str]) -> None:
        self.spool.append([tag(k, v) for k, v in values.items()])
        self.shipper.notify()

    def artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        self.spool.append([self.spool.add_artifact(path, artifact_path)])
        self.shipper.notify()

    def begin_attempt(self, kept_through: Optional[int]) -> str:
        """Queue the attempt's start (attempts.begin_attempt, run by the shipper in order, so points of the
        attempt before go where they belong); the run id this attempt logs into, once the shipper has it
        (within ATTEMPT_WAIT_S), else the run id so far (the records still follow the attempt)."""
        self.spool.append([{"kind": "attempt", "kept_through": kept_through}])
        if self.shipper.flush(ATTEMPT_WAIT_S):
            self.run_id = self.spool.cursor().run_id
        return self.run_id

    def close(self, timeout_s: float) -> bool:
        """Ship what is left (waiting at most `timeout_s`); when records are left, say so and how to ship them."""
        if self.shipper.close(timeout_s):
            return True
        left = self.spool.backlog()
        say(f"tracking is still offline at {self.uri}: {left} bytes of records of run {self.run_id} are kept in "
            f"{self.spool.dir}; ship them when it is back with `mdm tracking sync {os.path.dirname(self.spool.dir)}`")
        return False


def end_run(uri: str, run_id: str, spool_dir: str, status: str, timeout_s: float) -> bool:
    """End the run (the one that holds its latest attempt) with `status` through the spool at `spool_dir`,
    after whatever is still in it; True once shipped, else one line naming `mdm tracking sync`."""
    spool = Spool.create(spool_dir, uri, run_id)
    spool.append([{"kind": "end", "status": status}])
    shipper = Shipper(spool)
    if shipper.sync(timeout_s):
        return True
    say(f"tracking is offline at {uri}: run {run_id} is not marked {status} yet ({spool.backlog()} bytes of "
        f"records kept in {spool.dir}); ship them when it is back with `mdm tracking sync {spool.dir.parent}`")
    return False
