"""The processed-JSONL schema that training reads: one `{"input_ids": [...], "prompt_length": N}` a line.

    err = validate_row(row, vocab_size=32000)           # None, or what is wrong
    reader = read_processed("data/train/gsm8k.jsonl", vocab_size=32000, bad_rows="skip")
    rows = list(reader); reader.skipped                 # count of invalid rows dropped (also logged)
    batch = collate(rows, pad_id=tok.pad_token_id, max_len=1024)
    batch["input_ids"], batch["labels"], batch["attention_mask"]   # int64 [B, L]

The labels rule is the seed's: `labels = input_ids` with -100 on prompt positions and on padding, so the loss
only sees the response (which ends with EOS). `collate` also accepts a Ray Data column batch
(`{"input_ids": array of lists, "prompt_length": array}`) so it can run inside `map_batches`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from mdm.platform.registry import get_registry
from mdm.platform.train.data_config import SCHEMAS, RowSchema
from mdm.tasks.jsonl import JsonlError, iter_jsonl

IGNORE_INDEX = -100
log = logging.getLogger(__name__)


def validate_row(row: Mapping[str, Any], vocab_size: Optional[int] = None) -> Optional[str]:
    """What is wrong with a processed row, or None when it is valid.

    Valid: keys `input_ids` and `prompt_length`; `input_ids` a non-empty list of ints in [0, vocab_size)
    (upper bound only when `vocab_size` is given); `prompt_length` an int with 0 <= it < len(input_ids)."""
    if not isinstance(row, Mapping):
        return f"expected an object, got {type(row).__name__}"
    missing = [k for k in ("input_ids", "prompt_length") if k not in row]
    if missing:
        return f"missing key(s) {', '.join(missing)} (has {', '.join(map(str, row)) or 'none'})"
    ids, pl = row["input_ids"], row["prompt_length"]
    if isinstance(ids, np.ndarray):
        ids = ids.tolist()
    if not isinstance(ids, (list, tuple)) or len(ids) == 0:
        return f"input_ids must be a non-empty list of ints, got {_short(ids)}"
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            return f"input_ids[{i}] is {_short(t)}, not an int"
        if t < 0 or (vocab_size is not None and t >= vocab_size):
            bound = f"[0, {vocab_size})" if vocab_size is not None else ">= 0"
            return f"input_ids[{i}] = {t} is out of range {bound}"
    if isinstance(pl, bool) or not isinstance(pl, (int, np.integer)):
        return f"prompt_length must be an int, got {_short(pl)}"
    if not 0 <= pl < len(ids):
        return f"prompt_length = {pl} must satisfy 0 <= prompt_length < len(input_ids) = {len(ids)}"
    return None


def _short(v: object) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


class ProcessedDataError(ValueError):
    """An invalid processed row; the message names the file and line."""


class ProcessedReader:
    """Iterable over the valid rows of processed JSONL file(s), streamed line by line.

    `bad_rows="error"` raises ProcessedDataError("path:line: what") on the first invalid row;
    `"skip"` drops invalid rows, counts them in `.skipped` (first few reasons in `.skip_reasons`) and logs
    the count when a pass over the files ends. `.rows` counts the valid rows yielded in the last pass."""

    def __init__(self, paths: Union[str, Path, Sequence[Union[str, Path]]], vocab_size: Optional[int] = None,
                 bad_rows: str = "error") -> None:
        if bad_rows not in ("error", "skip"):
            raise ValueError(f"bad_rows must be 'error' or 'skip', got {bad_rows!r}")
        self.paths = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
        for p in self.paths:
            if not Path(p).is_file():
                raise FileNotFoundError(f"processed data file {p} does not exist (run `mdm preprocess` first)")
        self.vocab_size, self.bad_rows = vocab_size, bad_rows
        self.rows = 0
        self.skipped = 0
        self.skip_reasons: list[str] = []

    def _bad(self, message: str) -> None:
        if self.bad_rows == "error":
            raise ProcessedDataError(message + " (set data.bad_rows=skip to drop invalid rows)")
        self.skipped += 1
        if len(self.skip_reasons) < 10:
            self.skip_reasons.append(message)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.rows, self.skipped, self.skip_reasons = 0, 0, []
        for path in self.paths:
            for lineno, row in iter_jsonl(path, on_error=lambda e: self._bad(str(e))):
                err = validate_row(row, self.vocab_size)
                if err is not None:
                    self._bad(f"{path}:{lineno}: {err}")
                    continue
                self.rows += 1
                yield {"input_ids": list(row["input_ids"]), "prompt_length": int(row["prompt_length"])}
        if self.skipped:
            msg = (f"skipped {self.skipped} invalid row(s) of {self.rows + self.skipped} in "
                   f"{', '.join(self.paths)}; first: {self.skip_reasons[0]}")
            log.warning(msg)
            print(f"warning: {msg}", file=sys.stderr)


def read_processed(path: Union[str, Path, Sequence[Union[str, Path]]], vocab_size: Optional[int] = None,
                   bad_rows: str = "error") -> ProcessedReader:
    """Iterate valid rows `{"input_ids": list[int], "prompt_length": int}` of processed JSONL `path`(s)."""
    return ProcessedReader(path, vocab_size=vocab_size, bad_rows=bad_rows)


def collate(rows: Union[Sequence[Mapping[str, Any]], Mapping[str, Any]], pad_id: int,
            max_len: Optional[int] = None, pad_to_max_len: bool = False) -> dict[str, np.ndarray]:
    """Pad rows into int64 arrays `input_ids`, `labels`, `attention_mask`, each [B, L].

    L = the longest row, capped at `max_len` (longer rows are truncated); `pad_to_max_len` pads to
    `max_len` exactly (fixed shapes). `labels` = input_ids with IGNORE_INDEX (-100) on the first
    `prompt_length` positions and on padding; `attention_mask` is 1 on real tokens, 0 on padding.
    `rows` is a list of row dicts or a column batch {"input_ids": [B] lists, "prompt_length": [B]}."""
    if isinstance(rows, Mapping):
        ids_col, pl_col = list(rows["input_ids"]), list(rows["prompt_length"])
    else:
        ids_col = [r["input_ids"] for r in rows]
        pl_col = [r["prompt_length"] for r in rows]
    if not ids_col:
        raise ValueError("collate: empty batch")
    if pad_to_max_len and max_len is None:
        raise ValueError("collate: pad_to_max_len needs max_len")
    longest = max(len(x) for x in ids_col)
    length = max_len if pad_to_max_len else (min(longest, max_len) if max_len is not None else longest)
    b = len(ids_col)
    input_ids = np.full((b, length), pad_id, dtype=np.int64)
    labels = np.full((b, length), IGNORE_INDEX, dtype=np.int64)
    attention_mask = np.zeros((b, length), dtype=np.int64)
    for i, (ids, pl) in enumerate(zip(ids_col, pl_col)):
        ids = np.asarray(ids, dtype=np.int64)[:length]
        n = len(ids)
        input_ids[i, :n] = ids
        attention_mask[i, :n] = 1
        start = min(int(pl), n)
        labels[i, start:n] = ids[start:]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


# The default processed-JSONL schema of the platform's ingest (`data.schema: prompt_completion`).
get_registry(SCHEMAS).register("prompt_completion", RowSchema(validate_row=validate_row, collate=collate))
