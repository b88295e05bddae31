"""How much variance P-POTS can remove, predicted before training and realised on the same batches.

    python bench/ppots_gain.py                       # arithmetic, EOS-padded (to 32) and unpadded answers
    python bench/ppots_gain.py --settings unpadded --train_steps 1500 --draws 64

For each setting: train the tiny LLaDA of bench/estimator_variance.py for `--train_steps` plain steps on the
task, freeze it, then
1. measure the per-t moments of the loss and of the gradient (ppots/measure.measure_moments, target grad: the
   exact one-masked-token part plus sampled k >= 2 masks on a t = u^2 grid);
2. print R* (the optimal proposal q* ∝ w) and, for each p_model (EPR: the paper's form; EPRS: EPR plus a
   t^-1/2 term) fitted to the loss's w and to the gradient's w (mixed with uniform by 0.1, weights capped at
   10, as training uses them), R of the loss and of the gradient estimate (ppots/moments.variance_ratio);
3. beside it, the ESS fraction of the importance weights (which P-POTS runs log, and which does NOT measure
   the gain) and the realised ratios: tr Cov[g] with the fitted density over tr Cov[g] with uniform t, from
   `--draws` estimates each on the same batch (estimator_diagnostics.realised_grad_variance).
R < 1 is less variance than uniform t; 1 / R is the batch multiplier that would buy the same.
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
import torch  # noqa: E402

from estimator_variance import load_rows, to_torch, train  # noqa: E402  (bench/: the same model and training)
from mdm.engines.llada_plus.config import ModelConfig  # noqa: E402
from mdm.engines.llada_plus.estimator_diagnostics import realised_grad_variance  # noqa: E402
from mdm.engines.llada_plus.model_build import build_model  # noqa: E402
from mdm.engines.llada_plus.ppots.measure import measure_moments  # noqa: E402
from mdm.engines.llada_plus.ppots.moments import grid_weights, make_grid, variance_ratio  # noqa: E402
from mdm.engines.llada_plus.ppots.time_sampling import TimeSampler, fit_density  # noqa: E402

MIX, CAP = 0.1, 10.0


def ess_frac(pdf, cap: float) -> float:
    """Kish's ESS fraction of the weights min(1/q, cap) for t ~ q, by quadrature on a fine grid."""
    t = (np.arange(200_000) + 0.5) / 200_000
    q = pdf(t)
    w = np.minimum(1.0 / np.maximum(q, 1e-300), cap)
    return float(np.mean(q * w) ** 2 / np.mean(q * w * w))


def setting_rows(rows: list, padded: bool, eos: int, window: int) -> list:
    if not padded:
        return rows
    return [{"input_ids": r["input_ids"] + [eos] * max(0, window - (len(r["input_ids"]) - r["prompt_length"])),
             "prompt_length": r["prompt_length"]} for r in rows]


def measure(model, rows: list, pad_id: int, args: argparse.Namespace) -> list[tuple]:
    batches = [to_torch(rows[i:i + 32], pad_id, args.max_len) for i in range(0, args.n_moment, 32)]
    m = measure_moments(model, batches, mask_id=model.config.mask_token_id, grid=make_grid("sqrt", 16),
                        grid_weights=grid_weights("sqrt", 16), num_samples_x0=args.n_moment, num_samples_xt=4,
                        max_tokens_per_forward=8192, target="grad", seed=args.seed)
    fit_grid = make_grid("sqrt", 64)
    batch = to_torch(rows[:args.eval_batch], pad_id, args.max_len)
    out = [("optimal q*", "-", m["loss"].r_star(), m["grad"].r_star(), float("nan"), float("nan"), float("nan"))]
    for p_model in ("EPR", "EPRS"):
        for target in ("loss", "grad"):
            dens = fit_density(p_model, fit_grid, np.maximum(m[target].w(fit_grid), 1e-12), mix_uniform=MIX,
                               n_starts=4, seed=args.seed)
            r = realised_grad_variance(model, batch, TimeSampler(dens, CAP), mask_id=model.config.mask_token_id,
                                       draws=args.draws, seed=args.seed + 1)
            out.append((p_model, target, variance_ratio(m["loss"], dens.pdf, CAP),
                        variance_ratio(m["grad"], dens.pdf, CAP), ess_frac(dens.pdf, CAP), r["realised_loss_R"],
                        r["realised_grad_R"]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--settings", default="padded,unpadded", help="padded (EOS to --window) and/or unpadded")
    ap.add_argument("--window", type=int, default=32, help="answer window of the padded setting (EOS-filled)")
    ap.add_argument("--n_examples", type=int, default=2000)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--max_len", type=int, default=96)
    ap.add_argument("--train_steps", type=int, default=600)
    ap.add_argument("--train_batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--n_moment", type=int, default=64, help="sequences behind the moments")
    ap.add_argument("--eval_batch", type=int, default=8, help="sequences in the batch of the realised ratios")
    ap.add_argument("--draws", type=int, default=64, help="gradient estimates per sampler for the realised ratio")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tok_dir:
        base_rows, tokenizer = load_rows(args.task, args.data_dir, args.n_examples, tok_dir, args.vocab)
    print(f"R = Var(estimate with q) / Var(estimate with uniform t); weights min(1/q, {CAP:g}), q mixed with "
          f"uniform by {MIX}; realised from {args.draws} gradient draws per sampler on {args.eval_batch} sequences "
          f"(ratio SE ~ +-{math.sqrt(4 / args.draws):.0%} relative)")
    for setting in args.settings.split(","):
        torch.manual_seed(args.seed)
        model = build_model(ModelConfig(d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=192,
                                        max_sequence_length=256), "tiny", tokenizer)
        pad_id, eos = model.config.pad_token_id, model.config.eos_token_id
        rows = setting_rows(base_rows, setting == "padded", eos, args.window)
        n_ans = np.mean([len(r["input_ids"]) - r["prompt_length"] for r in rows])
        final = train(model, rows[args.eval_batch:], pad_id, args)
        print(f"\n[{args.task}, {setting}: {n_ans:.1f} answer tokens, {args.train_steps} steps, loss {final:.3f}]")
        print(f"{'proposal':<12}{'fit to':>7}{'R loss':>9}{'R grad':>9}{'ESS':>8}{'real. loss':>12}{'real. grad':>12}")
        for name, target, rl, rg, ess, real_l, real_g in measure(model, rows, pad_id, args):
            print(f"{name:<12}{target:>7}{rl:>9.3f}{rg:>9.3f}{ess:>8.3f}{real_l:>12.3f}{real_g:>12.3f}")
    print(f"\n({time.perf_counter() - start:.0f} s wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
