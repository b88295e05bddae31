"""Where a task pack's raw rows come from: a local directory, the copy shipped inside mdm, or the hub.

    from mdm.tasks.sources import task_rows
    rows = task_rows(task, "train", ("question", "answer"), hub=lambda: load_dataset("openai/gsm8k", "main",
                     split="train"), download="GSM8K (openai/gsm8k) as train.jsonl / test.jsonl")

Precedence, the same for every pack (a task gets `data.task_data_dir` as `data_dir`, `data.source` as `source`):
  1. `data_dir` (`data.task_data_dir`, `--data_dir`): `<dir>/<split>.jsonl`; always wins when set;
  2. `source="hub"` (`data.source: hub`): the pack's Hugging Face Hub copy through `datasets.load_dataset`
     (the network, or datasets' cache; `HF_ENDPOINT` / the `china` key pick the mirror);
  3. the copy shipped in the package, `mdm/tasks/data_files/<task>/<split>.jsonl.gz` with its licence
     beside it (GSM8K only: MIT, the rows of openai/gsm8k "main");
  4. otherwise `TaskDataError`, one line saying what to download and where to put it.
The hub is never tried unless asked, so a machine without network fails at once instead of after retries.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

from mdm.tasks.jsonl import iter_jsonl, require_keys

if TYPE_CHECKING:  # base imports this module: the Task class is named here for the signatures only
    from mdm.tasks.base import Task

SOURCES = ("auto", "hub")
PACKAGED_ROOT = "data_files"  # under the mdm.tasks package


class TaskDataError(ValueError):
    """A task's raw data is not available from any allowed source; the message says what to do."""


def check_source(source: str) -> str:
    """`source` if it is one of SOURCES, else ValueError naming the key."""
    if source not in SOURCES:
        raise ValueError(f"data.source must be one of {', '.join(SOURCES)}, got {source!r}")
    return source


def packaged_file(task_name: str, split: str) -> Optional[Path]:
    """The gzipped JSONL of `split` shipped inside the package for `task_name`, or None."""
    path = Path(str(importlib.resources.files("mdm.tasks") / PACKAGED_ROOT / task_name / f"{split}.jsonl.gz"))
    return path if path.is_file() else None


def iter_local_split(task: Task, split: str, keys: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Stream `{data_dir}/{split}.jsonl`, checking each line has `keys` (errors name the file and line)."""
    path = Path(task.data_dir) / f"{split}.jsonl"
    if not path.is_file():
        folder = Path(task.data_dir)
        present = sorted(p.name for p in folder.glob("*.jsonl")) if folder.is_dir() else []
        raise FileNotFoundError(f"task {task.name!r}: {path} does not exist (data_dir {task.data_dir} must hold "
                                f"{', '.join(s + '.jsonl' for s in task.splits)}; found: {', '.join(present) or 'none'})")
    yield from _checked(path, keys)


def _checked(path: Path, keys: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    for lineno, obj in iter_jsonl(path):
        require_keys(obj, keys, str(path), lineno)
        yield obj


def _hub(task: Task, rows: Callable[[], Iterable[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
    """The hub's rows; any failure to reach or read it becomes one line naming the way out. `task` is a pack with
    a hub copy: those declare `hub_id` (a dataset id, or a tuple of load_dataset arguments)."""
    try:
        it = iter(rows())
        first = next(it, None)
    except Exception as e:  # datasets raises ConnectionError, OSError, DatasetNotFoundError, ... offline
        what = str(e).strip().splitlines()[0] if str(e).strip() else ""
        local = ", or drop data.source: hub to use the copy shipped with mdm" if packaged_file(task.name, "train") \
            else ""
        hub_id = task.hub_id if isinstance(task.hub_id, str) else " ".join(task.hub_id)
        raise TaskDataError(f"task {task.name!r}: data.source: hub could not load {hub_id} from the Hugging "
                            f"Face Hub ({type(e).__name__}: {what[:200]}); set data.task_data_dir to a local copy"
                            f"{local}") from None
    if first is not None:
        yield first
        yield from it


def task_rows(task: Task, split: str, keys: tuple[str, ...], *, hub: Optional[Callable[[], Iterable[dict]]],
              download: str) -> Iterator[dict[str, Any]]:
    """Raw rows of `split` from the first available source (see the module docstring for the order).

    `hub` returns the hub's rows (None: the pack has no hub copy); `download` says, for the error, what to
    fetch (e.g. "HiTab in the seed's format") -- the directory layout and the keys are added here."""
    task.check_split(split)
    if task.data_dir:
        yield from iter_local_split(task, split, keys)
        return
    if task.source == "hub":
        if hub is None:
            raise TaskDataError(f"task {task.name!r} has no Hugging Face Hub copy (data.source: hub); set "
                                f"data.task_data_dir to a directory with {_layout(task, keys)}")
        yield from _hub(task, hub)
        return
    packaged = packaged_file(task.name, split)
    if packaged is not None:
        yield from _checked(packaged, keys)
        return
    via_hub = ", or set data.source: hub to stream it from the Hugging Face Hub" if hub is not None else ""
    raise TaskDataError(f"task {task.name!r} has no data here: download {download} into a directory holding "
                        f"{_layout(task, keys)} and set data.task_data_dir (--data_dir) to it{via_hub}")


def _layout(task: Task, keys: tuple[str, ...]) -> str:
    files = " and ".join(f"{s}.jsonl" for s in task.splits)
    return f"{files} (one {{{', '.join(repr(k) for k in keys)}}} object a line)".replace("'", '"')
