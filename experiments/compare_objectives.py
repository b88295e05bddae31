"""Standard vs MIRROR vs P-POTS vs P-POTS+MIRROR over seeds, with held-out accuracy: the paper's comparison.

    python experiments/compare_objectives.py                       # CPU: arithmetic, all three regimes (2 cores)
    python experiments/compare_objectives.py --regime short        # short unpadded answers: where P-POTS can gain most
    python experiments/compare_objectives.py --budget ci           # a few steps per trial (the test)
    python experiments/compare_objectives.py --preset gsm8k-llada-8b   # GPUs: LLaDA-8B-Instruct on GSM8K
    python experiments/compare_objectives.py --set compare.equalize=batch --set 'compare.seeds=[1,2,3,4,5]'

Each regime is one comparison (`mdm.platform.compare.compare.run_comparison`): 4 configurations x 3 seeds, every
other key shared, one MLflow parent run with a child per trial, the mean ± std table printed and written as
CSV/JSON/PNG under `<train.output_dir>/<comparison>/` and shown on the parent run's page.

Presets:
  arithmetic (CPU)  experiments/configs/{base,arithmetic,compare_arithmetic}.yaml: a tiny LLaDA from scratch on
                    arithmetic word problems (the demo's task and model, experiments/arithmetic.py), responses
                    EOS-padded to the answer window; trials train in their Tune trial processes (`compare.runner:
                    in_process`), 1 CPU each, and are scored on 200 held-out problems. Two regimes: `large`,
                    64 sequence-forwards per step (the demo's batch), 1,500 steps at lr 2e-3, and `small`, 8 per
                    step, 5,000 steps at lr 1e-3: the variance-limited regime (the paper trains with batch 1 per
                    GPU), where an estimator's gradient variance matters most. `short`: the regime where P-POTS
                    can gain most before training (R* smallest: responses not EOS-padded, so ~13 answer tokens
                    instead of 16 and the one-masked-token tail is heavier), 8 per step, with positive-control
                    arms (Standard with 1.6x and 2x the batch) and seeds added until the paired CIs resolve the
                    predicted effect. `--budget ci` trains a few steps.
  gsm8k-llada-8b    {base,llada_8b,gsm8k,compare_gsm8k_llada8b}.yaml: the paper's setup (batch 1 per GPU, greedy
                    reference sampler with generation length 128, 128 steps, blocks of 32), each trial a Ray Train
                    job with DeepSpeed and batch inference on the whole test split; data as experiments/gsm8k.py
                    prepares it (--data-dir, --work-dir, --limit).
`--config` adds overlays, `--set KEY=VALUE` overrides any key last (the regime's own keys included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

CONFIGS = Path(__file__).resolve().parent / "configs"
PRESETS = {"arithmetic": ["base.yaml", "arithmetic.yaml", "compare_arithmetic.yaml"],
           "gsm8k-llada-8b": ["base.yaml", "llada_8b.yaml", "gsm8k.yaml", "compare_gsm8k_llada8b.yaml"]}
# CPU regimes: sequence-forwards per step (compare.equalize: forwards halves MIRROR's sequences) and steps.
REGIMES = {"large": ["train.batch_size_per_gpu=64", "train.max_steps=1500", "train.warmup_steps=50", "train.lr=2e-3",
                     "train.eval_steps=250", "train.logging_steps=25"],
           "small": ["train.batch_size_per_gpu=8", "train.max_steps=5000", "train.warmup_steps=100", "train.lr=1e-3",
                     "train.eval_steps=1000", "train.logging_steps=100"],
           "short": ["train.batch_size_per_gpu=8", "train.max_steps=1500", "train.warmup_steps=50", "train.lr=1e-3",
                     "train.eval_steps=500", "train.logging_steps=100", "compare.control_batch_multipliers=[1.6,2]",
                     "compare.target_halfwidth=0.01", "compare.max_seeds=12", "likelihood.answer_window=0"]}
# How the responses are laid out: EOS-padded to sampler.gen_length (the demo's SFT layout), or as they are.
UNPADDED = {"short"}
BUDGETS = {"full": [], "ci": ["train.max_steps=4", "train.warmup_steps=0", "train.eval_steps=2",
                              "train.logging_steps=2", "compare.eval_limit=16", "train.num_samples_x0=8",
                              "train.num_samples_t=4", "train.num_samples_xt=1", "model.n_layers=1",
                              "compare.quad_points=4", "compare.loglik_mc=4", "compare.max_seeds=3",
                              "model.d_model=32", "model.n_heads=2", "model.mlp_hidden_size=64"]}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from mdm.platform.config_args import add_config_args

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="arithmetic")
    p.add_argument("--regime", choices=["large", "small", "short", "both", "all"], default="all",
                   help="CPU preset: batch regime (both = large and small; all = the three)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="full", help="full, or ci: a few steps per trial")
    p.add_argument("--work-dir", default="data/compare", help="tokenizer + processed JSONL (reused when present)")
    p.add_argument("--data-dir", default=None, help="gsm8k preset: local GSM8K copy (train.jsonl, test.jsonl)")
    p.add_argument("--limit", type=int, default=None, help="gsm8k preset: use only the first N training examples")
    add_config_args(p)
    return p.parse_args(argv)


def arithmetic_data(cfg: Any, work: Path, padded: bool = True) -> list[str]:
    """Tokenizer + processed JSONL of the arithmetic training split: answers EOS-padded to the answer window
    (as the demo trains), or with `padded=False` as they are (response + one EOS)."""
    import arithmetic  # experiments/arithmetic.py: Python puts a script's own directory first on sys.path

    from mdm.platform.tokenizer import load_tokenizer
    from mdm.tasks.arithmetic import Arithmetic
    from mdm.tasks.tokenize import train_bpe

    args = dict(cfg.compare.task_args)
    tag = "-".join(f"{k}{v}" for k, v in sorted(args.items())) + (f"-gen{cfg.sampler.gen_length}" if padded
                                                                   else "-unpadded")
    out = work / "arithmetic" / tag
    path = out / "train.jsonl"
    if not path.is_file():
        task = Arithmetic(**args)
        tok_dir = train_bpe([f"{ex.prompt}\n{ex.response}" for ex in task.examples("train")], str(out / "tokenizer"),
                            vocab_size=320)
        rows, _ = arithmetic.encode_split(task, load_tokenizer(tok_dir), "train",
                                          cfg.sampler.gen_length if padded else None)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"compare: {len(rows)} training problems -> {path}", flush=True)
    return [f"train.train_data_path={path}", f"data.tokenizer={out / 'tokenizer'}"]


def gsm8k_data(cfg: Any, args: argparse.Namespace) -> list[str]:
    """experiments/gsm8k.py's preparation (the checkpoint's tokenizer, processed train split)."""
    import gsm8k

    return gsm8k.prepare_data(cfg, argparse.Namespace(work_dir=args.work_dir, limit=args.limit))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from mdm.platform.config_args import config_from_args
    from mdm.platform.config_ops import dump_config

    files = [str(CONFIGS / f) for f in PRESETS[args.preset]]
    data_dir = [f"data.task_data_dir={Path(args.data_dir).resolve()}"] if args.data_dir else []
    regimes = {"both": ["large", "small"], "all": ["large", "small", "short"]}.get(args.regime, [args.regime])
    if args.preset != "arithmetic":
        regimes = ["paper"]

    def config(regime: str, extra: Sequence[str] = ()) -> Any:
        return config_from_args(args, files, [*REGIMES.get(regime, []), *BUDGETS[args.budget], *data_dir, *extra])

    if args.dump_config:
        for regime in regimes:
            sys.stdout.write(f"# regime {regime}\n{dump_config(config(regime))}")
        return 0
    from mdm.platform.compare.compare import run_comparison

    t0, tables = time.time(), []
    for regime in regimes:
        cfg = config(regime)
        prepared = arithmetic_data(cfg, Path(args.work_dir).resolve(), regime not in UNPADDED) \
            if args.preset == "arithmetic" \
            else gsm8k_data(cfg, args)
        cfg = config(regime, prepared)
        res = run_comparison(cfg, argv=sys.argv if argv is None else ["compare_objectives.py", *argv])
        tables.append((regime, cfg, res))
    print(f"\n== compare_objectives ({args.preset}, {args.budget} budget): {time.time() - t0:.0f} s wall ==")
    for regime, cfg, res in tables:
        unit = "sequence-forwards" if cfg.compare.equalize == "forwards" else "sequences"
        print(f"\n[{regime}] {cfg.train.batch_size_per_gpu} {unit} per step, {cfg.train.max_steps} steps, lr "
              f"{cfg.train.lr:g}: {res.name}\n{res.table}")
    return 0 if all(r["status"] == "FINISHED" for _, _, res in tables for r in res.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
