"""Benchmark: batch inference rows/s on Ray Data with 1 and 2 CPU sampler actors vs the sampler called
directly in this process, on the same rows, measured side by side in one run.

    python bench/batch_infer.py [--rows 128] [--batch-size 8] [--gen-length 32] [--steps 16] [--d-model 64]

The model is a random tiny LLaDA (so no download); what is measured is the pipeline's cost and scaling.
"steady" rows/s: Ray's from the first actor with its model loaded to the last batch sampled, the direct
baseline's over its sampling loop; "incl." rows/s add actor start-up / model load (what a short job
sees). Ray gives each 1-CPU actor one torch thread (OMP_NUM_THREADS=1); the direct baseline runs with the
same single thread so the ratio isolates the pipeline (a second line: the baseline with all cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def build_model(out_dir: str, d_model: int) -> str:
    from transformers import AutoTokenizer

    from mdm.platform.config import load_config
    from mdm.platform.registry import get_registry, load_builtins
    from mdm.tasks.tokenize import train_bpe

    load_builtins()
    task = get_registry("tasks").get("arithmetic")()
    train_bpe([ex.prompt + " " + ex.response for ex in task.examples("train", 300)], out_dir, vocab_size=256)
    tok = AutoTokenizer.from_pretrained(out_dir)
    cfg = load_config([], [f"model.d_model={d_model}", "model.n_layers=2", "model.n_heads=4",
                           f"model.mlp_hidden_size={3 * d_model}"])
    model = get_registry("engines").get("llada_plus").build_model(cfg.model, "tiny", tok)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def direct(model_dir: str, cfg, rows: int, batch_size: int, threads: int) -> tuple[float, float]:
    """(load seconds, sampling seconds) for the sampler called in-process over the same rows and batches."""
    import torch
    from transformers import AutoTokenizer

    from mdm.platform.infer.generation.generate import generate
    from mdm.platform.registry import get_registry

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = get_registry("engines").get("llada_plus").build_model(cfg.model, model_dir, tok).eval()
    load_s = time.perf_counter() - t0
    task = get_registry("tasks").get("arithmetic")()
    prompts = task.encode_prompts(tok, [ex.prompt for ex in task.examples("test", rows)])
    one_call = dataclasses.replace(cfg.sampler, batch_size=batch_size)
    t1 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, rows, batch_size):  # as the actors do: one generate call per batch of rows
            gen = torch.Generator().manual_seed(cfg.eval.seed + i)
            generate(model, "llada_plus", one_call, prompts[i:i + batch_size], tokenizer=tok, generator=gen)
    return load_s, time.perf_counter() - t1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--d-model", type=int, default=64)
    args = p.parse_args(argv)

    import ray

    from mdm.platform.infer.generation.job import run_inference
    from mdm.platform.config import load_config

    work = tempfile.mkdtemp(prefix="mdm_bench_infer_")
    model_dir = build_model(os.path.join(work, "model"), args.d_model)
    base = [f"sampler.gen_length={args.gen_length}", f"sampler.block_length={args.gen_length}",
            f"sampler.steps={args.steps}", f"eval.batch_size={args.batch_size}", "eval.cpus_per_actor=1",
            "eval.log_mlflow=false", "eval.progress=false"]
    cfg = load_config([], base)
    results = {}
    load1, run1 = direct(model_dir, cfg, args.rows, args.batch_size, threads=1)
    results["direct_1thread"] = {"rows_per_s": args.rows / run1, "rows_per_s_incl_load": args.rows / (run1 + load1)}
    load_n, run_n = direct(model_dir, cfg, args.rows, args.batch_size, threads=os.cpu_count() or 1)
    results[f"direct_{os.cpu_count()}threads"] = {"rows_per_s": args.rows / run_n,
                                                 "rows_per_s_incl_load": args.rows / (run_n + load_n)}
    # One CPU beyond the actors' for Ray Data's own scoring actor and driver-side work.
    ray.init(num_cpus=3, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        for n in (1, 2):
            # wait_for_actors_s: dispatch only once all n actors are up, so the steady phase uses all of them.
            c = load_config([], base + [f"eval.min_actors={n}", f"eval.max_actors={n}", "eval.wait_for_actors_s=600"])
            m = run_inference(c, model=model_dir, task="arithmetic", out=os.path.join(work, f"p{n}.jsonl"),
                              limit=args.rows)
            results[f"ray_{n}_actor"] = {"rows_per_s": m["steady_rows_per_s"], "job_s": m["job_s"],
                                         "rows_per_s_incl_startup": m["rows_per_s"], "actors": m["actors"]}
    finally:
        ray.shutdown()
    d1 = results["direct_1thread"]["rows_per_s"]
    print(json.dumps(results, indent=2))
    print(f"rows={args.rows} batch={args.batch_size} gen_length={args.gen_length} steps={args.steps} "
          f"d_model={args.d_model} cpus={os.cpu_count()}")
    for name, r in results.items():
        incl = r.get("rows_per_s_incl_load", r.get("rows_per_s_incl_startup"))
        print(f"{name:>18}: {r['rows_per_s']:8.2f} rows/s steady ({r['rows_per_s'] / d1:5.2f}x direct 1-thread); "
              f"{incl:6.2f} rows/s incl. model load / actor start-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
