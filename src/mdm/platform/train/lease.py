"""A lease on a run's name: one live driver per run; the lease of a dead driver is taken over with a note.

    lease = RunLease.acquire(storage_root(cfg), "gsm8k-ab12cd34")   # LeaseError naming the live holder
    try: ... train ...
    finally: lease.release()

Two drivers of one run (two identical commands, or configs that differ only in keys left out of the run
name) would write one set of checkpoints, one MLflow run and one export at the same time. The lease is the
file `<ray.storage_path>/<run>/.mdm_lease.json` (the run's own storage directory, so every node of a
cluster sees it): holder host, pid, the pid's start time, the command, when it started and a heartbeat,
rewritten every HEARTBEAT_S by a daemon thread while the driver lives and deleted when it ends.

A lease is stale, and is taken over with a one-line note on stderr, when its holder ran on this host and its
process is gone (or the pid now belongs to another process), or when its heartbeat is older than
STALE_AFTER_S (a holder on another machine that died). Otherwise the second driver gets LeaseError naming
the first. On a local disk the lease is created with O_EXCL; on an object store (s3://, gs://), which has no
create-if-absent through pyarrow, it is written, re-read after a short pause and kept only if it is still
ours (two starts within that pause can still both pass).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow.fs as pafs

from mdm.platform.storage import read_file

LEASE_FILE = ".mdm_lease.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 120.0
SETTLE_S = 1.0  # object stores: wait this long before re-reading a lease we wrote


class LeaseError(RuntimeError):
    """Another live driver holds the run; the message names it and says what to do."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _pid_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder_gone(h: dict[str, Any], now: float) -> Optional[str]:
    """Why the holder `h` is no longer running (None when it may be)."""
    age = now - float(h.get("heartbeat", 0))
    if h.get("host") == socket.gethostname():
        pid = int(h.get("pid", -1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"process {pid} no longer exists"
        except PermissionError:
            pass  # alive, another user's
        start = _pid_start(pid)
        if start is not None and h.get("pid_start") is not None and start != h.get("pid_start"):
            return f"pid {pid} now belongs to another process"
        return None
    if age > STALE_AFTER_S:
        return f"no heartbeat for {age:.0f}s"
    return None


def describe(h: dict[str, Any], now: Optional[float] = None) -> str:
    age = (now or time.time()) - float(h.get("heartbeat", 0))
    return (f"{h.get('host')} pid {h.get('pid')} (started {h.get('started')}, heartbeat {age:.0f}s ago, "
            f"command: {h.get('command')})")


@dataclass
class RunLease:
    """A held lease; `release()` stops the heartbeat and deletes the file (if still ours)."""

    fs: Any
    path: str
    run_name: str
    holder: dict[str, Any]
    note: Optional[str] = None
    created_dir: bool = False  # the run's directory did not exist: removed again on release if still empty
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # a beat never rewrites a released lease

    @classmethod
    def acquire(cls, storage_root: str, run_name: str) -> "RunLease":
        fs, root = pafs.FileSystem.from_uri(storage_root)
        directory = f"{root.rstrip('/')}/{run_name}"
        created = fs.get_file_info(directory).type == pafs.FileType.NotFound
        fs.create_dir(directory, recursive=True)
        now = time.time()
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)), "heartbeat": now,
                  "command": " ".join(sys.argv)[:300], "token": uuid.uuid4().hex}
        lease = cls(fs, f"{directory}/{LEASE_FILE}", run_name, holder, created_dir=created)
        where = storage_root.rstrip("/") + f"/{run_name}/{LEASE_FILE}"
        for _ in range(3):  # a lease deleted or taken over between our read and write: look again
            old = lease._read()
            if old is not None and old.get("token") != holder["token"]:
                why = _holder_gone(old, time.time())
                if why is None:
                    raise LeaseError(f"run {run_name} is already being trained by {describe(old)}; lease {where}. "
                                     f"Wait for it or stop it, or give this run another name (run_name: ...)")
                lease.note = f"mdm: taking over the lease of run {run_name} from {describe(old)}: {why}"
            if lease._claim(replace=old is not None):
                break
        else:
            raise LeaseError(f"run {run_name}: another driver is claiming its lease {where} at the same time")
        if lease.note:
            print(lease.note, file=sys.stderr)
        threading.Thread(target=lease._beat, name=f"mdm-lease-{run_name}", daemon=True).start()
        return lease

    def _read(self) -> Optional[dict[str, Any]]:
        try:
            return json.loads(read_file(self.fs, self.path).decode())
        except FileNotFoundError:
            return None
        except (ValueError, IsADirectoryError):  # a torn or foreign file: a lease of an unknown, dead holder
            return {"host": "?", "pid": -1, "heartbeat": 0}
        # Any other OSError is the storage failing (after the S3 client's retries): the caller says so.

    def _write(self) -> None:
        data = json.dumps(self.holder).encode()
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = f"{self.path}.{self.holder['token']}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)  # readers never see a half-written lease
        else:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)

    def _claim(self, replace: bool) -> bool:
        """Write our lease; True when it is ours afterwards."""
        if isinstance(self.fs, pafs.LocalFileSystem) and not replace:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(self.holder).encode())
            return True
        self._write()
        time.sleep(SETTLE_S if not isinstance(self.fs, pafs.LocalFileSystem) else 0.05)
        now = self._read()
        return now is not None and now.get("token") == self.holder["token"]

    def _beat(self) -> None:
        unreachable = False
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    current = self._read()
                    if current is None or current.get("token") != self.holder["token"]:
                        print(f"mdm: warning: the lease of run {self.run_name} was taken over by "
                              f"{describe(current) if current else 'someone who deleted it'}", file=sys.stderr)
                        return
                    self.holder["heartbeat"] = time.time()
                    self._write()
                except OSError as e:  # storage unreachable: training goes on; say so once, beat again later
                    if not unreachable:
                        print(f"mdm: warning: could not renew the lease {self.path}: {_first_line(e)}; "
                              f"retrying every {HEARTBEAT_S:.0f} s", file=sys.stderr)
                    unreachable = True
                    continue
                if unreachable:
                    print(f"mdm: the lease {self.path} is renewed again", file=sys.stderr)
                unreachable = False

    def release(self) -> None:
        """Delete the lease (and the run's directory if the run left nothing there). Storage unreachable: one
        warning, never an error that would hide how the run ended; the lease then goes stale on its own."""
        with self._lock:
            self._stop.set()
            try:
                self._delete()
            except OSError as e:
                print(f"mdm: warning: could not release the lease {self.path}: {_first_line(e)}; the next run of "
                      f"{self.run_name} takes it over once its heartbeat is {STALE_AFTER_S:.0f} s old",
                      file=sys.stderr)

    def _delete(self) -> None:
        current = self._read()
        if current is not None and current.get("token") == self.holder["token"]:
            try:
                self.fs.delete_file(self.path)
            except FileNotFoundError:
                pass
        directory = self.path.rsplit("/", 1)[0]
        if self.created_dir and not self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True)):
            self.fs.delete_dir(directory)  # a run that failed before writing anything leaves no trace
