"""RL on CPU that learns: GRPO (`mdm rl`, through Ray) from an arithmetic demo model (on larger operands, or
trained on noisy demonstrations), against SFT from the same model for the same wall time, over seeds.

    python experiments/arithmetic.py --budget ci --out outputs/arithmetic-ci          # the base (~6 min)
    python experiments/rl_arithmetic.py --base outputs/arithmetic-ci/model --seeds 0,1,2
    python experiments/rl_arithmetic.py --base ... --seeds 0 --set train.max_steps=100 --no-sft   # quicker
    python experiments/rl_arithmetic.py --base ... --compare d1,coupled --seeds 1,2,3   # estimators, paired

    # Noisy demonstrations: a base trained on responses whose answer is off by one 60% of the time
    python experiments/arithmetic.py --budget ci --label-noise 0.6 --samplers llada --out outputs/arithmetic-noisy
    python experiments/rl_arithmetic.py --base outputs/arithmetic-noisy/model --seeds 1,2,3 \
        --set 'rl.task_args={max_operand: 12, n_train: null, n_test: 100, seed: 42, label_noise: 0.6}' \
        --set train.max_steps=150 --set rl.eval_steps=0 --set rl.logp_estimator=coupled --set rl.beta=0 \
        --set train.lr=1e-4                        # the README's 3-seed figures (about 8 minutes a seed)

RL and SFT train on the task `rl.task_args` builds and are scored on its held-out problems. By default that is
the `arithmetic` task's default space (operands 0-20, 2,000 training problems, 200 held out), while the base
was trained on operands 0-12 (held-out problems with both operands <= 12 may have been in the base's training
split). With the base's own split and its `label_noise` (the second pair of commands), SFT continues on the
same noisy demonstrations the base learned from, while RL's reward is the right answer. Scoring is greedy
(`sampler.temperature 0`, the demo's sampler), exactly as the demo scores. Per seed: RL runs `rl_driver` (an
embedded Ray: one learner worker and one rollout actor, `experiments/configs/rl_arithmetic.yaml`) for
`train.max_steps` steps and its wall time is measured; SFT then trains a copy of the base on the same training
split (responses, the demo's in-process Trainer) until the same wall time has passed. Writes
`<out>/summary.json` with the base's, RL's and SFT's exact match per seed and the paired differences (mean,
95% t interval over seeds).

`--compare EST,EST,...` runs a comparison instead (`mdm.platform.compare`: `compare.grid` over
`rl.logp_estimator`, each cell an `mdm rl` job from the base, scored greedy by batch inference on the same
held-out problems, paired by seed against the first estimator, reward curves per configuration; one MLflow
parent run, its table printed and written under `<out>/rl/<comparison>/`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

# experiments/arithmetic.py: Python puts a script's own directory first on sys.path
from arithmetic import CONFIGS, encode_split, evaluate

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True,
                   help="the SFT model to start from (experiments/arithmetic.py's <out>/model)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="config override for the RL run (repeatable)")
    p.add_argument("--no-sft", action="store_true", help="skip the SFT baseline")
    p.add_argument("--compare", default=None, metavar="EST,EST",
                   help="compare these rl.logp_estimator values over --seeds instead (paired against the first)")
    p.add_argument("--out", default="outputs/rl_arithmetic")
    return p.parse_args(argv)


def interval(diffs: list[float]) -> dict[str, float]:
    """Mean of paired differences with its 95% t interval (n - 1 degrees of freedom)."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return {"mean": mean, "n": n}
    half = T975.get(n - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


class DeadlineReporter:
    """The Trainer's reporter for the SFT baseline: stops at the first logging step past `deadline`."""

    keeps_checkpoints = False

    def __init__(self, deadline: float) -> None:
        self.deadline, self.steps = deadline, 0

    @property
    def stopping(self) -> bool:
        return time.time() > self.deadline

    def begin(self, kept_through: Optional[int]) -> None: ...
    def log(self, step: int, metrics: dict[str, float]) -> None: ...
    def tags(self, tags: dict[str, str]) -> None: ...

    def report(self, metrics: dict[str, float], save: Any, final: bool) -> None:
        self.steps = int(metrics["step"])


def score(model_dir: str, cfg: Any, task: Any, out: Path) -> float:
    from mdm.engines.llada_plus.model_build import build_model
    from mdm.platform.tokenizer import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = build_model(cfg.model, model_dir, tokenizer=tok).eval()
    _, examples = encode_split(task, tok, "test", cfg.sampler.gen_length)
    return evaluate(model, tok, task, examples, dataclasses.replace(cfg.sampler, temperature=0.0), out)["accuracy"]


def sft_for(seconds: float, base: str, cfg: Any, task: Any, out: Path) -> tuple[float, int]:
    """SFT of the base on the task's training split until `seconds` have passed; (exact match, steps)."""
    from mdm.engines.llada_plus.model_build import build_model
    from mdm.engines.llada_plus.objective import build_objective
    from mdm.platform.tokenizer import load_tokenizer
    from mdm.platform.train.sources import MemoryBatches
    from mdm.platform.train.trainer import Trainer
    from mdm.tasks.data import collate

    tok = load_tokenizer(base)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, base, tokenizer=tok)
    rows, examples = encode_split(task, tok, "train", cfg.sampler.gen_length)
    tcfg = dataclasses.replace(cfg.train, batch_size_per_gpu=64, max_steps=100_000, lr_scheduler_type="constant",
                               lr_scheduler_kwargs={}, warmup_steps=0, lr=5e-4)
    data = {k: torch.from_numpy(v) for k, v in collate(rows, pad_id=tok.pad_token_id, max_len=tcfg.max_len).items()}
    reporter = DeadlineReporter(time.time() + seconds)
    trainer = Trainer(model, build_objective(tcfg), train_cfg=tcfg, ds_cfg=cfg.deepspeed, total_steps=100_000,
                      steps_per_epoch=max(1, len(rows) // 64), reporter=reporter, device=torch.device("cpu"),
                      source=MemoryBatches(data, None, batch_size=64, seed=cfg.train.seed))
    trainer.fit()
    _, test = encode_split(task, tok, "test", cfg.sampler.gen_length)
    model.eval()
    return evaluate(model, tok, task, test, dataclasses.replace(cfg.sampler, temperature=0.0), out)["accuracy"], \
        trainer.state.step


def rl_config(args: argparse.Namespace, out: Path, extra: Sequence[str]) -> Any:
    from mdm.platform.config import load_config

    files = [str(CONFIGS / f) for f in ("base.yaml", "arithmetic.yaml", "rl_arithmetic.yaml")]
    return load_config(files, [f"train.model={args.base}", f"data.tokenizer={args.base}",
                               f"ray.storage_path={out / 'ray'}", f"train.output_dir={out / 'rl'}",
                               f"tracking.tracking_uri=sqlite:///{out.resolve()}/mlruns.db", *extra, *args.overrides])


def compare(args: argparse.Namespace, out: Path) -> int:
    """`--compare`: the estimators as a comparison over the seeds (see the module docstring)."""
    from mdm.platform.compare.compare import run_comparison
    from mdm.platform.config_ops import flatten, with_overrides
    from mdm.platform.registry import get_registry

    ests = args.compare.split(",")
    # One cell at a time on 2 CPUs: the trial's function (0.1), the learner (0.9) and the actor (1).
    cfg = rl_config(args, out, ["tune.cpus_per_trial=0.1", "ray.cpus_per_worker=0.9",
                                "compare.runner=ray_train", "compare.equalize=batch", f"compare.seeds=[{args.seeds}]",
                                f"compare.grid={{rl.logp_estimator: [{', '.join(ests)}]}}",
                                "compare.paired_metrics=[eval/accuracy]", "tracking.experiment_name=rl_compare"])
    first = with_overrides(cfg, {"rl.logp_estimator": ests[0]})
    res = run_comparison(with_overrides(cfg, {"compare.baseline": get_registry("engines").get(cfg.engine).label(
        flatten(first))}), argv=["rl_arithmetic.py", *(args.argv or [])])
    print(res.table)
    return 0 if all(r["status"] == "FINISHED" for r in res.rows) else 1


def run_seed(seed: int, args: argparse.Namespace, task: Any, out: Path) -> dict[str, Any]:
    from mdm.platform.rl.driver import rl_driver

    cfg = rl_config(args, out, [f"train.seed={seed}"])
    t0 = time.time()
    result = rl_driver(cfg, run_name=f"rl-seed{seed}")
    rl_s = time.time() - t0
    row: dict[str, Any] = {"seed": seed, "rl_s": rl_s, "rl_steps": result.metrics["step"],
                           "rl": score(result.metrics["export_dir"], cfg, task, out)}
    if not args.no_sft:
        row["sft"], row["sft_steps"] = sft_for(rl_s, args.base, cfg, task, out)
    print(json.dumps(row), flush=True)
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from mdm.platform.config import load_config
    from mdm.tasks.arithmetic import Arithmetic

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        return compare(args, out)
    task = Arithmetic(**rl_config(args, out, []).rl.task_args)  # the RL run's task (rl.task_args): scored, SFT's
    cfg = load_config([str(CONFIGS / "base.yaml"), str(CONFIGS / "arithmetic.yaml")], [])
    base = score(args.base, cfg, task, out)
    print(f"base: exact match {base:.3f} on {task.n_test} held-out problems (operands 0-{task.max_operand})",
          flush=True)
    rows = [run_seed(int(s), args, task, out) for s in args.seeds.split(",")]
    summary: dict[str, Any] = {"base": base, "seeds": rows,
                               "rl_minus_base": interval([r["rl"] - base for r in rows])}
    if not args.no_sft:
        summary["sft_minus_base"] = interval([r["sft"] - base for r in rows])
        summary["rl_minus_sft"] = interval([r["rl"] - r["sft"] for r in rows])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
