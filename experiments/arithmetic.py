"""The fully offline demo: a tiny LLaDA trained from scratch on generated arithmetic, scored with both samplers.

    python experiments/arithmetic.py                         # full budget (goal: >= 90% exact match, < 10 min)
    python experiments/arithmetic.py --budget ci             # reduced: well above chance, not converged
    python experiments/arithmetic.py --set train.max_steps=800 --set model.n_layers=2 --out /tmp/arith

Nothing is downloaded: problems come from the `arithmetic` task pack (addition and subtraction word
problems with operands 0-12 by default; 200 are held out and every other problem of the space is trained on:
a held-out problem never appears in training, though the same sum may, asked by another template), the
tokenizer is a byte-level BPE trained here on the training split (digits one per token),
and the model is `train.model: tiny` built from the `model` section. Training runs in this process on
CPU (the model is ~1M parameters: Ray and DeepSpeed would only add start-up time); every piece is the
platform's own: `load_config`, `build_model`, the LLaDA+ objective stepped by the platform's one Trainer
(`mdm.platform.train.trainer`, on in-memory batches), the registered samplers, the task's prompt encoding
and scoring.

Each response is padded with EOS to exactly `sampler.gen_length` tokens, as LLaDA's SFT does: the model
learns to fill the whole answer window (answer, then EOS), which is what the samplers ask of it.
Writes `<out>/summary.json`, `<out>/predictions_<sampler>.jsonl` and the trained model with its tokenizer in
`<out>/model` (`save_pretrained`), which the platform's tools load like any other checkpoint:

    mdm generate --model outputs/arithmetic/model --config experiments/configs/arithmetic.yaml \\
        --prompt "What is 7 plus 5?"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

CONFIGS = Path(__file__).resolve().parent / "configs"
# --budget ci: a reduced run (~250-340 CPU-seconds) whose learning goal `python bench/arithmetic_demo.py --budget ci
# --check` checks; the test suite runs the demo smaller still (tests/experiments/test_arithmetic_demo.py).
BUDGETS = {"full": [], "ci": ["train.max_steps=1200", "train.warmup_steps=40"]}
BUDGET_TEST_SIZE = {"full": 200, "ci": 100}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", choices=sorted(BUDGETS), default="full", help="full (the demo) or ci (reduced)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="config override, e.g. --set train.lr=1e-3 (repeatable; wins over --budget)")
    p.add_argument("--config", action="append", default=[], metavar="YAML", help="extra config overlay")
    p.add_argument("--samplers", default="llada,fast", help="comma-separated sampler names to evaluate")
    p.add_argument("--n-train", type=int, default=None,
                   help="training problems (default: every problem not held out)")
    p.add_argument("--n-test", type=int, default=None, help="held-out problems (default: by budget)")
    p.add_argument("--max-operand", type=int, default=12, help="operands in [0, N]")
    p.add_argument("--ops", default="+,-", help="operations, a subset of +,-,*")
    p.add_argument("--label-noise", type=float, default=0.0, metavar="Q",
                   help="train on noisy demonstrations: each response states the answer + 1 with probability Q "
                        "(the held-out gold answers stay right; the base of experiments/rl_arithmetic.py)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--out", default="outputs/arithmetic", help="where the tokenizer, predictions, summary go")
    p.add_argument("--dump_config", action="store_true", help="print the merged config and exit")
    return p.parse_args(argv)


def encode_split(task: Any, tok: Any, split: str, gen_length: Optional[int]) -> tuple[list[dict], list[Any]]:
    """Rows {"input_ids", "prompt_length"} with the response EOS-padded to `gen_length` (None: not padded,
    response + one EOS), and the examples."""
    rows = []
    examples = list(task.examples(split))
    for ex, (ids, plen) in zip(examples, task.encode_examples(tok, examples)):  # prompt + response + EOS
        n_resp = len(ids) - plen
        if gen_length is None:
            rows.append({"input_ids": ids, "prompt_length": plen})
            continue
        if n_resp > gen_length:
            raise ValueError(f"{split} example {ex.id}: response is {n_resp} tokens (with EOS) but "
                             f"sampler.gen_length is {gen_length}; raise --set sampler.gen_length")
        rows.append({"input_ids": ids + [tok.eos_token_id] * (gen_length - n_resp), "prompt_length": plen})
    return rows, examples


def train(model: torch.nn.Module, rows: list[dict], cfg: Any, pad_id: int) -> dict[str, float]:
    """The platform's one Trainer (the LLaDA+ objective, the updater: AdamW, clipping and the
    `train.lr_scheduler_type` schedule, exactly as on Ray) on the rows held in memory (a permutation per
    epoch), one line per logging step on stdout; returns the last logged metrics."""
    from mdm.engines.llada_plus.objective import build_objective
    from mdm.platform.train.workload import plan_steps
    from mdm.platform.train.reporters import PrintReporter
    from mdm.platform.train.sources import MemoryBatches
    from mdm.platform.train.trainer import Trainer
    from mdm.tasks.data import collate

    tcfg = cfg.train
    data = {k: torch.from_numpy(v) for k, v in collate(rows, pad_id=pad_id, max_len=tcfg.max_len).items()}
    total, per_epoch, _ = plan_steps(len(rows), tcfg, 1)
    reporter = PrintReporter()
    trainer = Trainer(model, build_objective(tcfg), train_cfg=tcfg, ds_cfg=cfg.deepspeed, total_steps=total,
                      steps_per_epoch=per_epoch, reporter=reporter, device=torch.device("cpu"),
                      source=MemoryBatches(data, None, batch_size=tcfg.batch_size_per_gpu, seed=tcfg.seed))
    trainer.fit()
    model.eval()
    return reporter.last


@torch.no_grad()
def evaluate(model: Any, tok: Any, task: Any, examples: list[Any], sampler_cfg: Any, out: Path,
             batch_size: int = 100) -> dict[str, float]:
    """Generate for every held-out prompt with `sampler_cfg.name`, score with the task, write predictions."""
    from mdm.platform.infer.generation.generate import generate

    preds, scores, nfe, t0 = [], [], 0, time.time()
    gen = torch.Generator().manual_seed(0)
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        prompts = task.encode_prompts(tok, [ex.prompt for ex in chunk])
        res = generate(model, "llada_plus", dataclasses.replace(sampler_cfg, batch_size=len(chunk)), prompts,
                       tokenizer=tok, generator=gen)
        nfe += res.nfe
        for ex, text in zip(chunk, res.texts or []):
            scores.append(task.score(text, ex.gold_raw))
            preds.append({"task": task.name, "prompt": ex.prompt, "gold_raw": ex.gold_raw, "prediction": text,
                          "meta": {"index": len(preds)}, "id": ex.id})
    with open(out / f"predictions_{sampler_cfg.name}.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in preds)
    return {**task.aggregate(scores), "nfe": nfe, "eval_s": time.time() - t0}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from mdm.engines.llada_plus.model_build import build_model
    from mdm.platform.config import load_config
    from mdm.platform.config_ops import dump_config
    from mdm.tasks.arithmetic import Arithmetic
    from mdm.platform.tokenizer import load_tokenizer
    from mdm.tasks.tokenize import train_bpe

    files = [CONFIGS / "base.yaml", CONFIGS / "arithmetic.yaml", *args.config]
    cfg = load_config([str(f) for f in files], BUDGETS[args.budget] + args.overrides)
    if args.dump_config:
        sys.stdout.write(dump_config(cfg))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(cfg.train.seed)
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_test = args.n_test or BUDGET_TEST_SIZE[args.budget]
    ops = tuple(args.ops.split(","))
    task = Arithmetic(seed=cfg.train.seed, n_train=args.n_train, n_test=n_test, max_operand=args.max_operand,
                      ops=ops, label_noise=args.label_noise)

    texts = [f"{ex.prompt}\n{ex.response}" for ex in task.examples("train")]
    tok = load_tokenizer(train_bpe(texts, str(out / "tokenizer"), vocab_size=320))
    gen_length = cfg.sampler.gen_length
    train_rows, _ = encode_split(task, tok, "train", gen_length)
    _, test_examples = encode_split(task, tok, "test", gen_length)

    model = build_model(cfg.model, cfg.train.model, tokenizer=tok)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"arithmetic: {len(train_rows)} train / {len(test_examples)} held-out problems, "
          f"{n_params / 1e6:.2f}M parameters, {cfg.train.max_steps} steps", flush=True)
    t_train = time.time()
    last = train(model, train_rows, cfg, pad_id=tok.pad_token_id)
    train_s = time.time() - t_train
    model.save_pretrained(out / "model")  # config.json + safetensors: `mdm generate` / `mdm infer --model`
    tok.save_pretrained(out / "model")

    results: dict[str, Any] = {}
    for name in [s for s in args.samplers.split(",") if s]:
        scfg = dataclasses.replace(cfg.sampler, name=name)
        results[name] = evaluate(model, tok, task, test_examples, scfg, out)
        print(f"{name:>6}: accuracy {results[name]['accuracy']:.3f} on {results[name]['n']:.0f} held-out, "
              f"nfe {results[name]['nfe']}, {results[name]['eval_s']:.1f}s", flush=True)
    summary = {"budget": args.budget, "train_steps": last.get("step"), "train_loss": last.get("train/loss"),
               "train_s": train_s, "total_s": time.time() - t_start, "cpu_s": time.process_time(),
               "n_params": n_params,
               "seed": cfg.train.seed, "max_operand": args.max_operand, "ops": list(ops),
               "label_noise": args.label_noise,
               "n_train": len(train_rows), "n_test": len(test_examples), "threads": torch.get_num_threads(),
               "samplers": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
