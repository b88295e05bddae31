"""`data` section: how processed JSONL is read, validated and split (read by `mdm.platform.train.ingest`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from mdm.platform.fields import choice


@dataclass
class DataConfig:
    """`eval_data_path`: a separate held-out processed JSONL; when unset, `train.train_ratio` splits the
    training data with `train.seed`. `bad_rows: skip` drops invalid rows (and reports the count) instead of
    failing; `overlong: truncate|drop` handles rows longer than `train.max_len` (counted either way).
    `tokenizer`: id or path of the tokenizer (None: the one saved with `train.model`). `task_data_dir`: a local
    copy of the task's raw data (e.g. a directory with GSM8K's train.jsonl/test.jsonl), read by `mdm
    preprocess`, `mdm infer`, `mdm train` (to say how to make missing data) and the experiments. `source`:
    where raw data comes from when `task_data_dir` is unset: `auto`, the copy shipped inside mdm (GSM8K; a task
    without one fails at once saying what to download), or `hub`, the Hugging Face Hub through `datasets`.
    Order: task_data_dir > hub (only when asked) > the shipped copy (`mdm.tasks.sources`).
    `schema_module`: the module owning the processed-JSONL schema (its `validate_row(row, vocab_size)` and
    `collate(rows, pad_id)` are used by the ingest); imported by name, like registry plugins."""

    eval_data_path: Optional[str] = None
    bad_rows: str = choice("error", ("error", "skip"))
    overlong: str = choice("truncate", ("truncate", "drop"))
    tokenizer: Optional[str] = None
    task_data_dir: Optional[str] = None
    source: str = choice("auto", ("auto", "hub"))
    schema_module: str = "mdm.tasks.data"
