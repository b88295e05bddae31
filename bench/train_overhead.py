"""Training overhead of mdm (Ray Train + Ray Data + DeepSpeed) against a plain single-process PyTorch loop.

    python bench/train_overhead.py                 # CPU: tiny LLaDA on arithmetic data, ~3-5 minutes
    python bench/train_overhead.py --gpu           # one GPU: the 1.34B config in bf16 (d_model 2048, 16 layers)

Same model, data, batch and number of steps in every arm: (plain) a torch loop over pre-collated batches in
this process, no Ray, no DeepSpeed; (ray-1w) mdm with 1 Ray worker and `deepspeed.enabled: false`;
(zero0) 1 worker with DeepSpeed ZeRO-0; (zero2) ZeRO-2 on 2 workers (CPU only). Steady-state tokens/s skips
the first quarter of the steps (compilation, warm-up, Ray Data start); mdm's figures come from the
`train/tokens_per_s` and `train/data_wait_fraction` the run logs to MLflow (windows of `--steps/4`).
Targets: ray-1w >= 0.9x plain; data wait < 5% of step time; on GPU zero0/zero2 (1 worker) >= 0.95x plain.
Torch threads are pinned to the same count in every arm so the comparison is about overhead, not cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_data(root: Path, gpu: bool, n_rows: int) -> tuple[str, str]:
    """Processed JSONL + tokenizer: arithmetic problems (CPU) or random 2048-token rows (GPU)."""
    from mdm.tasks.arithmetic import Arithmetic
    from mdm.tasks.preprocess import preprocess
    from mdm.tasks.tokenize import train_bpe

    task = Arithmetic(seed=0, n_train=n_rows, n_test=10, max_operand=99)
    tok = train_bpe((e.prompt + "\n" + e.response for e in task.examples("train")), str(root / "tok"), 300)
    out = root / "train.jsonl"
    if not gpu:
        preprocess(task, "train", tok, out, progress=False)
        return str(out), tok
    import numpy as np

    rng = np.random.default_rng(0)
    with open(out, "w") as f:
        for _ in range(n_rows):
            f.write(json.dumps({"input_ids": rng.integers(3, 300, 2048).tolist(), "prompt_length": 256}) + "\n")
    return str(out), tok


def model_sets(gpu: bool) -> dict[str, object]:
    if gpu:
        return {"model.d_model": 2048, "model.n_layers": 16, "model.n_heads": 16, "model.mlp_hidden_size": 5632,
                "model.vocab_size": 126464, "model.max_sequence_length": 2048, "train.batch_size_per_gpu": 8,
                "train.max_len": 2048, "model.gradient_checkpointing": False}
    return {"model.d_model": 128, "model.n_layers": 2, "model.n_heads": 4, "model.mlp_hidden_size": 384,
            "train.batch_size_per_gpu": 32, "train.max_len": 64}


def plain_loop(cfg, steps: int, threads: int) -> float:
    """Tokens/s of a bare torch loop over batches collated up front (the ideal input pipeline)."""
    import torch
    from transformers import AutoTokenizer

    from mdm.platform.train.lr_schedule import build_lr_scheduler
    from mdm.platform.registry import get_registry
    from mdm.tasks.data import collate, read_processed

    torch.set_num_threads(threads)
    gpu = torch.cuda.is_available() and cfg.ray.use_gpu
    device = torch.device("cuda" if gpu else "cpu")
    spec = get_registry("engines").get(cfg.engine)
    tok = AutoTokenizer.from_pretrained(cfg.data.tokenizer)
    torch.manual_seed(0)
    model = spec.build_model(cfg.model, "tiny", tok).to(device)  # fp32 weights; bf16 autocast on GPU
    objective = spec.build_objective(cfg.train)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, fused=gpu or None)
    sched = build_lr_scheduler(opt, cfg.train, steps)
    rows = list(read_processed(cfg.train.train_data_path))
    bs = cfg.train.batch_size_per_gpu
    batches = [{k: torch.from_numpy(v) for k, v in collate(rows[i:i + bs], pad_id=tok.pad_token_id,
                                                          max_len=cfg.train.max_len).items()}
               for i in range(0, len(rows) - bs + 1, bs)]
    gen = torch.Generator(device=device).manual_seed(0)
    warm, tokens, t0 = steps // 4, 0, 0.0
    for step in range(steps):
        if step == warm:
            if gpu:
                torch.cuda.synchronize()
            t0, tokens = time.perf_counter(), 0
        batch = {k: v.to(device, non_blocking=True) for k, v in batches[step % len(batches)].items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            loss, _ = objective.loss(model, batch, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    if gpu:
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - t0)


def mdm_run(cfg, name: str) -> tuple[float, float]:
    """(steady tokens/s, data-wait fraction) of one mdm run, read back from its MLflow history."""
    from mlflow.tracking import MlflowClient

    from mdm.platform.train.driver import train_driver

    train_driver(cfg, run_name=name)
    client = MlflowClient(tracking_uri=cfg.tracking.tracking_uri)
    run = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment_name).experiment_id],
                             filter_string=f"tags.`mlflow.runName` = '{name}'")[0]

    def steady(key: str) -> float:
        hist = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        vals = [v for s, v in hist if s > cfg.train.max_steps // 4]
        return sum(vals) / len(vals)

    return steady("train/tokens_per_s"), steady("train/data_wait_fraction")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="the 1.34B config in bf16 on one GPU")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per arm (default 80 CPU, 40 GPU)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in every arm (CPU; more threads than free cores thrash)")
    args = parser.parse_args(argv)
    steps = args.steps or (40 if args.gpu else 80)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # Ray workers inherit it instead of their CPU share

    import ray

    from mdm.platform.config import load_config

    root = Path(tempfile.mkdtemp(prefix="mdm_bench_"))
    data, tok = make_data(root, args.gpu, n_rows=400 if args.gpu else 3000)
    base = {"train.train_data_path": data, "data.tokenizer": tok, "train.max_steps": steps,
            "train.logging_steps": max(1, steps // 4), "train.save_strategy": "'no'", "train.eval_strategy": "'no'",
            "train.train_ratio": 1.0, "train.lr": 1e-3, "train.lr_scheduler_type": "constant",
            "tracking.tracking_uri": f"sqlite:///{root}/mlruns.db", "tracking.experiment_name": "bench",
            "ray.storage_path": root / "ray", "train.output_dir": root / "out", **model_sets(args.gpu)}
    if args.gpu:
        base.update({"ray.use_gpu": True, "ray.gpus_per_worker": 1, "ray.cpus_per_worker": 4,
                     "deepspeed.precision": "bf16"})
    else:
        base["ray.cpus_per_worker"] = 1.0  # + 1 CPU for Ray Data's tasks on the 2-CPU Ray

    def cfg(**extra):
        return load_config([], [f"{k}={v}" for k, v in {**base, **extra}.items()])

    ray.init(num_cpus=None if args.gpu else 2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    arms = [("ray-1w (no DeepSpeed)", {"deepspeed.enabled": False}), ("zero0 (1 worker)", {"deepspeed.zero_stage": 0})]
    if args.gpu:
        arms.append(("zero2 (1 worker)", {"deepspeed.zero_stage": 2}))
    else:
        arms.append(("zero2 (2 workers)", {"deepspeed.zero_stage": 2, "ray.num_workers": 2,
                                           "ray.cpus_per_worker": 0.5}))
    # The plain loop runs before each arm and once after the last; each arm is compared with the mean of the
    # plain runs on either side of it, so drift in the machine's load shows up instead of skewing ratios.
    plains = [plain_loop(cfg(), steps, args.threads)]
    results = []
    for i, (name, extra) in enumerate(arms):
        results.append((name, *mdm_run(cfg(**extra), f"arm{i}")))
        plains.append(plain_loop(cfg(), steps, args.threads))
    ray.shutdown()

    print(f"\ntrain overhead, {'GPU bf16 1.34B' if args.gpu else 'CPU tiny'}: {steps} steps, batch "
          f"{base['train.batch_size_per_gpu']}, torch threads {args.threads}")
    print("plain loop tokens/s, before each arm and after the last: " + ", ".join(f"{p:.0f}" for p in plains))
    print(f"{'arm':<24}{'tokens/s':>12}{'plain around':>14}{'x plain':>10}{'data wait':>11}")
    for i, (name, tps, wait) in enumerate(results):
        ref = (plains[i] + plains[i + 1]) / 2
        print(f"{name:<24}{tps:>12.0f}{ref:>14.0f}{tps / ref:>10.2f}{wait:>10.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
