"""Batch inference by likelihood (`mdm infer --mode likelihood`): score each example's choices on the Ray Data
actor pool, pick the most likely, and report accuracy with per-item estimates and standard errors.

    mdm infer --mode likelihood --task arithmetic_mc --model outputs/arithmetic/model --out mc.jsonl \
        --set likelihood.mc_num=64 --set likelihood.answer_window=16 --set eval.max_actors=4 [--set eval.mc_shards=4]
    mdm infer --task arithmetic_mc ...          # eval.mode auto: likelihood, since the task is multiple choice

    from mdm.platform.infer.likelihood.job import run_likelihood
    metrics = run_likelihood(cfg, model="outputs/arithmetic/model", task="arithmetic_mc", out="mc.jsonl")

The driver does what generation mode does before any actor starts (pool.py: model, tokenizer, task, split,
every mistake reported first), then builds the continuations of each example: a multiple-choice example
(`task.choices(example)`) contributes its choice texts, any other example its reference response (scored,
not picked: its bound is reported as the gold log-likelihood). Prompts are encoded with the task's layout
(`task.encode_prompts`), continuations on their own. Each example becomes `eval.mc_shards` rows (its
`likelihood.mc_num` samples split); Ray Data streams them through `LikelihoodActor`s (likelihood_actor.py);
the driver checks that every (example, shard) came back exactly once, combines the shards of a continuation
(value: the sample-weighted mean; SE: sqrt(sum (n_s / n)^2 SE_s^2)), scores with `task.score_choices` (acc
and the per-character acc_norm) and writes one JSONL record per example:

    {"task", "prompt", "gold_raw", "prediction": the picked choice ("" when not multiple choice),
     "meta": {"index", "mode": "likelihood", "multiple_choice", "continuations", "gold_index", "loglik",
              "stderr", "tokens", "pred_index", "pred_index_norm", "score", "score_norm", "actors"}, "id"}

Metrics (also `<out>.metrics.json` and MLflow, as generation mode logs them): accuracy / acc_norm / n /
correct over the multiple-choice examples; gold_loglik (mean bound of the right continuation, nats),
gold_loglik_per_token and gold_stderr_mean over every example; throughput and the actors that served.
"""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from mdm.platform.infer.model_source import ModelSource
from mdm.platform.infer.outputs import OutputFiles, announce_replace, log_evaluation, metric_prefix, write_jsonl
from mdm.platform.infer.pool import (InferenceError, actor_paths, check_complete, collect, load_task, load_tokenizer,
                                     model_stage, resolve_sources)
from mdm.platform.registry import auto_import, get_registry, load_builtins

if TYPE_CHECKING:
    import ray.data
    from mdm.platform.config import RunConfig
    from transformers import PreTrainedTokenizerBase
    from mdm.platform.task_api import TaskPack

MODES = ("auto", "generate", "likelihood")


def resolve_mode(mode: Optional[str], eval_mode: str, task_name: Optional[str], prompts: Optional[str] = None
                 ) -> str:
    """"generate" or "likelihood": `mode` (the flag) or `eval_mode`; auto is likelihood when the task class
    declares `multiple_choice` and no prompts file replaces the task's split."""
    mode = mode or eval_mode
    if mode not in MODES:
        raise InferenceError(f"--mode {mode}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if prompts:
        return "generate"
    load_builtins()
    tasks = get_registry("tasks")
    return "likelihood" if task_name in tasks and getattr(tasks.get(task_name), "multiple_choice", False) \
        else "generate"


def _examples(task: TaskPack, name: str, split: str, limit: Optional[int], tokenizer: PreTrainedTokenizerBase) -> list[dict[str, Any]]:
    """One dict per example: its text fields, choices (or reference) and token ids."""
    rows = []
    for i, ex in enumerate(task.examples(split, limit)):
        ch = task.choices(ex)
        conts = list(ch.texts) if ch is not None else [ex.response]
        rows.append({"index": i, "id": ex.id, "prompt": ex.prompt, "gold_raw": ex.gold_raw, "choices": ch,
                     "continuations": conts})
    if not rows:
        raise InferenceError(f"nothing to evaluate: task {name!r} split {split!r} has no rows")
    for r, ids in zip(rows, task.encode_prompts(tokenizer, [r["prompt"] for r in rows])):
        r["prompt_ids"] = [int(t) for t in ids]
    for r in rows:
        r["cont_ids"] = [[int(t) for t in c] for c in tokenizer(r["continuations"], add_special_tokens=False)
                         ["input_ids"]]
        empty = [c for c, ids in zip(r["continuations"], r["cont_ids"]) if not ids]
        if empty:
            raise InferenceError(f"task {name!r} example {r['id']}: continuation {empty[0]!r} has no tokens")
    return rows


def _build_dataset(rows: list[dict], cfg: RunConfig, paths: dict[str, Optional[str]]) -> ray.data.Dataset:
    from mdm.platform.infer.likelihood.actor import LikelihoodActor

    return model_stage(rows, cfg, LikelihoodActor, **paths, likelihood_cfg=cfg.likelihood,
                       mc_shards=cfg.eval.mc_shards)


def combine_shards(parts: list[list[list[float]]]) -> list[tuple[float, float, int]]:
    """Per continuation (value, stderr, n_samples) from its shards' [value, stderr, n] (parts[shard][choice]):
    the n-weighted mean of the shard values and sqrt(sum (n_s / n)^2 SE_s^2)."""
    out = []
    for per_shard in zip(*parts):
        n = sum(int(p[2]) for p in per_shard)
        if n <= 0:  # no samples (e.g. an engine that reports none): plain mean, SE unknown unless one shard
            out.append((sum(p[0] for p in per_shard) / len(per_shard),
                        per_shard[0][1] if len(per_shard) == 1 else math.nan, 0))
            continue
        value = sum(p[2] * p[0] for p in per_shard) / n
        se = math.sqrt(sum((p[2] / n) ** 2 * p[1] ** 2 for p in per_shard))
        out.append((value, se, n))
    return out


def _record(task: TaskPack, name: str, ex: dict, scored: list[tuple[float, float, int]], actors: list[str]) -> dict:
    values = [s[0] for s in scored]
    ch = ex["choices"]
    meta: dict[str, Any] = {"index": ex["index"], "mode": "likelihood", "multiple_choice": ch is not None,
                            "continuations": ex["continuations"], "gold_index": ch.gold if ch is not None else 0,
                            "loglik": values, "stderr": [None if math.isnan(s[1]) else s[1] for s in scored],
                            "n_samples": [s[2] for s in scored], "tokens": [len(c) for c in ex["cont_ids"]],
                            "pred_index": None, "pred_index_norm": None, "score": None, "score_norm": None,
                            "actors": sorted(set(actors))}
    prediction = ""
    if ch is not None:
        res = task.score_choices(ch, values)
        meta.update(pred_index=int(res["pred"]), pred_index_norm=int(res["pred_norm"]), score=float(res["acc"]),
                    score_norm=float(res["acc_norm"]))
        prediction = ch.texts[int(res["pred"])]
    return {"task": name, "prompt": ex["prompt"], "gold_raw": ex["gold_raw"], "prediction": prediction,
            "meta": meta, "id": ex["id"]}


def _metrics(records: list[dict]) -> dict[str, Any]:
    mc = [r["meta"] for r in records if r["meta"]["multiple_choice"]]
    correct = sum(m["score"] for m in mc)
    gold_ll = [m["loglik"][m["gold_index"]] for m in (r["meta"] for r in records)]
    gold_tok = [m["tokens"][m["gold_index"]] for m in (r["meta"] for r in records)]
    gold_se = [m["stderr"][m["gold_index"]] for m in (r["meta"] for r in records)]
    gold_se = [s for s in gold_se if s is not None]
    return {"accuracy": correct / len(mc) if mc else float("nan"),
            "acc_norm": sum(m["score_norm"] for m in mc) / len(mc) if mc else float("nan"),
            "n": len(mc), "correct": correct, "gold_loglik": sum(gold_ll) / len(gold_ll),
            "gold_loglik_per_token": sum(gold_ll) / max(1, sum(gold_tok)),
            "gold_stderr_mean": sum(gold_se) / len(gold_se) if gold_se else float("nan")}


def _check_likelihood(cfg: RunConfig, prompts: Optional[str]) -> None:
    """InferenceError, before anything starts, for what likelihood mode cannot do: a prompts file (no choices),
    an engine without likelihood hooks, more Monte Carlo shards than samples."""
    ev = cfg.eval
    if prompts or ev.prompts:
        raise InferenceError("eval.prompts / --prompts holds prompts without choices: likelihood mode scores a "
                             "task's split (use --mode generate for a prompts file)")
    spec = get_registry("engines").get(cfg.engine)
    try:
        spec.require_likelihood(cfg.engine)
    except ValueError as e:
        raise InferenceError(str(e)) from None
    if ev.mc_shards > getattr(cfg.likelihood, "mc_num", ev.mc_shards):
        raise InferenceError(f"eval.mc_shards={ev.mc_shards} exceeds likelihood.mc_num={cfg.likelihood.mc_num}: "
                             f"a shard would run no sample")
    if ev.mc_shards > 1 and not hasattr(cfg.likelihood, "mc_num"):
        raise InferenceError(f"eval.mc_shards > 1 needs an `mc_num` in engine {cfg.engine!r}'s likelihood section")


def _score_on_pool(cfg: RunConfig, rows: list[dict[str, Any]], src: ModelSource,
                   progress_callback: Optional[Callable[[int, int], None]]) -> tuple[list[dict], float]:
    """Run the likelihood actor pool over `rows` (Ray started here when needed, and stopped again): (results
    sorted by row index, each exactly once; seconds the job took)."""
    import ray
    import ray.data

    from mdm.platform.runtime.ray_runtime import ensure_ray

    ev = cfg.eval
    started = ensure_ray(cfg.ray)
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.wait_for_min_actors_s)  # process-wide: put them back after
    try:
        ctx.enable_progress_bars = bool(ev.progress)
        if ev.wait_for_actors_s > 0:
            ctx.wait_for_min_actors_s = ev.wait_for_actors_s
        ds = _build_dataset(rows, cfg, actor_paths(src, cfg))  # a URI / runs:/ path on a cluster
        t_job = time.perf_counter()
        results = check_complete(collect(ds, len(rows), progress_callback), len(rows))
        return results, time.perf_counter() - t_job
    finally:
        ctx.enable_progress_bars, ctx.wait_for_min_actors_s = saved
        if started:
            ray.shutdown()


def run_likelihood(cfg: RunConfig, model: Optional[str] = None, task: Optional[str] = None, out: Optional[str] = None,
                   split: Optional[str] = None, limit: Optional[int] = None, *, prompts: Optional[str] = None,
                   progress_callback: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Score `task`'s `split` by likelihood on the actor pool (arguments override `cfg.eval.*`); returns the
    metrics dict (see the module docstring) and writes the predictions JSONL and its metrics file."""
    t0 = time.perf_counter()
    ev = cfg.eval
    task_name, split = task or ev.task, split or ev.split
    limit = limit if limit is not None else ev.limit
    files = OutputFiles.plan(out or ev.out or f"predictions_{task_name}_{split}.jsonl", ev.metrics_out)
    out = files.out  # a storage URI: written here, then uploaded (publish)
    load_builtins()
    auto_import(list(cfg.auto_import))
    _check_likelihood(cfg, prompts)
    the_task = load_task(task_name, split, cfg.data, need_split=True)
    src: ModelSource = resolve_sources(cfg, model)
    tokenizer = load_tokenizer(src, cfg.model.trust_remote_code)
    examples = _examples(the_task, task_name, split, limit, tokenizer)
    S = ev.mc_shards
    rows = [{"index": ex["index"] * S + s, "shard": s, "prompt_ids": ex["prompt_ids"],
             "items_json": json.dumps(ex["cont_ids"])} for ex in examples for s in range(S)]

    announce_replace(out)
    results, job_s = _score_on_pool(cfg, rows, src, progress_callback)
    records = []
    for ex in examples:
        shards = results[ex["index"] * S:(ex["index"] + 1) * S]  # sorted by row index: this example's shards
        parts = [json.loads(str(r["scores_json"])) for r in shards]
        records.append(_record(the_task, task_name, ex, combine_shards(parts), [str(r["actor"]) for r in shards]))
    write_jsonl(out, records)  # an earlier file is replaced whole, never left half-written
    n_items = sum(len(ex["cont_ids"]) for ex in examples)
    scoring_s = max(float(r["scored_at"]) for r in results) - min(float(r["actor_ready_at"]) for r in results)
    metrics: dict[str, Any] = _metrics(records)
    metrics.update(rows=len(records), items=n_items, mc_num=getattr(cfg.likelihood, "mc_num", None), mc_shards=S,
                   scoring_s=scoring_s, items_per_s=n_items / job_s if job_s > 0 else 0.0,
                   rows_per_s=len(records) / job_s if job_s > 0 else 0.0, job_s=job_s,
                   wall_s=time.perf_counter() - t0, actors=len({str(r["actor"]) for r in results}),
                   task=task_name, split=split, model=src.spec, mode="likelihood",
                   predictions=files.shown_out)
    metrics["metrics_file"] = files.shown_metrics
    metrics["mlflow_run_id"] = None
    metrics["mlflow_prefix"] = prefix = metric_prefix(task_name, split, "likelihood")
    if ev.log_mlflow and cfg.tracking.enabled:
        files.write_metrics(metrics)
        metrics["mlflow_run_id"] = log_evaluation(cfg, src, task_name, split, metrics, [out, files.metrics], prefix)
    files.write_metrics(metrics)
    files.publish()
    print(f"mdm infer --mode likelihood: {len(records)} examples ({metrics['n']} multiple choice), accuracy "
          f"{metrics['accuracy']:.4f}, acc_norm {metrics['acc_norm']:.4f}, gold log-likelihood "
          f"{metrics['gold_loglik']:.3f} nats, {metrics['items_per_s']:.2f} items/s, {metrics['actors']} actor(s), "
          f"wall {metrics['wall_s']:.1f}s -> {files.remote_out or out}", flush=True)
    return metrics
