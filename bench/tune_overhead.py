"""Benchmark: what a sweep trial costs outside training, and the trial-steps ASHA saves.

    python bench/tune_overhead.py [--trials 4] [--steps 8] [--cpus 2]
    python bench/tune_overhead.py --compare [--steps 1500] [--trials 4]   # comparison trials (in-process)

Runs the same lr grid twice, one trial at a time, on tiny CPU trials through `run_sweep` (real Ray Tune,
real train_driver, real MLflow sqlite store): once with FIFO (every trial to the end), once with ASHA
(grace 2, reduction factor 2). The grid has one diverging lr so ASHA has something to stop.

Per FIFO trial, from the driver's Tune callback (trial start/end) and the MLflow child run's timestamps:
  setup    trial start -> MLflow run opened (trial actor, config, driver-side data validation pass)
  launch   run opened -> first step logged (worker group start, model build, P-POTS prepare, first step)
  train    first -> last step logged, scaled by steps/(steps-1) (the steps themselves)
  finish   last step -> trial end (HF export, final report, worker group teardown)
and the fraction of the trial outside `train`. Then executed trial-steps FIFO vs ASHA, and wall times.

With `--compare`: the same breakdown for comparison trials (`mdm.platform.compare.compare`, runner in_process),
`--trials` cells (Standard / MIRROR / P-POTS / both, seed 1) of experiments/compare_objectives.py's CPU
preset (large-batch regime) at `--steps` steps, 2 at a time on `--cpus` CPUs: per trial, from the driver's
Tune callback (trial start -> end) and the trial's own timings (`time/setup_s`: run opened, model built,
P-POTS prepared; `time/train_s`; `time/eval_s`: eval-loss passes and the held-out generation;
`time/finish_s`: export and artifacts), the fraction of the trial's wall time outside training.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

def tiny_data(root: Path) -> tuple[str, str]:
    """400 arithmetic problems as processed JSONL and the BPE tokenizer trained on them (as tests/ do)."""
    from mdm.tasks.arithmetic import Arithmetic
    from mdm.tasks.preprocess import preprocess
    from mdm.tasks.tokenize import train_bpe

    task = Arithmetic(seed=0, n_train=400, n_test=20)
    tok = train_bpe([e.prompt + "\n" + e.response for e in task.examples("train")], str(root / "tok"), vocab_size=300)
    preprocess(task, "train", tok, root / "train.jsonl", progress=False)
    return tok, str(root / "train.jsonl")


def make_timer():
    from ray.tune import Callback

    class TrialTimes(Callback):
        """Driver-side wall clock of each trial's start and end (ms, like MLflow's timestamps)."""

        def __init__(self) -> None:
            self.start: dict[str, float] = {}
            self.end: dict[str, float] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.start[trial.trial_id] = time.time() * 1000

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.end[trial.trial_id] = time.time() * 1000

        on_trial_error = on_trial_complete

    return TrialTimes()


def breakdown(res, timer, uri: str, steps: int) -> list[dict[str, float]]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    out = []
    for row in res.rows:
        runs = c.search_runs([c.get_experiment_by_name("bench").experiment_id],
                             filter_string=f"tags.`mdm.run` = '{row['run_name']}'")  # the trial's identity
        hist = sorted(c.get_metric_history(runs[0].info.run_id, "train/loss"), key=lambda m: m.step)
        t0, t_end = timer.start[row["trial_id"]], timer.end[row["trial_id"]]
        opened, first, last = runs[0].info.start_time, hist[0].timestamp, hist[-1].timestamp
        n = hist[-1].step - hist[0].step
        train = (last - first) * (n + 1) / max(n, 1)
        wall = t_end - t0
        out.append({"setup": (opened - t0) / 1e3, "launch": (first - opened) / 1e3, "train": train / 1e3,
                    "finish": (t_end - last) / 1e3, "wall": wall / 1e3, "outside": 1 - train / wall})
    return out


def compare_overhead(args: argparse.Namespace) -> int:
    """--compare: per-trial breakdown of in-process comparison trials (see the module docstring)."""
    import ray

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import compare_objectives as co

    from mdm.platform.config import load_config
    from mdm.platform.compare.compare import run_comparison

    root = Path(tempfile.mkdtemp(prefix="compare_bench_"))
    files = [str(co.CONFIGS / f) for f in co.PRESETS["arithmetic"]]
    grid = "{train.train_mode: [Normal, MIRROR], train.PPOTS: [false, true], train.p_model: [EPR]}"
    overrides = [*co.REGIMES["large"], f"train.max_steps={args.steps}", f"compare.grid={grid}",
                 "compare.seeds=[1]", f"tracking.tracking_uri=sqlite:///{root}/mlruns.db",
                 f"train.output_dir={root}/out", f"ray.storage_path={root}/ray", "tune.name=bench-compare"]
    cfg = load_config(files, overrides)
    cfg = load_config(files, overrides + co.arithmetic_data(cfg, root / "data"))
    ray.init(num_cpus=args.cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    timer = make_timer()
    t0 = time.perf_counter()
    res = run_comparison(cfg, callbacks=[timer])
    wall = time.perf_counter() - t0
    ray.shutdown()
    rows = [r for r in res.rows if r["status"] == "FINISHED"][: args.trials]
    print(f"\n== per comparison trial ({len(rows)} trials x {args.steps} steps, 2 at a time, {args.cpus} CPUs) ==")
    parts = []
    for r in rows:
        m = r["metrics"]
        trial_wall = (timer.end[r["trial_id"]] - timer.start[r["trial_id"]]) / 1e3
        parts.append({"setup": m["time/setup_s"], "train": m["time/train_s"], "eval": m["time/eval_s"],
                      "finish": m["time/finish_s"], "wall": trial_wall, "outside": 1 - m["time/train_s"] / trial_wall})
        print(f"  {r['label']:<24} wall {trial_wall:6.1f} s  setup {m['time/setup_s']:5.1f}  train {m['time/train_s']:6.1f}"
              f"  eval {m['time/eval_s']:5.1f}  finish {m['time/finish_s']:4.1f}  outside {parts[-1]['outside']:.0%}")
    print(f"  outside training: {statistics.median(p['outside'] for p in parts):.0%} of trial wall time (median), "
          f"comparison wall {wall:.0f} s")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=4, help="lr grid size (the last lr diverges); --compare: cells")
    ap.add_argument("--steps", type=int, default=None, help="steps per trial (default 8; --compare 1500)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--compare", action="store_true", help="comparison trials instead of Ray Train sweep trials")
    args = ap.parse_args()
    if args.compare:
        args.steps = args.steps or 1500
        return compare_overhead(args)
    args.steps = args.steps or 8

    import ray

    from mdm.platform.config import load_config
    from mdm.platform.sweep.sweep import run_sweep

    root = Path(tempfile.mkdtemp(prefix="tune_bench_"))
    tok, data = tiny_data(root)
    uri = f"sqlite:///{root}/mlruns.db"
    overrides = [f"train.train_data_path={data}", f"data.tokenizer={tok}", f"train.output_dir={root}/out",
                 f"train.max_steps={args.steps}", "train.batch_size_per_gpu=4", "train.max_len=64",
                 "train.train_ratio=0.9", "train.eval_strategy=steps", "train.eval_steps=2", "train.logging_steps=1",
                 "train.save_strategy='no'", "train.lr_scheduler_type=constant", "model.d_model=32",
                 "model.n_layers=1", "model.n_heads=2", "model.mlp_hidden_size=64", "deepspeed.enabled=false",
                 "ray.cpus_per_worker=0.2", f"ray.storage_path={root}/ray", f"tracking.tracking_uri={uri}",
                 "tracking.experiment_name=bench", "tune.cpus_per_trial=0.05", "tune.max_concurrent_trials=1",
                 "tune.grace_period=2", "tune.reduction_factor=2"]
    lrs = [3e-4 * 3 ** i for i in range(args.trials - 1)] + [30.0]
    sweep = {"train.lr": {"grid": lrs}}
    ray.init(num_cpus=args.cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)

    results = {}
    for sched in ("fifo", "asha"):
        cfg = load_config([], overrides + [f"tune.scheduler={sched}", f"tune.name=bench-{sched}"])
        timer = make_timer()
        t0 = time.perf_counter()
        res = run_sweep(cfg, sweep, callbacks=[timer])
        results[sched] = (res, timer, time.perf_counter() - t0)
    ray.shutdown()

    fifo, timer, fifo_wall = results["fifo"]
    parts = breakdown(fifo, timer, uri, args.steps)
    print(f"\n== per trial ({len(parts)} tiny trials x {args.steps} steps, one at a time, {args.cpus} CPUs) ==")
    for k in ("setup", "launch", "train", "finish", "wall"):
        vals = [p[k] for p in parts]
        print(f"  {k:<8} median {statistics.median(vals):7.2f} s   (min {min(vals):.2f}, max {max(vals):.2f})")
    print(f"  outside training: {statistics.median(p['outside'] for p in parts):.0%} of trial wall time (median)")

    asha, _, asha_wall = results["asha"]
    steps = {k: sum(r["step"] or 0 for r in results[k][0].rows) for k in results}
    stopped = sum(r["status"] == "KILLED" for r in asha.rows)
    print(f"\n== ASHA vs FIFO ({len(lrs)} trials, lr grid {', '.join(f'{x:g}' for x in lrs)}) ==")
    print(f"  trial-steps run: FIFO {steps['fifo']}, ASHA {steps['asha']} ({stopped} trial(s) stopped); "
          f"saved {steps['fifo'] - steps['asha']} = {1 - steps['asha'] / steps['fifo']:.0%}")
    print(f"  sweep wall time: FIFO {fifo_wall:.1f} s, ASHA {asha_wall:.1f} s, ratio ASHA/FIFO "
          f"{asha_wall / fifo_wall:.2f}")
    print(f"  best lr: FIFO {fifo.rows[0]['params']['train.lr']:g}, ASHA {asha.rows[0]['params']['train.lr']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
