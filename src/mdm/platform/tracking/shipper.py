"""Ships a tracking spool (spool.py) to its MLflow server, in the background or to the end (`mdm tracking sync`).

    shipper = Shipper(spool).start()       # a daemon thread: ships whatever is appended, while the server answers
    shipper.notify()                       # new records: ship soon
    shipper.close(timeout_s=60)            # ship what is left, waiting at most that long; False: still offline
    Shipper(spool).sync()                  # in this thread, to the end or until the server is unreachable

Training threads only append to the spool; this thread talks to the server. It checks the server (`/health`,
2 s timeout) before each batch, so an outage costs no HTTP retries: it says once that tracking is offline
(one `mdm:` line on stderr, not per retry), checks again every few seconds, and says once when it is back.
Records go out in order through MLflow's batch API (`MlflowClient.log_batch`, up to 900 a call); an artifact,
an attempt (attempts.begin_attempt: a resumed attempt may move to a fresh run) or the run's end goes alone.
Exactly once: the cursor moves past a batch only after the server took it; a batch cut short (a timeout, a
crash of this process mid-send: `inflight_end` in the cursor) is sent again only for the (run, key, step)
the server does not hold (`get_metric_history`). A batch the server refuses (4xx while it is healthy) is
skipped with one line, so one bad value never blocks the rest. One shipper per spool (a lock file).
MLflow's own urllib3 retry warnings from this thread (and MLflow's system-metrics thread) are dropped: the
status lines say the same once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mdm.platform.tracking.spool import Cursor, Spool
from mdm.platform.tracking.tracker import TrackingError, check_reachable

BATCH_RECORDS = 900      # MLflow takes up to 1000 metrics, 100 params and 100 tags, 1000 entities, per batch
RETRY_EVERY_S = 3.0      # how often an offline shipper checks the server again
THREAD_NAME = "mdm-tracking-shipper"
QUIET_THREADS = (THREAD_NAME, "SystemMetricsMonitor")


class _QuietRetries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName not in QUIET_THREADS


def quiet_retry_warnings() -> None:
    """Drop urllib3's `Retrying (Retry(...))` warnings raised in the shipper's and system metrics' threads."""
    log = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _QuietRetries) for f in log.filters):
        log.addFilter(_QuietRetries())


def say(line: str) -> None:
    print(f"mdm: {line}", file=sys.stderr, flush=True)


class Offline(Exception):
    """The server did not answer (or failed); try again later."""


class Refused(Exception):
    """The server answered and refused the batch (a 4xx): sending it again would not help."""


class Shipper:
    """Ships one spool (see the module docstring); `online` is the last thing it learned about the server."""

    def __init__(self, spool: Spool, announce: Callable[[str], None] = say) -> None:
        self.spool, self.announce = spool, announce
        self.client = MlflowClient(tracking_uri=spool.uri)
        self.online = True
        self.shipped = 0
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.lock_fd: Optional[int] = None

    # -- the lock: one shipper per spool --------------------------------------------------------------------
    def acquire(self, timeout_s: float) -> bool:
        fd = os.open(self.spool.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.lock_fd = fd
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.2)

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # closing the descriptor drops the flock
            self.lock_fd = None

    # -- background ------------------------------------------------------------------------------------------
    def start(self) -> "Shipper":
        quiet_retry_warnings()
        self.thread = threading.Thread(target=self._loop, name=THREAD_NAME, daemon=True)
        self.thread.start()
        return self

    def notify(self) -> None:
        self.wake.set()

    def _loop(self) -> None:
        while not self.acquire(RETRY_EVERY_S):  # another process still ships this spool (a dying worker)
            if self.stopping.is_set():
                return
        try:
            while True:
                done = self.ship_available()
                if self.stopping.is_set():  # close() already waited what it could
                    return
                self.wake.wait(None if done else RETRY_EVERY_S)
                self.wake.clear()
        finally:
            self.release()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything appended so far is shipped (True) or `timeout_s` passed (False)."""
        deadline = time.monotonic() + timeout_s
        self.notify()
        while self.spool.backlog() > 0:
            if time.monotonic() >= deadline or self.thread is None or not self.thread.is_alive():
                return self.spool.backlog() == 0
            time.sleep(0.1)
        return True

    def close(self, timeout_s: float) -> bool:
        """Ship what is left, waiting at most `timeout_s`; then stop the thread. False: records are left."""
        done = self.flush(timeout_s)
        self.stopping.set()
        self.notify()
        if self.thread is not None:
            self.thread.join(timeout=5.0)
        return done

    def sync(self, timeout_s: float = 0.0) -> bool:
        """Ship to the end in this thread; True when nothing is left. Waits up to `timeout_s` for the lock
        and, while the server is unreachable, for it to answer."""
        quiet_retry_warnings()
        if not self.acquire(timeout_s):
            raise RuntimeError(f"another process is shipping {self.spool.dir} (its lock file is held)")
        deadline = time.monotonic() + timeout_s
        try:
            while not self.ship_available():
                if time.monotonic() >= deadline:
                    return False
                time.sleep(min(RETRY_EVERY_S, max(0.0, deadline - time.monotonic())))
            return True
        finally:
            self.release()

    # -- shipping --------------------------------------------------------------------------------------------
    def ship_available(self) -> bool:
        """Ship batches until the spool is shipped out (True) or the server is unreachable (False)."""
        while True:
            cursor = self.spool.cursor()
            records, end = self.spool.pending(BATCH_RECORDS)
            if not records:
                return True
            batch, end = _cut(records, end)
            try:
                self._check()
                # Durable before sending: if this process dies mid-send, the next shipper checks the server.
                self.spool.set_cursor(Cursor(cursor.offset, cursor.run_id, max(cursor.inflight_end, end)))
                run_id = self._send(batch, cursor)
            except Offline as e:
                self._status(False, str(e))
                return False
            except Refused as e:  # the server is up and refuses this batch: never let it block the rest
                self.announce(f"tracking: the server refused {len(batch)} record(s) of run {cursor.run_id} "
                              f"({e}); passed over")
                run_id = cursor.run_id
            self.spool.set_cursor(Cursor(end, run_id, 0))
            self.shipped += len(batch)
            self._status(True)

    def _check(self) -> None:
        try:
            check_reachable(self.spool.uri, timeout_s=2.0)
        except TrackingError as e:
            raise Offline(str(e)) from None

    def _status(self, online: bool, why: str = "") -> None:
        if online == self.online:
            return
        self.online = online
        if online:
            self.announce(f"tracking is back at {self.spool.uri}: shipping the records kept meanwhile")
        else:
            self.announce(f"tracking is offline ({why.split(';')[0]}); records are kept in {self.spool.dir} "
                          f"and shipped when it is back (training does not wait)")

    def _send(self, batch: list[tuple[int, dict[str, Any]]], cursor: Cursor) -> str:
        """Send one batch to the cursor's run; the run id later records go to."""
        try:
            return _send(self.client, self.spool, batch, cursor)
        except MlflowException as e:  # a refusal (4xx), or the server failing or gone (after MLflow's retries)
            status = e.get_http_status_code()
            if status < 500:
                raise Refused(str(e).splitlines()[0][:200]) from None
            raise Offline(f"{self.spool.uri}: {str(e).splitlines()[0][:200]}") from None
        except OSError as e:
            raise Offline(f"{self.spool.uri}: {e}") from None


def _cut(records: list[tuple[int, dict[str, Any]]], end: int) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """The next batch: the leading run of metric/tag/param records, or one record of another kind alone;
    and the offset after it."""
    if records[0][1]["kind"] not in ("metric", "tag", "param"):
        return records[:1], records[1][0] if len(records) > 1 else end
    for i, (pos, rec) in enumerate(records):
        if rec["kind"] not in ("metric", "tag", "param"):
            return records[:i], pos
    return records, end


def _send(client: MlflowClient, spool: Spool, batch: list[tuple[int, dict[str, Any]]], cursor: Cursor) -> str:
    run_id = cursor.run_id
    first = batch[0][1]
    if first["kind"] == "artifact":
        path = str(spool.dir / first["path"])
        if first.get("dir"):
            client.log_artifacts(run_id, path, first.get("artifact_path"))
        else:
            client.log_artifact(run_id, path, first.get("artifact_path"))
        return run_id
    if first["kind"] == "attempt":
        from mdm.platform.tracking.attempts import begin_attempt

        return begin_attempt(client, run_id, first["kept_through"])
    if first["kind"] == "end":
        from mdm.platform.tracking.attempts import current_run

        client.set_terminated(current_run(client, run_id), status=first["status"])
        return run_id
    recs = [r for pos, r in batch if not (r["kind"] == "metric" and pos < cursor.inflight_end)]
    recs += _not_on_server(client, run_id, [r for pos, r in batch if r["kind"] == "metric"
                                            and pos < cursor.inflight_end])
    metrics = [Metric(r["key"], r["value"], r["ts"], r["step"]) for r in recs if r["kind"] == "metric"]
    tags = [RunTag(r["key"], r["value"]) for r in recs if r["kind"] == "tag"]
    params = [Param(r["key"], r["value"]) for r in recs if r["kind"] == "param"]
    for i in range(0, max(len(tags), len(params)), 100):  # MLflow's per-call limits on tags and params
        if tags[i:i + 100] or params[i:i + 100]:
            client.log_batch(run_id, tags=tags[i:i + 100], params=params[i:i + 100])
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    return run_id


def _not_on_server(client: MlflowClient, run_id: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of metric `records` that may have reached the server already, those it does not hold ((key, step))."""
    held: set[tuple[str, int]] = set()
    for key in {r["key"] for r in records}:
        held.update((key, m.step) for m in client.get_metric_history(run_id, key))
    return [r for r in records if (r["key"], r["step"]) not in held]
