"""`mdm preprocess`: task data -> processed JSONL, one `{"input_ids": [...], "prompt_length": N}` a line.

    mdm preprocess --task gsm8k --split train --data_dir ../shared/data/gsm8k \\
        --tokenizer GSAI-ML/LLaDA-8B-Instruct --out data/train/gsm8k.jsonl --max_len 1024
    mdm preprocess --task arithmetic --split train --tokenizer train-bpe --out data/train/arith.jsonl
        # trains a byte-level BPE on the split's text, saves it to data/train/arith_tokenizer (path printed);
        # then: mdm preprocess --task arithmetic --split test --tokenizer data/train/arith_tokenizer ...

It also takes the config flags (`--config`, `--set`, `--dump_config`): the seed's base + task overlay give
the defaults -- `--task` from `train.task`, `--data_dir` from `data.task_data_dir` (and `data.source: hub`),
`--tokenizer` from `data.tokenizer`, `--out` from `train.train_data_path`, else the seed's layout
`./data/<split>/<task>.jsonl` (where `mdm train` looks when `train.train_data_path` is unset):

    mdm preprocess --config train_llada_plus.yaml --config gsm8k.yaml --tokenizer train-bpe

From Python (experiment scripts): `stats = preprocess("gsm8k", "train", tok, "out.jsonl", max_len=1024)`.

Examples stream through in batches (never the whole split in memory) and are written to `<out>.tmp`,
renamed to `<out>` when complete. Rows longer than `max_len` tokens are dropped and counted; a tqdm bar
shows rows per second. Layout per row: see `mdm.tasks.tokenize` (chat template when the tokenizer has
one, else prompt + newline; response; EOS).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence, TypeVar, Union

from tqdm import tqdm

from mdm.platform.config_args import add_config_args, config_or_dump
from mdm.platform.registry import UnknownNameError, get_registry
from mdm.tasks.base import Task
from mdm.tasks.jsonl import JsonlError
from mdm.platform.tokenizer import load_tokenizer
from mdm.tasks.tokenize import SIMPLE_CHAT_TEMPLATE, train_bpe

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from mdm.platform.config import RunConfig

TRAIN_BPE = "train-bpe"
_T = TypeVar("_T")


def build_task(name: str, data_dir: Optional[str] = None, source: str = "auto", **kwargs: object) -> Task:
    """Instantiate registered task `name` (builtins registered by importing mdm.tasks); `source` is passed
    only when not "auto" (`mdm.tasks.sources`), so users' own packs need not take it."""
    import mdm.tasks  # noqa: F401  (registers the builtin packs)

    cls = get_registry("tasks").get(name)
    if source != "auto":
        kwargs["source"] = source
    try:
        return cls(data_dir=data_dir, **kwargs)
    except TypeError as e:
        raise ValueError(f"task {name!r}: bad task arguments {sorted(kwargs)}: {e}") from e


def _batches(it: Iterator[_T], size: int) -> Iterator[list[_T]]:
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


def preprocess(task: Union[Task, str], split: str, tokenizer: Union[PreTrainedTokenizerBase, str, Path],
               out_path: Union[str, Path], max_len: Optional[int] = None, *, limit: Optional[int] = None,
               batch_size: int = 256, progress: bool = True) -> dict[str, Any]:
    """Tokenize `split` of `task` with `tokenizer` (object, id or path) into processed JSONL `out_path`.

    Returns stats: {"task", "split", "out", "read", "written", "dropped_overlong", "max_len",
    "longest", "mean_length", "vocab_size"} (lengths over written rows)."""
    if isinstance(task, str):
        task = build_task(task)
    task.check_split(split)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(str(tokenizer))
    if max_len is not None and max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    read = written = dropped = longest = total_len = 0
    bar = tqdm(desc=f"{task.name}/{split}", unit="rows", disable=not progress, file=sys.stderr)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for chunk in _batches(task.examples(split, limit=limit), batch_size):
                encoded = task.encode_examples(tokenizer, chunk)
                for ids, prompt_length in encoded:
                    read += 1
                    if max_len is not None and len(ids) > max_len:
                        dropped += 1
                        continue
                    f.write(json.dumps({"input_ids": ids, "prompt_length": prompt_length}) + "\n")
                    written += 1
                    longest = max(longest, len(ids))
                    total_len += len(ids)
                bar.update(len(chunk))
        os.replace(tmp, out)
    finally:
        bar.close()
        if tmp.exists():
            tmp.unlink()
    return {"task": task.name, "split": split, "out": str(out), "read": read, "written": written,
            "dropped_overlong": dropped, "max_len": max_len, "longest": longest,
            "mean_length": round(total_len / written, 2) if written else 0.0, "vocab_size": len(tokenizer)}


def _parse_task_args(items: Sequence[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--task_arg {item}: expected KEY=VALUE, e.g. --task_arg n_train=5000")
        key, value = item.split("=", 1)
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value  # a bare string
    return kwargs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mdm preprocess", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", help="registered task name (mdm list tasks); default train.task")
    p.add_argument("--split", default="train")
    p.add_argument("--tokenizer", help=f"AutoTokenizer hub id or local path, or '{TRAIN_BPE}' to train a small BPE "
                                       "on the split; default data.tokenizer")
    p.add_argument("--out", help="processed JSONL to write; default train.train_data_path for the train split, "
                                 "else ./data/<split>/<task>.jsonl")
    p.add_argument("--max_len", type=int, default=None, help="drop (and count) rows longer than this")
    p.add_argument("--data_dir", default=None, help="local copy of the task's raw data; default data.task_data_dir")
    p.add_argument("--vocab_size", type=int, default=1024, help=f"vocabulary size for {TRAIN_BPE}")
    p.add_argument("--chat_template", action="store_true",
                   help=f"with {TRAIN_BPE}: give the trained tokenizer a LLaDA-style chat template")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument("--task_arg", action="append", default=[], metavar="KEY=VALUE",
                   help="task constructor argument (JSON value), e.g. --task_arg n_train=5000")
    p.add_argument("--no_progress", action="store_true")
    add_config_args(p)  # --config/--set/--dump_config, and --auto_import for your own task packs
    return p


def _resolve(args: argparse.Namespace, cfg: RunConfig) -> argparse.Namespace:
    """Fill the flags left unset from the config (see the module docstring)."""
    args.task = args.task or cfg.train.task
    if not args.task:
        raise ValueError("no task: pass --task NAME or set train.task (`mdm list tasks` lists them)")
    args.data_dir = args.data_dir or cfg.data.task_data_dir
    args.tokenizer = args.tokenizer or cfg.data.tokenizer
    if not args.tokenizer:
        raise ValueError(f"no tokenizer: pass --tokenizer (a hub id, a directory or {TRAIN_BPE}) or set "
                         "data.tokenizer")
    if not args.out:
        name = get_registry("tasks").canonical(args.task)
        args.out = (cfg.train.train_data_path if args.split == "train" and cfg.train.train_data_path
                    else f"./data/{args.split}/{name}.jsonl")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_or_dump(args)  # imports --auto_import modules, so their packs are registered
        if cfg is None:
            return 0
        args = _resolve(args, cfg)
        task = build_task(args.task, args.data_dir, cfg.data.source, **_parse_task_args(args.task_arg))
        task.check_split(args.split)  # before any slow tokenizer training or loading
        tokenizer = args.tokenizer
        if tokenizer != TRAIN_BPE and tokenizer.startswith((".", "/", "~")) and not Path(tokenizer).is_dir():
            raise FileNotFoundError(f"--tokenizer {tokenizer}: no such directory")
        if tokenizer == TRAIN_BPE:
            out = Path(args.out)
            tok_dir = out.parent / f"{out.stem}_tokenizer"
            texts = (t for ex in task.examples(args.split, limit=args.limit) for t in (ex.prompt, ex.response))
            train_bpe(texts, str(tok_dir), vocab_size=args.vocab_size,
                      chat_template=SIMPLE_CHAT_TEMPLATE if args.chat_template else None)
            print(f"trained tokenizer saved to {tok_dir}")
            tokenizer = str(tok_dir)
        stats = preprocess(task, args.split, tokenizer, args.out, args.max_len, limit=args.limit,
                           progress=not args.no_progress)
    except (UnknownNameError, JsonlError, ValueError, OSError, ModuleNotFoundError) as e:  # ConfigError too
        print(f"mdm preprocess: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {stats['written']} rows to {stats['out']} ({stats['dropped_overlong']} dropped as longer "
          f"than max_len={stats['max_len']}; longest {stats['longest']}, mean {stats['mean_length']} tokens)")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
