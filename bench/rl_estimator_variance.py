"""Variance of the GRPO gradient under each policy log-probability estimator (`rl.logp_estimator`), measured
side by side on one rollout batch.

    python experiments/arithmetic.py --budget ci --out outputs/arithmetic-ci        # a model that half-knows it
    python bench/rl_estimator_variance.py --model outputs/arithmetic-ci/model       # ~2 min on 2 CPU cores

1. Sample a rollout batch from the model as `mdm rl` does: `--prompts` prompts of the `arithmetic` task's
   train split (operands 0-20) x `--generations` completions each (the demo's sampler at temperature 0.9,
   through the one generation path), rewarded with the task's exact match, group-normalised advantages
   (d1: reward minus its group's mean), the learner's rows built by `rl.source.rollout_rows`.
2. Draw `--draws` independent estimates of the GRPO gradient (mu = 1, beta = 0: the policy-gradient term,
   `objective.loss` of the engine's GRPO objective, each draw with its own mask seed) under
     d1         one random prompt mask (p = 0.3), completion fully masked      1 forward per row
     d1 x2      two independent d1 draws averaged                               2 forwards per row
     mirror     one antithetic pair of prompt masks (u < p, u > 1 - p)           2 forwards per row
     coupled    a completion mask at ratio t ~ U(0,1) and its complement        2 forwards per row
     coupled+s  coupled with the rows' t stratified over [0, 1)                 2 forwards per row
3. Print tr Cov[grad] (the total gradient variance over draws), its ratio to d1 x2 (equal forward cost), the
   norm of the expected gradient (the mean's norm less the draws' noise in it), the signal-to-noise ratio
   |E grad| / sqrt(tr Cov) of one draw, and the cosine between each estimator's mean gradient and d1 x2's. d1, d1 x2 and
   mirror estimate the same target; coupled and coupled+s a different one (every completion token scored with
   part of the completion visible), so their mean gradients point elsewhere by design.
"""

from __future__ import annotations

import argparse
import time

import torch

import mdm.tasks  # noqa: F401  (registers the task packs)
from mdm.engines.llada_plus.config import ModelConfig, SamplerConfig
from mdm.engines.llada_plus.model_build import build_model
from mdm.engines.llada_plus.rl.objective import build_rl_objective
from mdm.platform.infer.generation.generate import generate
from mdm.platform.rl.rl_config import RLConfig
from mdm.platform.rl.source import rollout_rows
from mdm.platform.tokenizer import load_tokenizer
from mdm.tasks.arithmetic import Arithmetic

ESTIMATORS = {"d1": ("d1", False, 1), "d1 x2": ("d1", False, 2), "mirror": ("mirror", False, 1),
              "coupled": ("coupled", False, 1), "coupled+s": ("coupled", True, 1)}


def rollout_batch(model: torch.nn.Module, tok: object, prompts: int, generations: int, seed: int) -> dict:
    task = Arithmetic()
    examples = list(task.examples("train", limit=prompts))
    ids = task.encode_prompts(tok, [e.prompt for e in examples])
    repeated = [p for p in ids for _ in range(generations)]
    golds = [e.gold_raw for e in examples for _ in range(generations)]
    sampler = SamplerConfig(gen_length=16, block_length=16, steps=16, temperature=0.9, batch_size=len(repeated))
    out = generate(model, "llada_plus", sampler, repeated, tokenizer=tok, generator=torch.Generator().manual_seed(seed))
    rewards = torch.tensor([task.reward(t, g) for t, g in zip(out.texts, golds)])
    rows = rollout_rows(repeated, out.ids, tok.pad_token_id, tok.eos_token_id, sampler.gen_length)
    return {**rows, "rewards": rewards}


def gradients(model: torch.nn.Module, batch: dict, name: str, draws: int, generations: int) -> torch.Tensor:
    estimator, stratify, repeats = ESTIMATORS[name]
    objective = build_rl_objective(RLConfig(num_generations=generations, beta=0.0, logp_estimator=estimator,
                                            stratify_t=stratify))
    mb = {**batch, "advantages": objective.advantages(batch["rewards"]), "iteration": 0, "iterations": 1, "key": 0}
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for d in range(draws):
        model.zero_grad(set_to_none=True)
        for k in range(repeats):
            loss, _ = objective.loss(model, {**mb, "mask_seed": 1_000 * d + 500 * k}, torch.Generator())
            (loss / repeats).backward()
        out.append(torch.cat([p.grad.flatten() for p in params]).double())
    return torch.stack(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a model directory (experiments/arithmetic.py's <out>/model)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--generations", type=int, default=6)
    p.add_argument("--draws", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    tok = load_tokenizer(args.model)
    model = build_model(ModelConfig(), args.model, tokenizer=tok).eval()  # eval: no dropout in the estimate
    batch = rollout_batch(model, tok, args.prompts, args.generations, args.seed)
    r = batch["rewards"]
    print(f"rollout batch: {args.prompts} prompts x {args.generations}, mean reward {float(r.mean()):.3f}, "
          f"{int((r.view(-1, args.generations).std(dim=1) > 0).sum())} groups with a non-zero advantage; "
          f"{args.draws} draws each")
    grads, seconds = {}, {}
    for name in ESTIMATORS:
        t0 = time.perf_counter()
        grads[name] = gradients(model, batch, name, args.draws, args.generations)
        seconds[name] = time.perf_counter() - t0
    base = grads["d1 x2"]
    base_var = float(base.var(dim=0).sum())
    print(f"{'estimator':<11} {'fwd/row':>7} {'tr Cov[grad]':>13} {'vs d1 x2':>9} {'|E grad|':>10} {'SNR':>7} "
          f"{'cos(mean, d1 x2)':>17} {'s':>6}")
    for name, g in grads.items():
        var, mean = float(g.var(dim=0).sum()), g.mean(dim=0)
        # |E grad|: the mean's norm less the draws' noise in it (E|mean|^2 = |E grad|^2 + tr Cov / n)
        signal = max(0.0, float(mean.norm()) ** 2 - var / len(g)) ** 0.5
        cos = float(torch.nn.functional.cosine_similarity(mean, base.mean(dim=0), dim=0))
        fwd = 1 if name == "d1" else 2
        print(f"{name:<11} {fwd:>7} {var:>13.4e} {var / base_var:>9.3f} {signal:>10.4f} {signal / var ** 0.5:>7.3f} "
              f"{cos:>17.3f} {seconds[name]:>6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
