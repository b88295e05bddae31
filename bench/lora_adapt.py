"""LoRA against a full fine-tune on CPU: adapt the arithmetic demo's model to a shifted task (#24 item 7).

    python bench/lora_adapt.py                              # trains the base first (the demo at --budget ci)
    python bench/lora_adapt.py --base outputs/arithmetic --steps 400 --out /tmp/lora_adapt

The base is experiments/arithmetic.py's model (addition and subtraction, operands 0-12), trained here unless
`--base` names the output directory of such a run. The shifted task is the same problems with operands 0-20:
both fine-tunes train on its training split, the same steps from the base's weights, with the platform's one
Trainer (the LLaDA+ objective, AdamW, the demo's schedule); one with `model.lora.r` (PEFT adapters on the block
projections, the base frozen), one of every weight. They are scored on the shifted task's held-out problems that
have an operand above 12 (none of which the base can have seen) with the `llada` sampler, and so is the base.

Printed, per model: held-out exact match, trainable parameters, seconds per training step (wall, each fine-tune
alone in a fresh process on the same threads), the training state held in fp32 (weights + gradients + AdamW's
two moments, counted from the parameters that train: the figures `mdm plan` gives and its tests check against
the live tensors), and the process's peak RSS. Then the paired differences in exact match over the same problems
(LoRA - base, full - base, LoRA - full), each with a 95% confidence interval (normal approximation on the
per-problem differences) and n. Writes `<out>/summary.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
BASE_MAX, SHIFT_MAX = 12, 20
ANSWER = re.compile(r"^(\d+) ([+\-*]) (\d+) = (\d+)\n#### (\d+)$")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", help="an experiments/arithmetic.py output dir (default: train one at --budget ci)")
    p.add_argument("--steps", type=int, default=400, help="fine-tuning steps, the same for LoRA and full")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-lr", type=float, default=5e-3, help="LoRA's learning rate (adapters start at zero)")
    p.add_argument("--full-lr", type=float, default=1e-3, help="the full fine-tune's learning rate")
    p.add_argument("--n-test", type=int, default=400,
                   help="held-out problems of the shifted task, before keeping those with an operand above 12")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="outputs/lora_adapt")
    p.add_argument("--variant", choices=("base", "lora", "full"), help=argparse.SUPPRESS)  # a child process
    return p.parse_args()


def shifted_task(seed: int, n_test: int):
    from mdm.tasks.arithmetic import Arithmetic

    return Arithmetic(seed=seed, n_train=None, n_test=n_test, max_operand=SHIFT_MAX)


def unseen(examples: list) -> list:
    """The held-out problems with an operand above the base's range."""
    out = []
    for ex in examples:
        m = ANSWER.match(ex.gold_raw)
        if m and max(int(m.group(1)), int(m.group(3))) > BASE_MAX:
            out.append(ex)
    return out


def child(args: argparse.Namespace) -> None:
    """One model in this process: fine-tune it (lora/full) or not (base), score it, write <out>/<variant>.json."""
    import torch

    sys.path.insert(0, str(REPO))
    from experiments.arithmetic import encode_split, evaluate, train
    from mdm.engines.llada_plus.model_build import build_model
    from mdm.platform.config import load_config
    from mdm.platform.tokenizer import load_tokenizer

    torch.set_num_threads(args.threads)
    model_dir = Path(args.base) / "model"
    sets = [f"train.model={model_dir}", f"train.max_steps={args.steps}", "train.warmup_steps=20",
            "train.logging_steps=100"]
    if args.variant == "lora":
        sets += [f"model.lora.r={args.lora_r}", f"model.lora.alpha={2 * args.lora_r}", f"train.lr={args.lora_lr}"]
    else:
        sets += [f"train.lr={args.full_lr}"]
    cfg = load_config([str(CONFIGS / "base.yaml"), str(CONFIGS / "arithmetic.yaml")], sets)
    torch.manual_seed(cfg.train.seed)
    tok = load_tokenizer(str(model_dir))
    task = shifted_task(cfg.train.seed, args.n_test)
    rows, _ = encode_split(task, tok, "train", cfg.sampler.gen_length)
    test = unseen(list(task.examples("test")))
    model = build_model(cfg.model, str(model_dir), tokenizer=tok)
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    report = {"variant": args.variant, "params_total": sum(p.numel() for p in params),
              "params_trainable": trainable if args.variant != "base" else 0, "steps": 0, "s_per_step": None}
    if args.variant != "base":
        t0 = time.perf_counter()
        last = train(model, rows, cfg, pad_id=tok.pad_token_id)
        report.update(steps=int(last.get("step", args.steps)), s_per_step=(time.perf_counter() - t0) / args.steps,
                      train_loss=last.get("train/loss"))
        # fp32 training state: every weight, and for what trains a gradient and AdamW's two moments
        report["state_mib"] = 4 * (report["params_total"] + 3 * trainable) / 2**20
    out = Path(args.out) / args.variant
    out.mkdir(parents=True, exist_ok=True)
    res = evaluate(model.eval(), tok, task, test, cfg.sampler, out)
    scores = [json.loads(line) for line in (out / f"predictions_{cfg.sampler.name}.jsonl").read_text().splitlines()]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    report.update(accuracy=res["accuracy"], n=len(test), peak_rss_mib=peak,
                  correct=[int(task.score(r["prediction"], r["gold_raw"])) for r in scores])
    (Path(args.out) / f"{args.variant}.json").write_text(json.dumps(report))


def paired(a: list[int], b: list[int]) -> tuple[float, float, float, int]:
    """Mean of a - b over the same problems, its 95% CI (normal approximation), n."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main() -> None:
    args = parse_args()
    if args.variant:
        return child(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.base:
        args.base = str(out / "base_run")
        print(f"training the base: experiments/arithmetic.py --budget ci -> {args.base}", flush=True)
        run([sys.executable, "experiments/arithmetic.py", "--budget", "ci", "--samplers", "llada",
             "--threads", str(args.threads), "--out", args.base])
    rep = {}
    for variant in ("base", "lora", "full"):
        run([sys.executable, __file__, "--variant", variant, "--base", args.base, "--steps", str(args.steps),
             "--lora-r", str(args.lora_r), "--lora-lr", str(args.lora_lr), "--full-lr", str(args.full_lr),
             "--n-test", str(args.n_test), "--threads", str(args.threads), "--out", str(out)])
        rep[variant] = json.loads((out / f"{variant}.json").read_text())
        r = rep[variant]
        sps = f"{r['s_per_step']:.3f}" if r["s_per_step"] else "-"
        state = f"{r['state_mib']:.1f}" if "state_mib" in r else "-"
        print(f"{variant:>5}: exact match {r['accuracy']:.3f} (n={r['n']}), trainable {r['params_trainable']:,} of "
              f"{r['params_total']:,}, {sps} s/step, fp32 training state {state} MiB, peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB", flush=True)
    diffs = {}
    for a, b in (("lora", "base"), ("full", "base"), ("lora", "full")):
        mean, lo, hi, n = paired(rep[a]["correct"], rep[b]["correct"])
        diffs[f"{a}-{b}"] = {"mean": mean, "ci95": [lo, hi], "n": n}
        print(f"{a} - {b}: {mean:+.3f} exact match, 95% CI [{lo:+.3f}, {hi:+.3f}], n={n} paired problems")
    ratio = rep["lora"]["s_per_step"] / rep["full"]["s_per_step"]
    print(f"LoRA/full: {rep['lora']['params_trainable'] / rep['full']['params_trainable']:.3f} of the trainable "
          f"parameters, {ratio:.2f}x the step time, {rep['lora']['state_mib'] / rep['full']['state_mib']:.2f}x the "
          f"training state")
    summary = {"steps": args.steps, "base": args.base, "models": {k: {x: y for x, y in v.items() if x != "correct"}
                                                                   for k, v in rep.items()}, "paired": diffs}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
