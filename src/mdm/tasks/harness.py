"""The eval harness: score a predictions JSONL with a task pack (`mdm score`, `python -m mdm.eval.harness`).

    mdm score --task gsm8k --pred preds.jsonl [--gt gt.jsonl] [--out metrics.json] [--strict]

Prediction records (the seed's format, as batch inference writes them):
    {"task": "gsm8k", "prompt": "...", "gold_raw": "... #### 18", "prediction": "...", "meta": {"index": 0}, "id": "gsm8k-0"}

Without `--gt`, each prediction is scored against its own `gold_raw`. With `--gt` (records with `gold_raw`,
or the task's raw data file such as GSM8K's test.jsonl), predictions and ground truth are merged by `id`
when every record of both files has one, else by index (`meta.index`, or the record's position). Nothing is
dropped silently: malformed JSONL lines (reported with file and line), records missing fields, duplicate
keys (the first is scored), predictions without ground truth, ground truth without a prediction (scored
as wrong), predictions with no extractable answer and records of another task are all counted.

From Python: `metrics = score_files("gsm8k", "preds.jsonl", gt_path=None)`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from mdm.platform.registry import UnknownNameError, auto_import
from mdm.tasks.base import TASKS, Task
from mdm.tasks.jsonl import JsonlError, iter_jsonl
from mdm.tasks.preprocess import build_task

MAX_PROBLEMS_KEPT = 10  # messages kept per kind (all are counted)
ISSUE_KINDS = ("malformed_lines", "invalid_records", "duplicates", "gt_duplicates", "missing", "unmatched",
               "no_answer", "task_mismatch")


class _Report:
    """Counters per kind of issue and the first few messages of each (each with file:line)."""

    def __init__(self) -> None:
        self.counts = {k: 0 for k in ISSUE_KINDS}
        self.problems: dict[str, list[str]] = {}

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        kept = self.problems.setdefault(kind, [])
        if len(kept) < MAX_PROBLEMS_KEPT:
            kept.append(message)


def _read(path: str, report: _Report) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) of every well-formed line; malformed ones are counted with file:line."""
    def bad(e: JsonlError) -> None:
        report.add("malformed_lines", str(e))

    return list(iter_jsonl(path, on_error=bad))


def _index(rec: dict[str, Any], position: int) -> int:
    meta = rec.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("index"), int) and not isinstance(meta["index"], bool):
        return meta["index"]
    return position


def _keyed(records: list[tuple[int, dict[str, Any]]], by: str, path: str, dup_kind: str, report: _Report
           ) -> dict[Any, tuple[int, dict[str, Any]]]:
    """key -> (line, record); later records with a key already seen are counted as duplicates."""
    out: dict[Any, tuple[int, dict[str, Any]]] = {}
    for pos, (lineno, rec) in enumerate(records):
        key = str(rec["id"]) if by == "id" else _index(rec, pos)
        if key in out:
            report.add(dup_kind, f"{path}:{lineno}: duplicate {by} {key!r} (first at line {out[key][0]}); "
                                 "scored the first")
            continue
        out[key] = (lineno, rec)
    return out


def _gold_of(task: Task, rec: dict[str, Any], index: int) -> str:
    if "gold_raw" in rec:
        return str(rec["gold_raw"])
    return task.to_example(rec, index).gold_raw  # the task's raw format (e.g. GSM8K's {"question","answer"})


def score_records(task: Task, preds: list[tuple[int, dict[str, Any]]], pred_path: str,
                  gt: Optional[list[tuple[int, dict[str, Any]]]] = None, gt_path: Optional[str] = None,
                  report: Optional[_Report] = None) -> dict[str, Any]:
    """Score (line, record) predictions, merged with (line, record) ground truth when given."""
    report = report or _Report()
    valid: list[tuple[int, dict[str, Any]]] = []
    for lineno, rec in preds:
        if "prediction" not in rec or not isinstance(rec["prediction"], str):
            report.add("invalid_records", f"{pred_path}:{lineno}: no string 'prediction' field")
        elif gt is None and "gold_raw" not in rec:
            report.add("invalid_records", f"{pred_path}:{lineno}: no 'gold_raw' field (pass --gt)")
        else:
            if rec.get("task") is not None and TASKS.canonical(str(rec["task"])) != task.name:
                report.add("task_mismatch", f"{pred_path}:{lineno}: task {rec['task']!r}, scoring as {task.name!r}")
            valid.append((lineno, rec))
    by = "id" if valid and all("id" in r for _, r in valid) and (
        gt is None or (gt and all("id" in r for _, r in gt))) else "index"
    keyed = _keyed(valid, by, pred_path, "duplicates", report)

    pairs: list[tuple[str, str]] = []  # (prediction text, gold_raw)
    if gt is None:
        pairs = [(rec["prediction"], str(rec["gold_raw"])) for _, rec in keyed.values()]
        n = len(pairs)
    else:
        gt_keyed = _keyed(gt, by, gt_path or "gt", "gt_duplicates", report)
        n = len(gt_keyed)
        positions = {id(rec): pos for pos, (_, rec) in enumerate(gt)}
        for key, (gline, grec) in gt_keyed.items():
            if key not in keyed:
                report.add("missing", f"{gt_path}:{gline}: no prediction for {by} {key!r} (scored as wrong)")
                continue
            try:
                gold = _gold_of(task, grec, _index(grec, positions[id(grec)]))
            except (KeyError, TypeError, ValueError) as e:
                report.add("invalid_records", f"{gt_path}:{gline}: cannot read the gold answer ({e!r})")
                continue
            pairs.append((keyed[key][1]["prediction"], gold))
        for key, (pline, _) in keyed.items():
            if key not in gt_keyed:
                report.add("unmatched", f"{pred_path}:{pline}: {by} {key!r} is not in {gt_path}")

    scores = []
    for text, gold in pairs:
        if task.extract(text) is None:
            report.counts["no_answer"] += 1  # scored (as wrong); common enough not to list each one
        scores.append(task.score(text, gold))
    agg = task.aggregate(scores)
    correct = float(sum(scores))
    return {"task": task.name, "pred": pred_path, "gt": gt_path, "key": by,
            "accuracy": correct / n if n else 0.0, "correct": correct, "n": n, "scored": len(scores),
            "accuracy_scored": agg.get("accuracy", 0.0), **report.counts, "problems": report.problems}


def score_files(task: Union[Task, str, None], pred_path: str, gt_path: Optional[str] = None,
                data_dir: Optional[str] = None) -> dict[str, Any]:
    """Read and score `pred_path` (and `gt_path`) with `task` (a Task or a registered name; None takes the
    `task` field of the first prediction)."""
    report = _Report()
    preds = _read(pred_path, report)
    if task is None:
        names = [r["task"] for _, r in preds if isinstance(r.get("task"), str)]
        if not names:
            raise ValueError(f"{pred_path}: no record has a 'task' field; pass --task")
        task = names[0]
    if isinstance(task, str):
        task = build_task(task, data_dir)
    gt = _read(gt_path, report) if gt_path else None
    return score_records(task, preds, pred_path, gt, gt_path, report)


def format_table(m: dict[str, Any]) -> str:
    """A short human-readable summary of `score_files` metrics."""
    how = f"merged with {m['gt']} by {m['key']}" if m["gt"] else f"own gold_raw, deduplicated by {m['key']}"
    lines = [f"task       {m['task']}   ({how})",
             f"accuracy   {m['accuracy']:.4f}  ({m['correct']:g} / {m['n']})",
             f"scored     {m['scored']}  (accuracy over scored {m['accuracy_scored']:.4f})"]
    issues = {k: m[k] for k in ISSUE_KINDS if m[k]}
    lines.append("issues     " + (", ".join(f"{k}={v}" for k, v in issues.items()) if issues else "none"))
    for kind, messages in m["problems"].items():
        lines += [f"  {msg}" for msg in messages[:3]]
        if m[kind] > 3:
            lines.append(f"  ... {m[kind] - 3} more {kind}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mdm score", description="Score a predictions JSONL with a task pack.")
    p.add_argument("--task", default=None, help="task name (default: the records' 'task' field)")
    p.add_argument("--pred", "--pred_jsonl", required=True, help="predictions JSONL (--pred_jsonl: the seed's name)")
    p.add_argument("--gt", default=None, help="ground-truth JSONL (records with gold_raw, or the task's raw data)")
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    p.add_argument("--data_dir", default=None, help="task data_dir (for tasks that need one)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any line is malformed or any record missing, duplicate or unmatched")
    p.add_argument("--auto_import", action="append", default=[], metavar="MODULE")
    args = p.parse_args(argv)
    try:
        auto_import(args.auto_import)
        metrics = score_files(args.task, args.pred, args.gt, args.data_dir)
    except (UnknownNameError, ValueError, OSError, ModuleNotFoundError) as e:
        print(f"mdm score: error: {e}", file=sys.stderr)
        return 2
    print(format_table(metrics))
    text = json.dumps(metrics, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(f"metrics written to {args.out}")
    else:
        print(text)
    bad = sum(metrics[k] for k in ("malformed_lines", "invalid_records", "duplicates", "gt_duplicates",
                                   "missing", "unmatched"))
    if metrics["n"] == 0:
        print("mdm score: error: nothing to score", file=sys.stderr)
        return 1
    return 1 if args.strict and bad else 0


if __name__ == "__main__":
    sys.exit(main())
