"""The GSM8K hyperparameter sweep: Ray Tune over the trainer, one MLflow child run per trial.

    python experiments/sweep_gsm8k.py --data-dir ../shared/data/gsm8k          # tiny preset, embedded Ray
    python experiments/sweep_gsm8k.py --set tune.num_samples=2 --set tune.scheduler=asha \
        --set train.eval_strategy=steps --set train.eval_steps=50
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python experiments/sweep_gsm8k.py --preset llada-8b --set tune.max_concurrent_trials=4
    mlflow ui --backend-store-uri sqlite:///mlruns.db                          # compare the trials

The base config and data preparation are experiments/gsm8k.py's (same presets, --set, --data-dir,
--work-dir, --limit); the search space is experiments/configs/sweep_gsm8k.yaml (dotted keys, as --set) or
--sweep FILE. The sweep itself is `mdm.platform.sweep.sweep.run_sweep`: deterministic sweep and trial names (re-running
resumes), MLflow parent run with a child per trial, the trials table sorted by `tune.metric` (default
eval/loss), and the best trial's full config in `<train.output_dir>/<sweep>/best_config.yaml`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import gsm8k  # experiments/gsm8k.py: Python puts a script's own directory first on sys.path

SWEEP = gsm8k.CONFIGS / "sweep_gsm8k.yaml"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--sweep", default=str(SWEEP), metavar="YAML", help="search space (dotted keys)")
    args = gsm8k.parse_args(argv, parents=[pre], doc=__doc__)

    from mdm.platform.config_ops import dump_config
    from mdm.platform.fields import ConfigError
    from mdm.platform.registry import AutoImportError
    from mdm.platform.sweep.sweep import run_sweep

    try:
        cfg = gsm8k.build_config(args)
    except (ConfigError, AutoImportError) as e:
        print(f"sweep_gsm8k: error: {e}", file=sys.stderr)
        return 2
    if args.dump_config:
        sys.stdout.write(dump_config(cfg))
        return 0
    cfg = gsm8k.with_data(cfg, gsm8k.prepare_data(cfg, args))
    res = run_sweep(cfg, args.sweep)
    finished = [r for r in res.rows if r["status"] == "FINISHED"]
    print(f"sweep {res.name}: {len(finished)}/{len(res.rows)} trial(s) finished; best config: {res.best_config_path}")
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
