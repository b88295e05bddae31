"""Estimator diagnostics: MIRROR's within-sequence pair correlation and a sampler's realised gradient variance.

    from mdm.engines.llada_plus.estimator_diagnostics import mirror_within_corr, realised_grad_variance
    m = mirror_within_corr(model, batches, mask_id=126336, t_values=(0.5,), pairs=8, num_sequences=16,
                           max_tokens_per_forward=16384, seed=0, device="cuda")
    m["mirror_corr_within"], m["mirror_corr_pooled"], m["mirror_corr_within_t0.5"]
    r = realised_grad_variance(model, batch, TimeSampler(density), mask_id=126336, draws=64, seed=0)
    r["realised_grad_R"]       # tr Cov[g] under the sampler / tr Cov[g] under uniform t, same batch

MIRROR within-sequence correlation. The training metric `mirror_corr` (diagnostics.py) pools the two halves'
losses over sequences, so sequence-to-sequence variance makes it positive even when, within one sequence, the
antithetic pair works. Here, for each sequence i and each t, `pairs` independent mirror pairs (h1_k, h2_k) are
drawn; with ḡ1, ḡ2 the means of the group (i, t), the within correlation at t is

    sum_{i,k} (h1 - ḡ1)(h2 - ḡ2) / sqrt(sum_{i,k} (h1 - ḡ1)^2 * sum_{i,k} (h2 - ḡ2)^2)

and the pooled correlation at t is the plain Pearson correlation of all the (h1, h2) at that t. The
undecorated keys average the per-t values over `t_values`. h is l_b of loss.masked_ce_loss (CE / p over the
eligible tokens, no importance weight). Masks: sequence i (global index) owns a generator seeded with
`seed * 1_000_003 + i`; for each t in order, for each pair, one `diffusion.mirror_masks(labels[None], p)` call
(p = mask_prob(t) in float32), i.e. exactly the draw diffusion_loss(mode="MIRROR") makes for a one-row batch.

Distributed (torch.distributed initialised, world_size > 1): rank r takes its share of `num_sequences` (the
first with response tokens from the batches *it* is given), all ranks run the same number of forwards (ZeRO-3
gathers parameters collectively) and the sums are all-reduced, so every rank returns the same numbers.

Realised gradient variance: `draws` estimates of the training gradient on the SAME batch, t from the sampler
with weight 1/q(t) (loss.diffusion_loss, so exactly the training estimator), and again with t ~ U(0, 1). The
draws are stratified in u = F(t): each sequence gets one draw in each of `draws` equal-probability strata (in
random order), from the same uniforms under both samplers. Each draw's marginal is the training
distribution, so E||g||^2 is estimated without bias and tr Cov to within a factor 1 + 1/draws; with plain
independent draws the variance under uniform t, dominated by rare draws near t = 0 (l ~ 1/t there), is
underestimated in most runs of a few dozen draws and the ratio reads too high. tr Cov[g] by Welford in float64 over the flattened gradient of the trainable parameters
(torch.autograd.grad, so .grad fields and DeepSpeed hooks are untouched). Single process; call it on a plain
(or ZeRO <= 2, unwrapped) module: under ZeRO-3 the parameters are shards. Both estimators start from the same
generator seed, so `TimeSampler(None)` as the sampler gives identical draws and a ratio of exactly 1. The
sampler's weight cap (max_is_weight) applies, as in training.

The rows are packed and run by rows.py (shared with P-POTS measurement and the quadrature evaluation).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence, TypedDict

import numpy as np
import torch

from mdm.engines.llada_plus.diffusion import mask_prob, mirror_masks
from mdm.engines.llada_plus.loss import diffusion_loss
from mdm.engines.llada_plus.rows import Row, all_reduce, dist_rank_world, eval_mode, row_losses, take_sequences
from mdm.engines.llada_plus.ppots.time_sampling import TimeSampler


def _moments(h: torch.Tensor) -> torch.Tensor:
    """[9] float64 sums for one t from `h` [G, K, 2]: within (Sxy, Sxx, Syy), pooled (n, Sx, Sy, Sxx, Syy, Sxy)."""
    h = h.double()
    d = h - h.mean(dim=1, keepdim=True)
    x, y = h[..., 0].reshape(-1), h[..., 1].reshape(-1)
    return torch.stack([(d[..., 0] * d[..., 1]).sum(), (d[..., 0] ** 2).sum(), (d[..., 1] ** 2).sum(),
                        torch.tensor(float(x.numel()), dtype=torch.float64), x.sum(), y.sum(),
                        (x * x).sum(), (y * y).sum(), (x * y).sum()])


def _corrs_from_moments(s: torch.Tensor) -> tuple[float, float]:
    within = float(s[0]) / math.sqrt(float(s[1] * s[2])) if s[1] > 0 and s[2] > 0 else float("nan")
    n, sx, sy, sxx, syy, sxy = (float(v) for v in s[3:])
    vx, vy, cxy = sxx - sx * sx / max(n, 1), syy - sy * sy / max(n, 1), sxy - sx * sy / max(n, 1)
    pooled = cxy / math.sqrt(vx * vy) if vx > 0 and vy > 0 else float("nan")
    return within, pooled


def mirror_within_corr(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], *, mask_id: int,
                       t_values: Sequence[float] = (0.5,), pairs: int = 8, num_sequences: int = 16,
                       eps: float = 1e-3, max_tokens_per_forward: int = 16384, seed: int = 0,
                       device: torch.device | str = "cpu") -> dict[str, float]:
    """MIRROR's within-sequence and pooled half-loss correlations (module docstring); no grad, eval mode.

    Keys: mirror_corr_within, mirror_corr_pooled (means over t_values), mirror_corr_within_t{t},
    mirror_corr_pooled_t{t} (t formatted with :g), mirror_n_sequences (over all ranks)."""
    if pairs < 2:
        raise ValueError(f"mirror_within_corr needs pairs >= 2 to form within-sequence deviations, got {pairs}")
    rank, world = dist_rank_world()
    shares = [num_sequences // world + (r < num_sequences % world) for r in range(world)]
    seqs = take_sequences(batches, shares[rank])
    offset = sum(shares[:rank])
    ps = [mask_prob(torch.tensor([float(t)], dtype=torch.float32), eps) for t in t_values]
    rows: list[Row] = []
    for i, (ids, labels) in enumerate(seqs):
        g = torch.Generator().manual_seed(seed * 1_000_003 + offset + i)
        for p in ps:
            for _ in range(pairs):
                m1, m2 = mirror_masks(labels[None], p, g)
                rows += [(ids, labels, m1[0], p[0]), (ids, labels, m2[0], p[0])]
    with eval_mode(model):
        l = row_losses(model, rows, mask_id=mask_id, max_tokens_per_forward=max_tokens_per_forward, device=device)
    h = l.view(len(seqs), len(ps), pairs, 2)  # [sequence, t, pair, half]
    sums = torch.stack([_moments(h[:, j]) for j in range(len(ps))]) if seqs else torch.zeros(len(ps), 9,
                                                                                             dtype=torch.float64)
    sums = all_reduce(sums, device)
    out: dict[str, float] = {}
    for j, t in enumerate(t_values):
        out[f"mirror_corr_within_t{t:g}"], out[f"mirror_corr_pooled_t{t:g}"] = _corrs_from_moments(sums[j])
    out["mirror_corr_within"] = float(np.mean([out[f"mirror_corr_within_t{t:g}"] for t in t_values]))
    out["mirror_corr_pooled"] = float(np.mean([out[f"mirror_corr_pooled_t{t:g}"] for t in t_values]))
    out["mirror_n_sequences"] = float(sums[0, 3]) / pairs
    return out


class DrawStats(TypedDict):
    losses: np.ndarray       # [draws] loss of each draw
    grad_mean: torch.Tensor  # [P] float64 CPU, mean flattened gradient
    tr_cov: float            # tr Cov[g], ddof 1


def _draw_stats(model: torch.nn.Module, batch: dict[str, torch.Tensor], sampler: TimeSampler,
                params: list[torch.Tensor], *, mask_id: int, draws: int, seed: int, eps: float,
                mode: str) -> DrawStats:
    """Loss values and Welford gradient moments of `draws` training estimates on `batch` with `sampler`."""
    g = torch.Generator().manual_seed(seed)
    # Moments on the parameters' device: no host copy of the gradient per draw.
    mean = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64, device=params[0].device)
    m2 = torch.zeros_like(mean)
    losses = []
    device, n = batch["input_ids"].device, batch["input_ids"].shape[0]
    # Stratified uniforms: sequence b's r-th draw lies in stratum perm_b[r] of [0, 1), so every sequence is
    # drawn once in each of `draws` equal-probability strata of t (the rare small-t draws that dominate the
    # variance are always there); each draw's marginal is still the training distribution.
    strata = torch.stack([torch.randperm(draws, generator=g) for _ in range(n)], dim=1).double()  # [draws, B]
    u = ((strata + torch.rand((draws, n), generator=g, dtype=torch.float64)) / draws).numpy()
    for r in range(draws):
        t, weight = sampler.from_uniform(u[r], device)
        loss, _ = diffusion_loss(model, batch, t, weight, mask_id=mask_id, eps=eps, mode=mode, generator=g)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if gr is None else gr).reshape(-1).to(mean)
                          for p, gr in zip(params, grads)])
        losses.append(float(loss.detach()))
        delta = flat - mean
        mean += delta / (r + 1)
        m2 += delta * (flat - mean)
    return {"losses": np.array(losses), "grad_mean": mean.cpu(), "tr_cov": float(m2.sum()) / (draws - 1)}


def realised_grad_variance(model: torch.nn.Module, batch: dict[str, torch.Tensor], sampler_q: TimeSampler, *,
                           mask_id: int, draws: int, seed: int = 0, eps: float = 1e-3, mode: str = "Normal",
                           params: Sequence[torch.Tensor] | None = None) -> dict[str, float]:
    """tr Cov[g] of the training gradient on `batch` under `sampler_q` (weights 1/q(t)) and under U(0, 1).

    batch: input_ids [B, L], labels [B, L], attention_mask [B, L] on the model's device. Eval mode (dropout
    off, so only t and the masks vary), the previous mode restored. Keys: tr_cov_grad_q, tr_cov_grad_uniform,
    realised_grad_R (= q / uniform), loss_var_q, loss_var_uniform, realised_loss_R, loss_mean_q, loss_se_q,
    loss_mean_uniform, loss_se_uniform, grad_mean_gap2 (||mean g_q - mean g_u||^2) and grad_mean_gap2_indep
    ((tr_q + tr_u) / draws, the scale of that gap for two unbiased estimates; the shared stratified
    uniforms make the actual gap smaller)).
    `params` (default: every trainable parameter) restricts the gradient to a subset, e.g. a few layers of a
    large model: the Welford moments take 2 float64 copies of the flattened gradient."""
    if draws < 2:
        raise ValueError(f"realised_grad_variance needs draws >= 2, got {draws}")
    params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    kw = dict(mask_id=mask_id, draws=draws, seed=seed, eps=eps, mode=mode)
    with eval_mode(model):
        q = _draw_stats(model, batch, sampler_q, params, **kw)
        u = _draw_stats(model, batch, TimeSampler(None), params, **kw)
    out: dict[str, float] = {}
    for name, s in (("q", q), ("uniform", u)):
        out[f"tr_cov_grad_{name}"] = s["tr_cov"]
        out[f"loss_mean_{name}"] = float(s["losses"].mean())
        out[f"loss_var_{name}"] = float(s["losses"].var(ddof=1))
        out[f"loss_se_{name}"] = math.sqrt(out[f"loss_var_{name}"] / draws)
    out["realised_grad_R"] = _ratio(q["tr_cov"], u["tr_cov"])
    out["realised_loss_R"] = _ratio(out["loss_var_q"], out["loss_var_uniform"])
    out["grad_mean_gap2"] = float(((q["grad_mean"] - u["grad_mean"]) ** 2).sum())
    out["grad_mean_gap2_indep"] = (q["tr_cov"] + u["tr_cov"]) / draws
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")
