"""The processed data a run trained on, logged as an MLflow dataset input (name, digest, source, profile).

    ds = describe_dataset("data/arith/train.jsonl", name="arithmetic-train", rows=840)
    log_dataset(client, run_id, ds, context="train")      # shows under the run's "Datasets used"

The digest is a SHA-256 of the files' bytes (a directory: its *.jsonl/*.json files in name order; a
comma-separated list: each in order), so two runs that trained on the same bytes show the same digest,
whatever the path. Above `MAX_HASH_BYTES` in all it hashes names, sizes and modification times instead
(prefix `stat-`), so a multi-GB corpus does not cost a second full read at every start. Computed once per sweep by the driver and passed to every trial; a URI (s3://...) is
recorded with its address and no digest (reading it back only to hash it is not worth a download).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHUNK = 1 << 20
MAX_HASH_BYTES = 1 << 30


@dataclass(frozen=True)
class DatasetRecord:
    """What MLflow shows for a dataset input."""

    name: str
    source: str
    digest: str
    profile: Optional[str] = None


def _files(spec: str) -> list[Path]:
    out: list[Path] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        p = Path(part)
        out += sorted(q for q in p.iterdir() if q.suffix in (".jsonl", ".json")) if p.is_dir() else [p]
    return out


def file_digest(spec: str) -> str:
    """SHA-256 (first 16 hex digits) of the bytes of the files `spec` names (see the module docstring)."""
    h = hashlib.sha256()
    files = _files(spec)
    if sum(f.stat().st_size for f in files) > MAX_HASH_BYTES:
        for f in files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return "stat-" + h.hexdigest()[:11]
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()[:16]


def describe_dataset(path: str, name: Optional[str] = None, **profile: object) -> DatasetRecord:
    """A DatasetRecord for processed data at `path`; `profile` (e.g. rows=840) is shown beside it."""
    local = "://" not in path
    stem = os.path.splitext(os.path.basename(path.split(",")[0].rstrip("/")))[0]
    return DatasetRecord(name=name or stem, source=os.path.abspath(path) if local else path,
                         digest=file_digest(path) if local else "", profile=json.dumps(profile) if profile else None)


def log_dataset(client: MlflowClient, run_id: str, record: DatasetRecord, context: str = "train") -> None:
    """Log `record` as an input of `run_id` with MLflow's context tag (train, eval, ...)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source_type = "local" if record.source.startswith("/") else record.source.split("://", 1)[0]
    ds = Dataset(name=record.name, digest=record.digest or "none", source_type=source_type,
                 source=json.dumps({"uri": record.source}), profile=record.profile)
    client.log_inputs(run_id, datasets=[DatasetInput(ds, tags=[InputTag("mlflow.data.context", context)])])
