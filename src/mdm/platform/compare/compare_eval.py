"""The held-out evaluation that ends every comparison trial: exact match on the task's held-out split.

    task = build_eval_task(cfg)                                   # eval.task or train.task, with compare.task_args
    rows = held_out_rows(task, tokenizer, "test", limit=200)      # once, on the driver: prompts encoded once
    metrics, records = score_held_out(model, cfg, tokenizer, task, rows)   # in the trial: generate + score
    low_noise_eval(model, cfg, eval_arrays, rows)   # {"eval/loss_quad", "eval/loglik_per_token", their SEs}

An in-process trial already holds its trained model, so it samples here, through the platform's one
generation path (`infer.generation.generate`, the engine's sampler, `sampler.*` settings), in batches of
`sampler.batch_size`: the same texts batch inference would produce, without starting a Ray Data pipeline
and reloading the model per trial (the `ray_train` runner uses `run_inference` instead). Prompts are
encoded by the task (`Task.encode_prompts`, the layout training used), answers extracted and scored by the
task; `records` are the seed's prediction records (`{"task", "prompt", "gold_raw", "prediction", "meta",
"id"}`).

Exact match on a few hundred problems moves in steps of 0.5 points and a model that cannot solve the task
scores 0 whatever it learnt, so `low_noise_eval` adds two measures with resolution, both paired across the
configurations of a seed: the held-out loss by fixed-grid quadrature over t (the objective's
`eval_quadrature`: `compare.quad_points` nodes, masks from `eval.seed` and each row's tokens, no t-sampling
noise) on the held-out training rows, and the likelihood bound per answer token on the held-out problems (the
engine's `loglikelihood` hook with `compare.loglik_mc` masks per answer, seeded by `eval.seed` and the item, so
every configuration sees the same masks), each with its Monte Carlo standard error.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any, Optional

from mdm.platform.fields import ConfigError
from mdm.platform.registry import get_registry

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from mdm.platform.config import RunConfig
    from mdm.platform.task_api import TaskPack


def build_eval_task(cfg: RunConfig) -> TaskPack:
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


def held_out_rows(task: TaskPack, tokenizer: PreTrainedTokenizerBase, split: str, limit: int) -> list[dict[str, Any]]:
    """The first `limit` examples of `split`: {"id", "prompt", "gold_raw", "prompt_ids"}."""
    examples = list(task.examples(split, limit=limit))
    if not examples:
        raise ConfigError(f"compare.eval_split: task {task.name!r} split {split!r} has no examples")
    encoded = task.encode_examples(tokenizer, examples)  # prompt ids exactly as encode_prompts, then answer + EOS
    return [{"id": ex.id, "prompt": ex.prompt, "gold_raw": ex.gold_raw, "prompt_ids": [int(t) for t in ids[:plen]],
             "answer_ids": [int(t) for t in ids[plen:]]} for ex, (ids, plen) in zip(examples, encoded)]


def score_held_out(model: torch.nn.Module, cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, task: TaskPack,
                   rows: list[dict[str, Any]]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Sample every row's answer with `cfg.sampler` and score it: ({accuracy, n, correct, eval_s}, records)."""
    import torch

    from mdm.platform.infer.generation.generate import generate

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


def low_noise_eval(model: torch.nn.Module, cfg: RunConfig, eval_arrays: Optional[dict[str, Any]],
                   rows: list[dict[str, Any]]) -> dict[str, float]:
    """`eval/loss_quad` (+ `_se`) on `eval_arrays` (held-out training rows: input_ids, labels, attention_mask
    [N, L]) and `eval/loglik_per_token` (+ `_se`) on the held-out problems `rows`; a measure the engine or the
    data cannot give is left out."""
    import torch

    spec = get_registry("engines").get(cfg.engine)
    out: dict[str, float] = {}
    with torch.no_grad():
        objective = spec.build_objective(cfg.train)
        if eval_arrays is not None and hasattr(objective, "eval_quadrature"):
            size = 64
            n = len(eval_arrays["input_ids"])
            batches = [{k: torch.as_tensor(v[i:i + size]) for k, v in eval_arrays.items()} for i in range(0, n, size)]
            value, se = objective.eval_quadrature(model, batches, n_points=cfg.compare.quad_points,
                                                  seed=cfg.eval.seed)
            out.update({"eval/loss_quad": float(value), "eval/loss_quad_se": float(se)})
        if spec.loglikelihood is not None and cfg.compare.loglik_mc > 0 and rows:
            lcfg = dataclasses.replace(cfg.likelihood, mc_num=cfg.compare.loglik_mc)
            items = [(r["prompt_ids"], r["answer_ids"]) for r in rows]
            scores = spec.loglikelihood(model, items, lcfg, torch.Generator().manual_seed(cfg.eval.seed))
            tokens = sum(max(len(a), lcfg.answer_window) for _, a in items)
            out["eval/loglik_per_token"] = sum(s.value for s in scores) / tokens
            out["eval/loglik_per_token_se"] = math.sqrt(sum(s.stderr ** 2 for s in scores
                                                            if math.isfinite(s.stderr))) / tokens
    return out
