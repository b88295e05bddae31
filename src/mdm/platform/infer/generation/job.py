"""Batch inference + scoring on Ray Data with an autoscaling sampler actor pool (`mdm infer`).

    mdm infer --task gsm8k --model outputs/gsm8k-ab12/final --out preds.jsonl [--split test] [--limit N]
              [--sampler llada|fast] [--config eval.yaml] [--set sampler.steps=64 --set eval.max_actors=8]

    from mdm.platform.infer.generation.job import run_inference
    metrics = run_inference(cfg, model="mlflow:<run_id>", task="arithmetic", out="preds.jsonl", limit=32)

Pipeline: the driver resolves the model (model_source), loads the tokenizer, reads the task's split (or a
prompts JSONL) and encodes the prompts with `task.encode_prompts` (the layout training used) -- so every mistake (missing model, no such
split, bad JSONL line) fails before any actor starts. Then Ray Data: one block per batch ->
`map_batches(SamplerActor, compute=ActorPoolStrategy(min, max), num_gpus=...)` (model loaded once per
actor; dead actors restart and their batches are retried) -> CPU `map_batches(Scorer)` -> streamed back
to the driver, checked (every index exactly once), sorted by index and written as the seed's predictions
JSONL `{"task","prompt","gold_raw","prediction","meta":{"index",...},"id"}` plus `<out>.metrics.json`,
and logged to MLflow (the training run when the model came from one, else an eval run) under
`infer/<task>/<split>/<sampler>/<metric>` (split `prompts-<file stem>` for `--prompts`), so evaluations of
other splits or samplers of one model sit side by side; the predictions also as an MLflow table
(`<prefix>/predictions_table.json`). An existing predictions file is named (one line) at
the start and replaced only once the new one is complete (written beside it, then moved into place). `--out`
may be a storage URI (`s3://...`): the files are staged locally and uploaded at the end (`outputs.OutputFiles`).
The driver-side checks and actor-pool helpers it shares with likelihood mode live in `pool.py`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from mdm.platform.infer.model_source import ModelSource
from mdm.platform.infer.outputs import OutputFiles, announce_replace, log_evaluation, metric_prefix, write_jsonl
from mdm.platform.infer.pool import (InferenceError, actor_paths, check_complete, collect, load_task, load_tokenizer,
                                     model_stage, resolve_sources, restart_args)
from mdm.platform.registry import auto_import, load_builtins

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig
    from mdm.platform.task_api import TaskPack


# ----------------------------------------------------------------------------- inputs (driver side)

def _task_rows(task: TaskPack, split: str, limit: Optional[int]) -> list[dict[str, Any]]:
    rows = []
    try:
        for i, raw in enumerate(task.load_split(split)):
            if limit is not None and i >= limit:
                break
            ex = task.to_example(raw, i)
            rows.append({"index": i, "id": ex.id, "prompt": ex.prompt, "gold_raw": ex.gold_raw})
    except (OSError, ValueError) as e:  # the task's raw data: missing, not downloadable, a bad line
        raise InferenceError(str(e)) from None
    return rows


def _prompt_rows(path: str, limit: Optional[int], task_name: str) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise InferenceError(f"--prompts {path}: no such file")
    rows = []
    with p.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and len(rows) >= limit:
                break
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InferenceError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                raise InferenceError(f"{path}:{lineno}: expected an object with a string \"prompt\"")
            i = len(rows)
            gold = rec.get("gold_raw", rec.get("answer", ""))
            rows.append({"index": i, "id": str(rec.get("id", f"{task_name}-prompts-{i}")), "prompt": rec["prompt"],
                         "gold_raw": "" if gold is None else str(gold)})
    return rows


# ----------------------------------------------------------------------------- the Ray Data job

def _build_dataset(rows: list[dict], cfg: RunConfig, paths: dict[str, Optional[str]], task: str) -> Any:
    import ray
    import ray.data

    from mdm.platform.infer.generation.actors import SamplerActor, Scorer

    ev = cfg.eval
    ctx = ray.data.DataContext.get_current()
    # Ray Data's bars are per operator (three here, and a log block every few seconds off a terminal):
    # run_inference draws one bar of scored rows instead (eval.progress).
    ctx.enable_progress_bars = False
    if ev.wait_for_actors_s > 0:
        ctx.wait_for_min_actors_s = ev.wait_for_actors_s
    ds = model_stage(rows, cfg, SamplerActor, **paths, sampler_cfg=cfg.sampler)
    return ds.map_batches(
        Scorer, batch_format="numpy", num_cpus=ev.score_cpus, compute=ray.data.ActorPoolStrategy(size=1),
        fn_constructor_kwargs={"task": task, "data_dir": cfg.data.task_data_dir,
                               "auto_import": tuple(cfg.auto_import)},
        **restart_args(ev))


# ----------------------------------------------------------------------------- outputs

def _record(task: str, r: dict) -> dict:
    score = float(r["score"])
    return {"task": task, "prompt": str(r["prompt"]), "gold_raw": str(r["gold_raw"]),
            "prediction": str(r["prediction"]),
            "meta": {"index": int(r["index"]), "extracted": str(r["extracted"]) or None,
                     "score": None if math.isnan(score) else score, "gen_tokens": int(r["gen_tokens"]),
                     "actor": str(r["actor"])},
            "id": str(r["id"])}


def run_inference(cfg: RunConfig, model: Optional[str] = None, task: Optional[str] = None, out: Optional[str] = None,
                  split: Optional[str] = None, limit: Optional[int] = None, *, sampler: Optional[str] = None,
                  prompts: Optional[str] = None,
                  progress_callback: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Sample, score and write predictions for `task`'s `split` (arguments override `cfg.eval.*`).

    Returns the metrics dict (the task's aggregate, e.g. accuracy/n/correct, plus rows, gen_tokens,
    tokens_per_s, rows_per_s, wall_s, actors, predictions/metrics paths, mlflow_run_id, mlflow_prefix: the
    `infer/<task>/<split>/<sampler>` its MLflow metrics and files are under).
    `progress_callback(done_rows, total_rows)` is called as scored batches arrive.
    """
    t0 = time.perf_counter()
    ev = cfg.eval
    task_name, split = task or ev.task, split or ev.split
    prompts = prompts or ev.prompts
    files = OutputFiles.plan(out or ev.out or f"predictions_{task_name}_{split}.jsonl", ev.metrics_out)
    out = files.out  # a storage URI: written here, then uploaded (publish)
    load_builtins()
    auto_import(list(cfg.auto_import))
    if sampler:
        from mdm.platform.config_ops import with_overrides

        cfg = with_overrides(cfg, {"sampler.name": sampler})  # validates the name against the registry
    the_task, src, rows = _inputs(cfg, model, task_name, split, limit if limit is not None else ev.limit, prompts)
    announce_replace(out)
    results, job_s = _sample_and_score(cfg, rows, src, task_name, split, progress_callback)
    records = [_record(task_name, r) for r in results]
    write_jsonl(out, records)  # an earlier file is replaced whole, never left half-written
    metrics = _metrics(the_task, records, results, job_s, time.perf_counter() - t0)
    metrics.update(task=task_name, split=split if not prompts else f"prompts:{prompts}", model=src.spec,
                   sampler=cfg.sampler.name, predictions=files.shown_out, metrics_file=files.shown_metrics,
                   mlflow_run_id=None)
    metrics["mlflow_prefix"] = prefix = metric_prefix(task_name, split, cfg.sampler.name, prompts)
    if cfg.eval.log_mlflow and cfg.tracking.enabled:
        files.write_metrics(metrics)
        metrics["mlflow_run_id"] = log_evaluation(cfg, src, task_name, split, metrics, [out, files.metrics], prefix,
                                                  records)
    files.write_metrics(metrics)
    files.publish()
    acc = metrics.get("accuracy")
    print(f"mdm infer: {len(records)} rows, accuracy {acc if acc is None else f'{acc:.4f}'}, "
          f"{metrics['tokens_per_s']:.1f} tokens/s, {metrics['rows_per_s']:.2f} rows/s, {metrics['actors']} actor(s), "
          f"wall {metrics['wall_s']:.1f}s -> {files.remote_out or out}", flush=True)
    return metrics


def _inputs(cfg: RunConfig, model: Optional[str], task_name: str, split: str, limit: Optional[int],
            prompts: Optional[str]) -> tuple[Any, Any, list[dict[str, Any]]]:
    """(task, model source, rows with their prompt ids): everything checked before Ray starts."""
    the_task = load_task(task_name, split, cfg.data, need_split=prompts is None)
    src = resolve_sources(cfg, model)
    tokenizer = load_tokenizer(src, cfg.model.trust_remote_code)
    rows = _prompt_rows(prompts, limit, task_name) if prompts else _task_rows(the_task, split, limit)
    if not rows:
        raise InferenceError(f"nothing to evaluate: {prompts or f'task {task_name!r} split {split!r}'} has no rows")
    # The task's own prompt layout, the same one preprocessing used for its training rows.
    for r, ids in zip(rows, the_task.encode_prompts(tokenizer, [r["prompt"] for r in rows])):
        r["prompt_ids"] = [int(t) for t in ids]
    return the_task, src, rows


def _sample_and_score(cfg: RunConfig, rows: list[dict[str, Any]], src: ModelSource, task_name: str, split: str,
                      progress_callback: Optional[Callable[[int, int], None]]) -> tuple[list[dict], float]:
    """Run the actor pool over `rows` (Ray started here when needed, and stopped again): (results sorted by
    index, each row exactly once; seconds the job took)."""
    import ray
    import ray.data

    from mdm.platform.runtime.ray_runtime import ensure_ray

    started = ensure_ray(cfg.ray)
    paths = actor_paths(src, cfg)
    bar = None
    if progress_callback is None and cfg.eval.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc=f"eval {task_name}/{split}", unit="rows", file=sys.stderr)

        def progress_callback(done: int, total: int) -> None:
            bar.update(done - bar.n)

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.wait_for_min_actors_s)  # process-wide: put them back after
    try:
        ds = _build_dataset(rows, cfg, paths, task_name)
        t_job = time.perf_counter()
        results = check_complete(collect(ds, len(rows), progress_callback), len(rows))
        return results, time.perf_counter() - t_job
    finally:
        ctx.enable_progress_bars, ctx.wait_for_min_actors_s = saved
        if bar is not None:
            bar.close()
        if started:
            ray.shutdown()


def _metrics(the_task: TaskPack, records: list[dict], results: list[dict], job_s: float, wall: float) -> dict[str, Any]:
    """The task's aggregate over the scored records plus throughput: rows, gen_tokens, nfe, tokens/s, rows/s,
    the steady-state sampling time, wall time and the number of actors."""
    scores = [rec["meta"]["score"] for rec in records if rec["meta"]["score"] is not None]
    gen_tokens = sum(rec["meta"]["gen_tokens"] for rec in records)
    metrics: dict[str, Any] = dict(the_task.aggregate(scores)) if scores else {"n": 0}
    # Steady state: from the first actor with its model loaded to the last batch sampled.
    sampling_s = max(float(r["sampled_at"]) for r in results) - min(float(r["actor_ready_at"]) for r in results)
    metrics.update(rows=len(records), scored=len(scores), gen_tokens=gen_tokens,
                   nfe=int(sum(int(r["nfe"]) for r in results)), sampling_s=sampling_s,
                   steady_rows_per_s=len(records) / sampling_s if sampling_s > 0 else float("nan"),
                   tokens_per_s=gen_tokens / job_s if job_s > 0 else 0.0, rows_per_s=len(records) / job_s,
                   job_s=job_s, wall_s=wall, actors=len({rec["meta"]["actor"] for rec in records}))
    return metrics
