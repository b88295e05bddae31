"""Streaming JSONL reading with errors that name the file and line.

    for lineno, obj in iter_jsonl("data/test.jsonl"):        # JsonlError("data/test.jsonl:17: ...") on bad JSON
        ...
    for lineno, obj in iter_jsonl(path, on_error=errors.append):   # collect JsonlError instead of raising

A path ending in `.gz` is read through gzip (the task data shipped inside the package). Blank lines are
skipped. A line must hold a JSON object; anything else is an error too.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union


class JsonlError(ValueError):
    """A bad JSONL line; `path` and `lineno` say where (1-based line number)."""

    def __init__(self, path: str, lineno: int, what: str) -> None:
        super().__init__(f"{path}:{lineno}: {what}")
        self.path, self.lineno, self.what = path, lineno, what


def iter_jsonl(path: Union[str, Path], on_error: Optional[Callable[[JsonlError], None]] = None
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line of `path`, reading one line at a time.

    A line that is not a JSON object raises JsonlError, or is passed to `on_error` and skipped."""
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                err = JsonlError(path, lineno, f"not valid JSON ({e.msg} at column {e.colno})")
            else:
                if isinstance(obj, dict):
                    yield lineno, obj
                    continue
                err = JsonlError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
            if on_error is None:
                raise err
            on_error(err)


def require_keys(obj: dict[str, Any], keys: tuple[str, ...], path: str, lineno: int) -> None:
    """Raise JsonlError naming the missing keys (and the keys present) when `obj` lacks any of `keys`."""
    missing = [k for k in keys if k not in obj]
    if missing:
        raise JsonlError(path, lineno, f"missing key(s) {', '.join(map(repr, missing))}; "
                                       f"expected {', '.join(keys)}, got {', '.join(map(repr, obj)) or 'none'}")
