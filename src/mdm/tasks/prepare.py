"""Training data for a recipe: the tokenizer and the processed JSONL of `train.task`, made once and reused.

    overrides = prepare_training_data(cfg, work_dir="data/gsm8k", limit=None)   # ["data.tokenizer=...", ...]
    cfg = with_overrides(cfg, dict(o.split("=", 1) for o in overrides))

For `train.model: tiny` without `data.tokenizer`, a byte-level BPE (`TINY_VOCAB` tokens) is trained on the
task's training split; the processed file is `train-len<max_len>.jsonl` unless `train.train_data_path` is set.
Both go into one folder per (model, limit) under the work root, so a tokenizer trained on N examples and its
data stay together, and a second run reuses them.

The work root (`work_root`): a URI or an absolute path as given; a relative one against the current directory
on one machine, and under the storage root on a cluster (an object-store root, or Ray joined at an address),
where every node reads it. With a URI root, what is already there is fetched into a local staging folder,
the rest is made there and uploaded (`storage.upload`), and the overrides name the URIs every node reads.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from mdm.platform import storage
from mdm.platform.runs import storage_root
from mdm.platform.runtime.ray_runtime import is_local_cluster
from mdm.tasks.preprocess import build_task, preprocess
from mdm.tasks.tokenize import train_bpe

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig

TINY_VOCAB = 1024


def work_root(cfg: RunConfig, work_dir: str) -> str:
    """Where the tokenizer and processed data go (see the module docstring)."""
    if storage.is_uri(work_dir) or Path(work_dir).is_absolute():
        return work_dir
    root = storage_root(cfg)
    if storage.is_uri(root) or not is_local_cluster(cfg.ray):
        return storage.join(root, work_dir)
    return str(Path(work_dir).resolve())


def data_name(cfg: RunConfig) -> str:
    """The processed training file's name: one per `train.max_len` (rows over it are dropped)."""
    return f"train-len{cfg.train.max_len}.jsonl"


def prepare_training_data(cfg: RunConfig, work_dir: str, limit: Optional[int] = None,
                          log: Callable[[str], None] = print) -> list[str]:
    """Make (or reuse) the tokenizer and processed training JSONL of `cfg.train.task` under `work_dir`;
    return the `KEY=VALUE` overrides that point the config at them."""
    root = work_root(cfg, work_dir)
    tag = "tiny" if cfg.train.model == "tiny" else cfg.train.model.replace("/", "--")
    parts = (tag, "all" if limit is None else f"first{limit}")
    if not storage.is_uri(root):
        out = _prepare_in(cfg, Path(root).joinpath(*parts), limit, log)
    else:
        out = _prepare_remote(cfg, storage.join(root, *parts), limit, log)
    return [f"{k}={v}" for k, v in out.items() if v is not None]


def _prepare_remote(cfg: RunConfig, remote: str, limit: Optional[int], log: Callable[[str], None]
                    ) -> dict[str, Optional[str]]:
    """Fetch what `remote` already holds into a staging folder, make the rest there, upload it."""
    work = Path(tempfile.mkdtemp(prefix=f"mdm_{cfg.train.task}_"))
    for name, marker in (("tokenizer", "tokenizer/tokenizer.json"), (data_name(cfg), data_name(cfg))):
        if storage.exists(storage.join(remote, marker)):
            storage.download(storage.join(remote, name), str(work / name))
            log(f"{cfg.train.task}: reusing {storage.join(remote, name)}")
    out = _prepare_in(cfg, work, limit, log)
    for key, value in out.items():
        if value is not None and Path(value).is_relative_to(work):
            dest = storage.join(remote, Path(value).relative_to(work).as_posix())
            if not storage.exists(dest):
                storage.upload(value, dest)
                log(f"{cfg.train.task}: uploaded {value} -> {dest}")
            out[key] = dest
    return out


def _prepare_in(cfg: RunConfig, work: Path, limit: Optional[int], log: Callable[[str], None]
                ) -> dict[str, Optional[str]]:
    """Make (or find) the tokenizer and the processed JSONL in the local folder `work`; their config keys."""
    name = cfg.train.task
    task = build_task(name, data_dir=cfg.data.task_data_dir, source=cfg.data.source)
    tok = cfg.data.tokenizer
    if tok is None and cfg.train.model == "tiny":
        tok_dir = work / "tokenizer"
        if not (tok_dir / "tokenizer.json").is_file():
            texts = (f"{ex.prompt}\n{ex.response}" for ex in task.examples("train", limit=limit))
            train_bpe(texts, str(tok_dir), vocab_size=TINY_VOCAB)
            log(f"{name}: trained a {TINY_VOCAB}-token BPE -> {tok_dir}")
        tok = str(tok_dir)
    out: dict[str, Optional[str]] = {"data.tokenizer": tok}
    if cfg.train.train_data_path is None:
        path = work / data_name(cfg)
        if not path.is_file():
            stats = preprocess(task, "train", tok or cfg.train.model, path, max_len=cfg.train.max_len,
                               limit=limit, progress=True)
            log(f"{name}: preprocessed {stats['written']} rows ({stats['dropped_overlong']} over "
                f"train.max_len dropped) -> {path}")
        out["train.train_data_path"] = str(path)
    return out
