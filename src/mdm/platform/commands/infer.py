"""`mdm infer`: batch inference + scoring on Ray Data (see `mdm.platform.infer.generation.job.run_inference`).

    mdm infer --task gsm8k --model outputs/gsm8k-ab12/final --out preds.jsonl [--split test] [--limit N]
              [--sampler llada|fast] [--config eval.yaml] [--set sampler.steps=64 --set eval.max_actors=8]
    mdm infer --mode likelihood --task arithmetic_mc --model DIR [--set likelihood.mc_num=64]   # likelihood/job.py
    mdm infer --task gsm8k --model BASE --adapter outputs/gsm8k-lora/final     # a LoRA run's adapter on its base

The seed's `llada.cli.main infer` flags still work: `--model_name` (= --model), `--out_file` (= --out),
`--steps N` and `--gen_length N` (= --set sampler.steps=N / sampler.gen_length=N, applied after --set).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from mdm.platform.config_args import add_config_args, config_or_dump
from mdm.platform.fields import ConfigError
from mdm.platform.infer.generation.job import InferenceError, run_inference
from mdm.platform.infer.likelihood.job import MODES, resolve_mode, run_likelihood
from mdm.platform.infer.model_source import ModelSourceError
from mdm.platform.registry import UnknownNameError


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mdm infer", description=__doc__.split("\n")[0])
    p.add_argument("--task", help="task name (`mdm list tasks`); default eval.task")
    p.add_argument("--model", "--model_name",
                   help="HF dir | run/checkpoint dir | hub id | mlflow:<run_id> | runs:/<id>/<path>")
    p.add_argument("--adapter", help="PEFT adapter on top of --model (a LoRA run's export), in the same forms; "
                   "without --model, its recorded base (default eval.adapter)")
    p.add_argument("--out", "--out_file",
                   help="predictions JSONL (default eval.out, else predictions_<task>_<split>.jsonl)")
    p.add_argument("--split", help="split to evaluate (default eval.split = test)")
    p.add_argument("--limit", type=int, help="first N examples only")
    p.add_argument("--sampler", help="sampler name (`mdm list samplers`), e.g. llada or fast")
    p.add_argument("--prompts", help="JSONL of {prompt, gold_raw?, id?} instead of the task's split")
    p.add_argument("--steps", type=int, help="the seed's flag: sampler.steps")
    p.add_argument("--gen_length", type=int, help="the seed's flag: sampler.gen_length")
    p.add_argument("--mode", choices=MODES, help="generate | likelihood (score choices) | auto: likelihood for "
                   "multiple-choice tasks (default eval.mode)")
    add_config_args(p)
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    args.overrides += [f"sampler.{k}={getattr(args, k)}" for k in ("steps", "gen_length")
                       if getattr(args, k) is not None]
    if args.adapter:
        args.overrides.append(f"eval.adapter={args.adapter}")
    try:
        cfg = config_or_dump(args)
        if cfg is None:
            return 0
        mode = resolve_mode(args.mode, cfg.eval.mode, args.task or cfg.eval.task, args.prompts or cfg.eval.prompts)
        if mode == "likelihood":
            if args.sampler:
                raise InferenceError(f"--sampler {args.sampler}: likelihood mode samples nothing (its knobs are the "
                                     f"`likelihood` section); use --mode generate to sample")
            run_likelihood(cfg, model=args.model, task=args.task, out=args.out, split=args.split, limit=args.limit,
                           prompts=args.prompts)
        else:
            run_inference(cfg, model=args.model, task=args.task, out=args.out, split=args.split, limit=args.limit,
                          sampler=args.sampler, prompts=args.prompts)
    except (ConfigError, UnknownNameError, InferenceError, ModelSourceError) as e:
        print(f"mdm infer: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
