"""Where an evaluation's results go: the predictions file (replaced whole, and said so) and its MLflow keys.

    announce_replace("preds.jsonl")       # one line when the file exists: what will be replaced
    write_jsonl("preds.jsonl", records)   # written beside it, then moved into place
    metric_prefix("gsm8k", "test", "fast")  # "infer/gsm8k/test/fast": metrics and artifacts of this evaluation

Keys carry task, split and sampler, so a second evaluation of the same model (another split, another sampler)
lands beside the first in its MLflow run instead of overwriting it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional


def metric_prefix(task: str, split: str, sampler: str, prompts: Optional[str] = None) -> str:
    """`infer/<task>/<split>/<sampler>`; the split is `prompts-<file stem>` for a `--prompts` file."""
    where = f"prompts-{Path(prompts).stem}" if prompts else split
    return f"infer/{task}/{where}/{sampler}"


def announce_replace(out: str) -> None:
    """Print one line naming `out` when it exists: how many predictions it holds and when it was written."""
    p = Path(out)
    if p.is_file():
        with p.open("rb") as f:
            n = sum(1 for _ in f)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(p.stat().st_mtime))
        print(f"mdm infer: {out} exists ({n} predictions, written {when}); it will be replaced when this run "
              f"completes (pass another --out to keep it)", flush=True)


def write_jsonl(out: str, records: Iterable[dict[str, Any]]) -> None:
    """One JSON object per line into `out`, through a temporary file beside it (atomic on one filesystem)."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    partial = f"{out}.partial-{os.getpid()}"
    with open(partial, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    os.replace(partial, out)
