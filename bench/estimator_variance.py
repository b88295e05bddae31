"""Variance of the LLaDA+ loss / gradient estimators at equal forward cost: Normal, MIRROR, P-POTS.

    python bench/estimator_variance.py                 # arithmetic task, ~5 min on 2 idle CPU cores
    python bench/estimator_variance.py --task gsm8k --data_dir ../shared/data/gsm8k --train_steps 200

1. Build a byte-level BPE tokenizer and a tiny LLaDA model (mdm.tasks.tokenize.train_bpe,
   mdm.engines.llada_plus.model_build.build_model), train it `--train_steps` steps with the plain
   objective (uniform t, Normal masks, AdamW) on the task's train split, then freeze it.
2. On a fixed evaluation batch of B sequences, draw `--draws` independent estimates of the loss and of
   its gradient with each estimator, all through `objective.loss` (the training code path):
     Normal        t ~ U(0,1), 2 independent (t, mask) draws per sequence   -> 2B forward rows
     MIRROR        t ~ U(0,1), 1 antithetic mask pair per sequence          -> 2B forward rows
     PPOTS+EPR     t ~ p(t) (EPR), weight 1/p(t), 2 draws per sequence      -> 2B forward rows
     PPOTS+AP      t ~ p(t) (AP),  weight 1/p(t), 2 draws per sequence      -> 2B forward rows
     PPOTS+MIRROR  t ~ p(t) (EPR), weight 1/p(t), 1 mirror pair per sequence -> 2B forward rows
   so every estimator spends the same 2B sequence-forwards per draw (a MIRROR pair counts as 2).
   p(t) is estimated once with `objective.prepare` (EPR) on training sequences of the frozen model;
   the AP fit and PPOTS+MIRROR reuse that measurement of w(t).
3. Print, as ratios to Normal measured in the same run: Var[loss estimate], Var[||grad||] and
   tr Cov[grad] (the total gradient variance), with the mean loss of each (all estimate the same
   expectation; the means should agree within their standard errors).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch

import mdm.tasks  # noqa: E402,F401  (registers the task packs)
from mdm.engines.llada_plus.config import ModelConfig, TrainConfig  # noqa: E402
from mdm.engines.llada_plus.model_build import build_model  # noqa: E402
from mdm.engines.llada_plus.objective import build_objective  # noqa: E402
from mdm.engines.llada_plus.ppots.time_sampling import fit_density  # noqa: E402
from mdm.platform.registry import get_registry  # noqa: E402
from mdm.tasks.data import collate  # noqa: E402
from mdm.tasks.tokenize import train_bpe  # noqa: E402


def load_rows(task_name: str, data_dir: str | None, n: int, tok_dir: str, vocab: int) -> tuple[list, object]:
    """(rows [{"input_ids", "prompt_length"}], tokenizer) for the first n train examples."""
    from transformers import AutoTokenizer

    task = get_registry("tasks").get(task_name)(data_dir=data_dir)
    examples = [task.to_example(raw, i) for i, raw in zip(range(n), task.load_split("train"))]
    texts = [e.prompt + " " + e.response for e in examples]
    tokenizer = AutoTokenizer.from_pretrained(train_bpe(texts, tok_dir, vocab_size=vocab))
    encoded = task.encode_examples(tokenizer, examples)
    return [{"input_ids": ids, "prompt_length": pl} for ids, pl in encoded], tokenizer


def to_torch(rows: list, pad_id: int, max_len: int) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in collate(rows, pad_id=pad_id, max_len=max_len).items()}


def train(model: torch.nn.Module, rows: list, pad_id: int, args: argparse.Namespace) -> float:
    """Plain-objective AdamW training; returns the mean loss of the last 20 steps."""
    obj = build_objective(TrainConfig(lr=args.lr))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    losses = []
    model.train()
    for step in range(args.train_steps):
        idx = rng.choice(len(rows), args.train_batch, replace=False)
        loss, _ = obj.loss(model, to_torch([rows[i] for i in idx], pad_id, args.max_len), g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % max(args.train_steps // 5, 1) == 0:
            print(f"  train step {step + 1}/{args.train_steps}: loss {np.mean(losses[-20:]):.3f}", flush=True)
    return float(np.mean(losses[-20:]))


def measure(model: torch.nn.Module, obj, batch: dict[str, torch.Tensor], draws: int, seed: int) -> dict:
    """Per-draw loss, grad norm and running gradient moments (Welford) for one estimator."""
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(seed)
    losses, norms = [], []
    mean = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    m2 = torch.zeros_like(mean)
    for r in range(draws):
        model.zero_grad(set_to_none=True)
        loss, _ = obj.loss(model, batch, g)
        loss.backward()
        flat = torch.cat([p.grad.reshape(-1) for p in params]).double()
        losses.append(loss.item())
        norms.append(flat.norm().item())
        delta = flat - mean
        mean += delta / (r + 1)
        m2 += delta * (flat - mean)
    losses, norms = np.array(losses), np.array(norms)
    return {"loss_mean": losses.mean(), "loss_se": losses.std(ddof=1) / math.sqrt(draws),
            "var_loss": losses.var(ddof=1), "var_gnorm": norms.var(ddof=1),
            "tr_cov_grad": float(m2.sum()) / (draws - 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--n_examples", type=int, default=2000)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--max_len", type=int, default=96)
    ap.add_argument("--train_steps", type=int, default=250)
    ap.add_argument("--train_batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval_batch", type=int, default=8, help="B: sequences in the fixed evaluation batch")
    ap.add_argument("--draws", type=int, default=200, help="independent estimates per estimator")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    with tempfile.TemporaryDirectory() as tok_dir:
        rows, tokenizer = load_rows(args.task, args.data_dir, args.n_examples, tok_dir, args.vocab)
    model_cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=192, max_sequence_length=256)
    model = build_model(model_cfg, "tiny", tokenizer)
    pad_id = model.config.pad_token_id
    eval_rows, train_rows = rows[:args.eval_batch], rows[args.eval_batch:]
    print(f"{args.task}: {len(train_rows)} train sequences, mean length "
          f"{np.mean([len(r['input_ids']) for r in rows]):.1f}; model "
          f"{sum(p.numel() for p in model.parameters()) / 1e3:.0f}k params", flush=True)
    final = train(model, train_rows, pad_id, args)
    print(f"trained {args.train_steps} steps in {time.perf_counter() - start:.0f}s, final loss {final:.3f}")

    batch = to_torch(eval_rows, pad_id, args.max_len)
    doubled = {k: v.repeat(2, 1) for k, v in batch.items()}  # 2 independent draws per sequence
    ppots_batches = [to_torch(train_rows[i:i + 32], pad_id, args.max_len) for i in range(0, 128, 32)]
    common = dict(num_samples_x0=128, num_samples_t=16, num_samples_xt=2, max_tokens_per_forward=8192,
                  seed=args.seed, n_starts=4)
    # w(t) is measured once (objective.prepare, EPR fit); AP and PPOTS+MIRROR reuse that measurement.
    t0 = time.perf_counter()
    epr = build_objective(TrainConfig(PPOTS=True, p_model="EPR", **common))
    epr.prepare(model, ppots_batches, "cpu")
    print(f"  P-POTS estimate + EPR fit in {time.perf_counter() - t0:.0f}s; EPR params "
          + ", ".join(f"{k}={v:.3g}" for k, v in epr.fitted.params.items()), flush=True)
    ap_state = epr.state_dict()
    ap_density = fit_density("AP", epr.stats.grid, epr.stats.w, mix_uniform=0.1)
    ap_state.update(density=ap_density.state_dict(), fitted=ap_density.fitted.state_dict())
    estimators = {
        "Normal": (TrainConfig(**common), None, doubled),
        "MIRROR": (TrainConfig(train_mode="MIRROR", **common), None, batch),
        "PPOTS+EPR": (TrainConfig(PPOTS=True, p_model="EPR", **common), epr.state_dict(), doubled),
        "PPOTS+AP": (TrainConfig(PPOTS=True, p_model="AP", **common), ap_state, doubled),
        "PPOTS+MIRROR": (TrainConfig(PPOTS=True, p_model="EPR", train_mode="MIRROR", **common),
                         epr.state_dict(), batch),
    }
    results = {}
    for name, (cfg, state, b) in estimators.items():
        obj = build_objective(cfg)
        if state is not None:
            obj.load_state_dict(state)
        results[name] = measure(model, obj, b, args.draws, args.seed + 1)
        print(f"  measured {name} ({time.perf_counter() - start:.0f}s)", flush=True)

    base = results["Normal"]
    # A variance ratio from R draws each has relative standard error about sqrt(4 / R) (normal data).
    print(f"\nEstimator variance at equal cost ({2 * args.eval_batch} sequence-forwards per draw, {args.draws} "
          f"draws; ratio SE ~ +-{math.sqrt(4 / args.draws):.0%} relative)")
    print(f"{'estimator':<14}{'mean loss':>16}{'Var[loss]':>12}{'Var[|grad|]':>13}{'trCov[grad]':>13}")
    for name, r in results.items():
        print(f"{name:<14}{r['loss_mean']:>10.4f}±{r['loss_se']:.3f}{r['var_loss'] / base['var_loss']:>12.3f}"
              f"{r['var_gnorm'] / base['var_gnorm']:>13.3f}{r['tr_cov_grad'] / base['tr_cov_grad']:>13.3f}")
    print(f"(Normal absolute: Var[loss] {base['var_loss']:.4g}, Var[|grad|] {base['var_gnorm']:.4g}, "
          f"trCov[grad] {base['tr_cov_grad']:.4g}; total {time.perf_counter() - start:.0f}s wall, "
          f"{time.process_time():.0f}s CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
