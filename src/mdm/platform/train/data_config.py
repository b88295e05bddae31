"""`data` section: how processed JSONL is read, validated and split (read by `mdm.platform.train.ingest`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

from mdm.platform.fields import choice, registry_choice

# The registry of processed-JSONL schemas (`data.schema`); the tasks package registers the default one.
SCHEMAS = "schemas"


@dataclass(frozen=True)
class RowSchema:
    """A processed-JSONL schema as the ingest uses it: `validate_row(row, vocab_size)` returns None or what is
    wrong with one parsed line; `collate(rows, pad_id=...)` pads rows (a list of row dicts or a column batch)
    into int64 arrays `input_ids`, `labels`, `attention_mask` [B, L]. Both are module-level functions, so
    a schema pickles by reference into Ray Data workers."""

    validate_row: Callable[[Mapping[str, Any], Optional[int]], Optional[str]]
    collate: Callable[..., dict[str, np.ndarray]]


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
    `schema`: the registered processed-JSONL schema (`RowSchema`, registry `schemas`) whose `validate_row` and
    `collate` the ingest uses; `prompt_completion` (`{"input_ids", "prompt_length"}`, from `mdm.tasks.data`)
    is the default. A task pack with another row format registers its own."""

    eval_data_path: Optional[str] = None
    bad_rows: str = choice("error", ("error", "skip"))
    overlong: str = choice("truncate", ("truncate", "drop"))
    tokenizer: Optional[str] = None
    task_data_dir: Optional[str] = None
    source: str = choice("auto", ("auto", "hub"))
    schema: str = registry_choice("prompt_completion", SCHEMAS)


def row_schema(data_cfg: DataConfig) -> RowSchema:
    """The `data.schema` the config names, from the `schemas` registry (the builtin tasks register theirs)."""
    from mdm.platform.registry import get_registry, load_builtins

    load_builtins()
    return get_registry(SCHEMAS).get(data_cfg.schema)
