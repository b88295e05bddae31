"""The arithmetic demo's full-budget figure: accuracy of both samplers and wall time against the 10-minute goal.

    python bench/arithmetic_demo.py                      # the full budget (several minutes on 2 CPUs)
    python bench/arithmetic_demo.py --budget ci          # the reduced CI budget, for a quick look
    python bench/arithmetic_demo.py --set train.max_steps=800 --out /tmp/arith

Runs experiments/arithmetic.py once in a fresh process (so its wall time includes imports, tokenizer
training and both evaluations), then prints side by side: held-out exact match of `llada` and `fast`, their
difference (goal: within 1 point), the fast sampler's speed-up over llada in eval time and NFE, and the
whole run's wall time as a fraction of the 600 s budget (goal: <= 1 on a 2-core CPU, with `llada` >= 90%).
CPU seconds are printed too: on a shared machine they show the compute used, independent of contention.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 600.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="full", choices=("full", "ci"))
    p.add_argument("--out", default=str(REPO / "outputs" / "arithmetic_bench"))
    p.add_argument("--set", action="append", default=[], dest="overrides")
    args = p.parse_args()
    cmd = [sys.executable, str(REPO / "experiments" / "arithmetic.py"), "--budget", args.budget, "--out", args.out]
    for o in args.overrides:
        cmd += ["--set", o]
    t0 = time.time()
    subprocess.run(cmd, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = time.time() - t0
    s = json.loads((Path(args.out) / "summary.json").read_text())
    llada, fast = s["samplers"]["llada"], s["samplers"]["fast"]
    load = os.getloadavg()[0]
    print(f"\narithmetic demo ({args.budget} budget, {s['n_params'] / 1e6:.2f}M params, {s['train_steps']} steps, "
          f"{s['n_test']} held-out, {s['threads']} threads, load avg {load:.1f} on {os.cpu_count()} CPUs)")
    print(f"  accuracy   llada {llada['accuracy']:.3f}   fast {fast['accuracy']:.3f}   "
          f"fast - llada {100 * (fast['accuracy'] - llada['accuracy']):+.1f} points")
    print(f"  eval time  llada {llada['eval_s']:.1f}s   fast {fast['eval_s']:.1f}s   "
          f"speed-up x{llada['eval_s'] / max(fast['eval_s'], 1e-9):.2f}   "
          f"NFE ratio x{llada['nfe'] / max(fast['nfe'], 1):.2f}")
    print(f"  wall       {wall:.0f}s (train {s['train_s']:.0f}s) = {wall / BUDGET_S:.2f} x the {BUDGET_S:.0f}s budget; "
          f"CPU {s['cpu_s']:.0f}s")
    gap = round(100 * abs(fast["accuracy"] - llada["accuracy"]), 6)  # points; rounding: 0.965 - 0.955 is 1
    ok = llada["accuracy"] >= 0.9 and gap <= 1 and wall <= BUDGET_S
    print(f"  goal (llada >= 0.90, |fast - llada| <= 1 point, wall <= {BUDGET_S:.0f}s): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
