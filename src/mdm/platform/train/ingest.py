"""Processed JSONL -> validated, split, padded Ray Datasets for the Train workers.

    data = build_datasets(cfg.data, train_path="data/train/", seed=42, train_ratio=0.95, max_len=1024,
                          batch_size=8, pad_id=1, vocab_size=1027)   # DataError on a bad row
    data.n_train, data.n_bad, data.n_overlong
    ds = data.datasets()
    ds["train"]    # one row per micro-batch: input_ids/labels/attention_mask [B, L], n_tokens
    ds["eval"]     # the held-out split, same layout
    ds["prepare"]  # training rows in file order, for P-POTS estimation (not split across workers)

Paths: a file, a directory (its *.jsonl/*.json files) or a list of them (`train.train_data_path` may hold
several, comma-separated), local or URIs (`s3://`, `gs://`: read by Ray Data's tasks on whichever node).
Lines are read with their file and line number (pyarrow's JSON reader behind `ray.data.read_json` drops both,
and one malformed line aborts its whole file), parsed and checked with the processed-JSONL schema's
`validate_row` (`data.schema`, a `RowSchema` from the `schemas` registry: the tasks' `prompt_completion` by
default, so the platform reaches task code only through a registry). A driver-side validation pass runs before any worker starts: a bad row
(invalid UTF-8, invalid JSON, or failing the schema) raises DataError naming file and line unless `data.bad_rows: skip`, then counted.
Rows longer than `train.max_len` are truncated or dropped (`data.overlong`), and counted.

The split is by a hash of (seed, file name, line): stable, streaming, no materialisation. The training rows
are shuffled once by `random_shuffle(seed)`; padding and labels (the schema's `collate`) happen in
`map_batches`, one output row per micro-batch, so the worker only moves ready tensors. A worker iterates
its shard once per epoch, reordering micro-batches with a local shuffle seeded by seed + epoch
(`epoch_batches`). (Concatenating per-epoch `random_shuffle(seed + e)` pipelines with `union` runs their
reads concurrently and deadlocks a 2-CPU Ray.) With order preserved (see `ingest_options`) the stream, its
split across workers, and hence the data position after a resume are deterministic.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import ray
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.data.datasource import FileBasedDatasource

from mdm.platform.train.data_config import DataConfig, RowSchema, row_schema

LINES_PER_BLOCK = 4096
BLOCK_BYTES = 64 << 20  # a read block of processed JSONL (`read_blocks`)
MAX_ERRORS_SHOWN = 5


class DataError(ValueError):
    """Invalid processed data; the message names file and line of the first bad rows."""


def _decode(raw: bytes) -> tuple[str, str]:
    """(text, "") for a UTF-8 line, ("", what is wrong) otherwise: one bad byte fails its line, not its file."""
    try:
        return raw.decode("utf-8"), ""
    except UnicodeDecodeError as e:
        return "", f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"


class _JsonlLines(FileBasedDatasource):
    """Raw lines of JSONL files with their path, 1-based line number and decoding error (blank lines skipped).

    Lines are split on bytes (\\n, \\r\\n, \\r) and decoded one by one, so line numbers are an editor's."""

    _FILE_EXTENSIONS = ["jsonl", "json"]

    def _read_stream(self, f: "pa.NativeFile", path: str) -> Iterator[pa.Table]:
        lines = f.readall().splitlines()
        for start in range(0, len(lines), LINES_PER_BLOCK):
            chunk = [(start + i + 1, *_decode(t)) for i, t in enumerate(lines[start:start + LINES_PER_BLOCK])
                     if t.strip()]
            if chunk:
                yield pa.table({"path": [path] * len(chunk), "line": [n for n, _, _ in chunk],
                                "text": [t for _, t, _ in chunk], "decode_error": [e for _, _, e in chunk]})


def resolve_paths(spec: str | Sequence[str]) -> list[str]:
    """Files/directories from a path, a comma-separated list, or a list; checked to exist. Local paths are
    made absolute; URIs (`s3://`, `gs://`) stay as they are: Ray Data's read tasks open them on any node."""
    from mdm.platform import storage

    items = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else list(spec)
    for p in items:
        try:
            found = storage.exists(p)
        except OSError as e:  # no such bucket, no credentials, unreachable endpoint
            raise DataError(f"processed data path {p} cannot be checked: {e}") from None
        if not found:
            raise DataError(f"processed data path {p} does not exist (run `mdm preprocess` first)")
    return [p if storage.is_uri(p) else os.path.abspath(p) for p in items if p]


def _in_train(seed: int, path: str, line: int, train_ratio: float) -> bool:
    digest = hashlib.blake2b(f"{seed}:{os.path.basename(path)}:{line}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64 < train_ratio


def _parse(batch: pa.Table, *, schema: RowSchema, vocab_size: Optional[int], max_len: int, overlong: str,
           seed: int, train_ratio: float) -> pa.Table:
    """Parse and validate lines; truncate overlong rows when asked; tag each row train/eval."""
    validate = schema.validate_row
    out: dict[str, list] = {k: [] for k in ("path", "line", "input_ids", "prompt_length", "error", "overlong",
                                            "train")}
    columns = ("path", "line", "text", "decode_error")
    for path, line, text, bad_bytes in zip(*(batch.column(c).to_pylist() for c in columns)):
        ids, pl = [], 0
        try:
            err = bad_bytes or None
            if err is None:
                row = json.loads(text)
                err = validate(row, vocab_size)
        except json.JSONDecodeError as e:
            err = f"not valid JSON ({e.msg} at column {e.colno})"
        if err is None:
            ids, pl = [int(t) for t in row["input_ids"]], int(row["prompt_length"])
        long_ = len(ids) > max_len
        if long_ and overlong == "truncate":
            ids, pl = ids[:max_len], min(pl, max_len)
        for k, v in (("path", path), ("line", line), ("input_ids", ids), ("prompt_length", pl),
                     ("error", err or ""), ("overlong", long_), ("train", _in_train(seed, path, line, train_ratio))):
            out[k].append(v)
    return pa.table(out, schema=pa.schema([("path", pa.string()), ("line", pa.int64()),
                                           ("input_ids", pa.list_(pa.int64())), ("prompt_length", pa.int64()),
                                           ("error", pa.string()), ("overlong", pa.bool_()), ("train", pa.bool_())]))


def _summarize(batch: pa.Table, *, overlong: str, split: bool) -> pa.Table:
    """One row of counts (and the first few errors) per batch of parsed rows."""
    err, long_, train = (batch.column(c).to_pylist() for c in ("error", "overlong", "train"))
    paths, lines = batch.column("path").to_pylist(), batch.column("line").to_pylist()
    ok = [not e and not (lo and overlong == "drop") for e, lo in zip(err, long_)]
    bad = [(p, n, e) for p, n, e in zip(paths, lines, err) if e][:MAX_ERRORS_SHOWN]
    return pa.table({"n": [len(err)], "bad": [sum(1 for e in err if e)], "overlong": [sum(long_)],
                     "train": [sum(1 for o, t in zip(ok, train) if o and (t or not split))],
                     "eval": [sum(1 for o, t in zip(ok, train) if o and split and not t)],
                     "errors": [json.dumps(bad)]})


def _select(batch: pa.Table, *, want_train: Optional[bool], overlong: str) -> pa.Table:
    """Keep the valid rows of one split (want_train None: all valid rows)."""
    import pyarrow.compute as pc

    mask = pc.equal(batch.column("error"), "")
    if overlong == "drop":
        mask = pc.and_(mask, pc.invert(batch.column("overlong")))
    if want_train is not None:
        train = batch.column("train")
        mask = pc.and_(mask, train if want_train else pc.invert(train))
    return batch.filter(mask).select(["input_ids", "prompt_length"])


def _collate(batch: dict[str, np.ndarray], *, schema: RowSchema, pad_id: int) -> dict[str, np.ndarray]:
    """Rows -> one micro-batch row: int64 input_ids/labels/attention_mask [1, B, L], n_tokens [1]."""
    out = schema.collate(batch, pad_id=pad_id)
    mb = {k: v[None] for k, v in out.items()}
    mb["n_tokens"] = np.array([int(out["attention_mask"].sum())], dtype=np.int64)
    return mb


class MicroBatchCollate(NumpyBatchCollateFn):
    """`iter_torch_batches(batch_size=1, collate_fn=MicroBatchCollate())`: the micro-batch row as [B, L]
    int64 tensors (plus scalar `n_tokens`); no padding work is left for the worker."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        return {k: torch.from_numpy(np.array(v[0], dtype=np.int64)) for k, v in batch.items()}


def ingest_options() -> Any:
    """Ray Data execution options for the Train ingest: order preserved, so shards are reproducible.

    What `ray.train.DataConfig.default_ingest_options()` builds from the current DataContext, less its
    deprecated `exclude_resources` argument (Ray 2.60 warns about its own default on every run)."""
    from ray.data import DataContext, ExecutionOptions

    current = DataContext.get_current().execution_options
    return ExecutionOptions(resource_limits=current.resource_limits, preserve_order=True,
                            verbose_progress=current.verbose_progress)


@dataclass
class Ingest:
    """Validated data: counts, and `datasets()` building the lazy train/eval/prepare datasets."""

    n_rows: int
    n_train: int
    n_eval: int
    n_bad: int
    n_overlong: int
    errors: list[str]
    train_rows: Any
    eval_rows: Any
    collate: Any
    batch_size: int
    seed: int

    def summary(self) -> str:
        return (f"{self.n_rows} rows: {self.n_train} train, {self.n_eval} eval, {self.n_bad} invalid skipped, "
                f"{self.n_overlong} longer than max_len")

    def datasets(self) -> dict[str, Any]:
        """{"train": shuffled micro-batches, "eval" (when any), "prepare": train rows in file order}."""
        def batched(rows: ray.data.Dataset) -> ray.data.Dataset:
            return rows.map_batches(self.collate, batch_size=self.batch_size, batch_format="numpy")

        out = {"train": batched(self.train_rows.random_shuffle(seed=self.seed)), "prepare": batched(self.train_rows)}
        if self.n_eval:
            out["eval"] = batched(self.eval_rows)
        return out


EPOCH_SHUFFLE_BUFFER = 32  # micro-batches


def shard_batches(shard: ray.data.DataIterator, prefetch: int = 4, shuffle_seed: Optional[int] = None) -> Any:
    """A worker's shard as [B, L] micro-batch tensors, in stream order or, with `shuffle_seed`, locally shuffled."""
    shuffle = {} if shuffle_seed is None else {"local_shuffle_buffer_size": EPOCH_SHUFFLE_BUFFER,
                                               "local_shuffle_seed": shuffle_seed}
    return shard.iter_torch_batches(batch_size=1, collate_fn=MicroBatchCollate(), prefetch_batches=prefetch,
                                    **shuffle)


def epoch_batches(shard: ray.data.DataIterator, epoch: int, seed: int, prefetch: int = 4) -> Any:
    """One epoch of a worker's shard as [B, L] tensors, micro-batch order shuffled by (seed, epoch)."""
    return shard_batches(shard, prefetch, shuffle_seed=seed * 1000 + epoch)


def read_blocks(paths: list[str]) -> int:
    """How many blocks the read makes: one per file, more for big files (BLOCK_BYTES each), from the data alone.

    Ray Data's default depends on the cluster's CPUs at planning time, and `random_shuffle(seed)` permutes
    differently for a different block count: a run resumed on fewer nodes would see other data."""
    import pyarrow.fs as pafs

    from mdm.platform import storage

    files, size = 0, 0
    for p in paths:
        fs, path = storage.resolve(p)
        info = fs.get_file_info(path)
        found = (fs.get_file_info(pafs.FileSelector(path, recursive=True)) if info.type == pafs.FileType.Directory
                 else [info])
        for f in found:
            if f.type == pafs.FileType.File and f.path.endswith(tuple(f".{e}" for e in _JsonlLines._FILE_EXTENSIONS)):
                files, size = files + 1, size + (f.size or 0)
    return max(1, files, math.ceil(size / BLOCK_BYTES))


def _read(paths: list[str], parse: Callable[[pa.Table], pa.Table]) -> ray.data.Dataset:
    ds = ray.data.read_datasource(_JsonlLines(paths), override_num_blocks=read_blocks(paths))
    return ds.map_batches(parse, batch_format="pyarrow", batch_size=LINES_PER_BLOCK)


def build_datasets(data_cfg: DataConfig, *, train_path: str | Sequence[str], seed: int, train_ratio: float,
                   max_len: int, batch_size: int, pad_id: int, vocab_size: Optional[int]) -> Ingest:
    """Validate the processed data (a driver-side pass over it) and describe the lazy datasets."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # the driver shows one training bar (progress.py), not one per operator
    separate_eval = data_cfg.eval_data_path is not None
    schema = row_schema(data_cfg)
    common = dict(schema=schema, vocab_size=vocab_size, max_len=max_len,
                  overlong=data_cfg.overlong, seed=seed)
    train_src = _read(resolve_paths(train_path), partial(_parse, train_ratio=1.0 if separate_eval else train_ratio,
                                                         **common))
    eval_src = _read(resolve_paths(data_cfg.eval_data_path), partial(_parse, train_ratio=0.0, **common)) \
        if separate_eval else None

    counts = {"n": 0, "bad": 0, "overlong": 0, "train": 0, "eval": 0}
    errors: list[tuple[str, int, str]] = []
    for src, split in ((train_src, not separate_eval), (eval_src, True)):
        if src is None:
            continue
        for row in src.map_batches(partial(_summarize, overlong=data_cfg.overlong, split=split),
                                   batch_format="pyarrow").take_all():
            for k in counts:
                counts[k] += int(row[k])
            errors += [tuple(e) for e in json.loads(row["errors"])]
    errors.sort()
    shown = [f"{p}:{n}: {e}" for p, n, e in errors[:MAX_ERRORS_SHOWN]]
    if counts["bad"] and data_cfg.bad_rows == "error":
        raise DataError(f"{counts['bad']} invalid processed row(s); first: " + "; ".join(shown) +
                        " (fix the data, or set data.bad_rows: skip to drop and count them)")
    if counts["train"] == 0:
        raise DataError(f"no valid training rows in {train_path} ({counts['n']} read, {counts['bad']} invalid)")

    select = partial(_select, overlong=data_cfg.overlong)
    train_rows = train_src.map_batches(partial(select, want_train=True), batch_format="pyarrow")
    eval_rows = (eval_src.map_batches(partial(select, want_train=None), batch_format="pyarrow") if separate_eval
                 else train_src.map_batches(partial(select, want_train=False), batch_format="pyarrow"))
    return Ingest(counts["n"], counts["train"], counts["eval"], counts["bad"], counts["overlong"], shown,
                  train_rows, eval_rows, partial(_collate, schema=schema, pad_id=pad_id),
                  batch_size, seed)
