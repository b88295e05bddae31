"""The tracking spool: a run's metrics, tags, params and artifacts, kept on the node's disk until shipped.

    spool = Spool.create("outputs/gsm8k-ab12cd34/tracking_spool", uri, run_id)   # or Spool.open(dir)
    spool.append([metric("train/loss", 1.2, step=10), tag("mdm.init_digest", "3f2a")])  # one fsync'd write
    records, end = spool.pending(limit=500)       # what is not shipped yet, in order, and where it ends
    spool.commit(end, run_id)                     # shipped up to there (the cursor, durable)

Layout of the directory: `records.jsonl` (append-only, one record a line, written and fsync'd per call, so a
record is either wholly there or a torn last line that is skipped), `meta.json` (the tracking URI, the run id
the driver opened, the run name), `cursor.json` (the byte offset shipped up to, the run the next records go
to -- an attempt may move them to a fresh run, attempts.py -- and `inflight_end`: the end of a batch being
sent, so the next shipper, after a crash mid-send, checks the server for what of it arrived), `artifacts/N/`
(a copy, hard-linked where the filesystem allows, of each logged artifact: the original may be a temporary
file). The records' kinds: metric (key, value, step, ts), tag, param (key, value), artifact (path,
artifact_path), attempt (kept_through: attempts.begin_attempt, in order with the metrics), end (status).
Several processes may append (a restarted worker, the driver's end); one ships at a time (shipper.py).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from mdm.platform.storage import StorageError, write_failure

RECORDS, META, CURSOR, ARTIFACTS = "records.jsonl", "meta.json", "cursor.json", "artifacts"
SPOOL_DIR = "tracking_spool"  # under a run's output directory


def metric(key: str, value: float, step: int, ts: Optional[int] = None) -> dict[str, Any]:
    return {"kind": "metric", "key": key, "value": float(value), "step": int(step),
            "ts": int(time.time() * 1000) if ts is None else ts}


def tag(key: str, value: str) -> dict[str, Any]:
    return {"kind": "tag", "key": key, "value": str(value)}


def param(key: str, value: str) -> dict[str, Any]:
    return {"kind": "param", "key": key, "value": str(value)}


def spool_path(output_root: str, run_name: str) -> str:
    """A run's spool on the local disk: `<output root>/<run>/tracking_spool`, or `~/.cache/mdm/runs/<run>/...`
    when the outputs go to an object store (`s3://...`: a spool must be a local file)."""
    root = os.path.expanduser("~/.cache/mdm/runs") if "://" in output_root else output_root
    return os.path.join(root, run_name, SPOOL_DIR)


def find_spool(path: str) -> Path:
    """The spool directory of `path`: a spool itself, or a run directory holding `tracking_spool/`."""
    p = Path(path)
    for cand in (p, p / SPOOL_DIR):
        if (cand / META).is_file():
            return cand
    raise FileNotFoundError(f"no tracking spool at {path} (looked for {p / META} and {p / SPOOL_DIR / META})")


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomically replace `path` with `obj` (write, fsync, rename)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@dataclass
class Cursor:
    """Shipped up to byte `offset`; records from there go to `run_id`; `inflight_end` > offset: a batch up to
    there was being sent when its shipper stopped (some of it may be on the server)."""

    offset: int
    run_id: str
    inflight_end: int = 0


class Spool:
    """One run's spool directory (see the module docstring)."""

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.dir, self.meta = directory, meta
        self.uri: str = meta["uri"]
        self.run_id: str = meta["run_id"]
        self.records_path = directory / RECORDS

    @classmethod
    def create(cls, directory: str, uri: str, run_id: str, run_name: str = "") -> "Spool":
        """Open the spool at `directory`, making it for (`uri`, `run_id`) if new. An existing spool of another
        run (a run of the same name restarted afresh in MLflow) is shipped first by `mdm tracking sync`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if (d / META).is_file():
            spool = cls.open(directory)
            if (spool.uri, spool.run_id) == (uri, run_id) or not spool.pending(1)[0]:
                if (spool.uri, spool.run_id) != (uri, run_id):  # shipped out: reuse it for the new run
                    shutil.rmtree(d / ARTIFACTS, ignore_errors=True)
                    _write_json(d / META, {"uri": uri, "run_id": run_id, "run_name": run_name})
                    _write_json(d / CURSOR, {"offset": spool.size(), "run_id": run_id, "inflight_end": 0})
                    return cls.open(directory)
                return spool
            raise RuntimeError(f"the tracking spool {d} holds unshipped records of run {spool.run_id} at "
                               f"{spool.uri}: ship them with `mdm tracking sync {d.parent}`, or remove {d}")
        _write_json(d / META, {"uri": uri, "run_id": run_id, "run_name": run_name})
        _write_json(d / CURSOR, {"offset": 0, "run_id": run_id, "inflight_end": 0})
        (d / RECORDS).touch()
        return cls(d, json.loads((d / META).read_text()))

    @classmethod
    def open(cls, directory: str) -> "Spool":
        d = find_spool(directory)
        return cls(d, json.loads((d / META).read_text()))

    def size(self) -> int:
        return self.records_path.stat().st_size if self.records_path.exists() else 0

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append `records` in one write, then fsync: they survive this process (and the node's power, as far
        as the disk keeps its promise)."""
        if not records:
            return
        data = "".join(json.dumps(r, allow_nan=True) + "\n" for r in records).encode()
        fd = os.open(self.records_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line from a process that died
                data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        except OSError as e:  # a full disk: one line (storage.StorageError); a torn line is skipped when read
            if e.errno != errno.ENOSPC:
                raise
            raise StorageError(f"tracking spool not written: {write_failure(e, str(self.records_path), len(data))}; "
                               f"what it holds is kept (ship it with: mdm tracking sync {self.dir}) and the "
                               f"checkpoints are not affected: free space, then the same command resumes") from e
        finally:
            os.close(fd)

    def add_artifact(self, path: str, artifact_path: Optional[str] = None) -> dict[str, Any]:
        """Keep a copy of the file or directory `path` in the spool (hard links where possible); its record."""
        root = self.dir / ARTIFACTS
        root.mkdir(exist_ok=True)
        n = len(list(root.iterdir()))
        while (root / str(n)).exists():
            n += 1
        dst = root / str(n) / os.path.basename(os.path.normpath(path))
        dst.parent.mkdir(parents=True)
        if os.path.isdir(path):
            shutil.copytree(path, dst, copy_function=_link_or_copy)
        else:
            _link_or_copy(path, str(dst))
        return {"kind": "artifact", "path": str(dst.relative_to(self.dir)), "dir": os.path.isdir(path),
                "artifact_path": artifact_path}

    def cursor(self) -> Cursor:
        c = json.loads((self.dir / CURSOR).read_text())
        return Cursor(int(c["offset"]), c["run_id"], int(c.get("inflight_end", 0)))

    def set_cursor(self, cursor: Cursor) -> None:
        _write_json(self.dir / CURSOR, {"offset": cursor.offset, "run_id": cursor.run_id,
                                        "inflight_end": cursor.inflight_end})

    def pending(self, limit: int, offset: Optional[int] = None) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """Up to `limit` complete records from `offset` (default: the cursor) as (start offset, record), and the
        offset after the last; a line that is not JSON (torn by a crash) is passed over."""
        start = self.cursor().offset if offset is None else offset
        out: list[tuple[int, dict[str, Any]]] = []
        pos = start
        with open(self.records_path, "rb") as f:
            f.seek(start)
            while len(out) < limit:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break  # nothing more, or a line still being written
                try:
                    out.append((pos, json.loads(line)))
                except ValueError:
                    pass
                pos += len(line)
        return out, pos

    def backlog(self) -> int:
        """Bytes not shipped yet."""
        return max(0, self.size() - self.cursor().offset)
