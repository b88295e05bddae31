"""The held-out evaluation that ends every comparison trial: exact match on the task's held-out split.

    task = build_eval_task(cfg)                                   # eval.task or train.task, with compare.task_args
    rows = held_out_rows(task, tokenizer, "test", limit=200)      # once, on the driver: prompts encoded once
    metrics, records = score_held_out(model, cfg, tokenizer, task, rows)   # in the trial: generate + score

An in-process trial already holds its trained model, so it samples here, through the platform's one
generation path (`infer.generation.generate`, the engine's sampler, `sampler.*` settings), in batches of
`sampler.batch_size`: the same texts batch inference would produce, without starting a Ray Data pipeline
and reloading the model per trial (the `ray_train` runner uses `run_inference` instead). Prompts are
encoded by the task (`Task.encode_prompts`, the layout training used), answers extracted and scored by the
task; `records` are the seed's prediction records (`{"task", "prompt", "gold_raw", "prediction", "meta",
"id"}`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from mdm.platform.fields import ConfigError
from mdm.platform.registry import get_registry


def build_eval_task(cfg: Any) -> Any:
    """The task the comparison scores on, built from the registry with `data.task_data_dir`, `data.source` and
    `compare.task_args` (as batch inference builds it)."""
    name = cfg.eval.task or cfg.train.task
    if not name:
        raise ConfigError("a comparison scores every trial on a task's held-out split: set train.task or eval.task")
    try:
        source = {"source": cfg.data.source} if cfg.data.source != "auto" else {}
        task = get_registry("tasks").get(name)(data_dir=cfg.data.task_data_dir, **source, **cfg.compare.task_args)
    except TypeError as e:
        raise ConfigError(f"compare.task_args {cfg.compare.task_args} do not fit task {name!r}: {e}") from None
    if cfg.compare.eval_split not in task.splits:
        raise ConfigError(f"compare.eval_split: task {name!r} has no split {cfg.compare.eval_split!r}; "
                          f"its splits: {', '.join(task.splits)}")
    return task


def held_out_rows(task: Any, tokenizer: Any, split: str, limit: int) -> list[dict[str, Any]]:
    """The first `limit` examples of `split`: {"id", "prompt", "gold_raw", "prompt_ids"}."""
    examples = list(task.examples(split, limit=limit))
    if not examples:
        raise ConfigError(f"compare.eval_split: task {task.name!r} split {split!r} has no examples")
    ids = task.encode_prompts(tokenizer, [ex.prompt for ex in examples])
    return [{"id": ex.id, "prompt": ex.prompt, "gold_raw": ex.gold_raw, "prompt_ids": [int(t) for t in p]}
            for ex, p in zip(examples, ids)]


def score_held_out(model: Any, cfg: Any, tokenizer: Any, task: Any,
                   rows: list[dict[str, Any]]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Sample every row's answer with `cfg.sampler` and score it: ({accuracy, n, correct, eval_s}, records)."""
    import torch

    from mdm.platform.infer.generation import generate

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.eval.seed)
    with torch.inference_mode():
        out = generate(model, cfg.engine, dataclasses.replace(cfg.sampler), [r["prompt_ids"] for r in rows],
                       tokenizer=tokenizer, generator=gen)
    records, scores = [], []
    for i, (r, text) in enumerate(zip(rows, out.texts or [])):
        score = float(task.score(text, r["gold_raw"]))
        scores.append(score)
        records.append({"task": task.name, "prompt": r["prompt"], "gold_raw": r["gold_raw"], "prediction": text,
                        "meta": {"index": i, "extracted": task.extract(text), "score": score,
                                 "gen_tokens": len(out.ids[i])}, "id": r["id"]})
    metrics = {**task.aggregate(scores), "nfe": float(out.nfe), "eval_s": time.perf_counter() - t0}
    return metrics, records
