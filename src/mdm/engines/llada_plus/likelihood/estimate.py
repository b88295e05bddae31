"""The log-likelihood lower bound of an answer given a prompt, estimated by stratified Monte Carlo over masks.

    from mdm.engines.llada_plus.likelihood.estimate import estimate_loglik
    est = estimate_loglik(model, [(prompt_ids, answer_ids), ...], mask_id=126336, mc_num=128, cfg_scale=0.5)
    est[0].value, est[0].stderr, est[0].n_samples     # nats (<= 0), its standard error, masks evaluated

The bound (LLaDA's likelihood evaluation), for an answer of L tokens:

    bound = -(1/L) sum_{k=1..L} g(k),   g(k) = (L/k) E_{M: |M| = k} sum_{i in M} CE(answer_i | prompt, answer
                                                                             with the positions M masked)

where M is a uniformly random k-subset of the answer positions. One sample of stratum k is a mask M and its
value (L/k) * sum_{i in M} CE_i. Design (`masks`):
- "random", mc_num >= L: q = mc_num // L complete rounds (every k once per round), plus r = mc_num % L samples
  on r distinct random strata. Every stratum has >= 1 sample and the estimate is the equal-weight mean of the L
  stratum means, so it is exactly unbiased: each k gets weight 1/L, whatever mc_num. (Upstream LLaDA spreads
  a batch's 16 mask counts by a rounded, wrapped linspace from a random start; with round-half-to-even ties
  the counts are not uniform over 1..L for any L in 2..15, which biases it: see the tests.)
  Standard error: the stratified variance sum_k s_k^2 / n_k / L^2, with s_k^2 the sample variance of stratum
  k; when some stratum has a single sample (mc_num < 2L), strata are collapsed in adjacent pairs (a triple
  last when L is odd) and each shares its group's sample variance around the group mean: conservative in
  expectation, by the spread of neighbouring strata's means, which is small since g varies slowly in k.
- "random", mc_num < L: mc_num distinct strata drawn at random, one sample each; the estimate is their mean,
  unbiased since every k is drawn with probability mc_num / L. SE: s / sqrt(mc_num) (conservative in
  expectation: it also counts between-strata spread that sampling strata without replacement partly removes);
  nan for a single sample.
- "enumerate": every k-subset for every k (2^L - 1 masks): the exact bound, stderr 0.
- "auto" (default): "enumerate" when 2^L - 1 <= mc_num (the exact value at no more cost), else "random".

Random draws: one draw of `generator` (or of torch's global RNG) seeds one stream per item from it and the
item's tokens (sampling/batch.row_generators), so an item gets the same masks alone or in any batch. Masks
are uniform k-subsets (the k smallest of L uniforms). All (item, mask) rows of a call are packed into shared
forwards under `max_tokens_per_forward` (likelihood/batch.py); accumulation is in float64.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from mdm.engines.llada_plus.likelihood.batch import Item, masked_ce_sums
from mdm.engines.llada_plus.sampling.batch import row_generators

MASK_DESIGNS = ("auto", "random", "enumerate")


@dataclass(frozen=True)
class LikelihoodEstimate:
    value: float       # the estimated lower bound on log p(answer | prompt), nats
    stderr: float      # its standard error (0 when exact, nan when it cannot be estimated from one sample)
    n_samples: int     # masks evaluated (model rows; with CFG each costs two sequences)
    answer_len: int    # L
    design: str        # "rounds" | "subset" | "enumerate" | "empty" (see the module docstring)


def random_plan(answer_len: int, mc_num: int, generator: Optional[torch.Generator] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The stratified random design for one answer: (k [n] long in 1..L, masks [n, L] bool with k[r] True in
    row r), n = mc_num (see the module docstring for how the k are chosen)."""
    L = answer_len
    if mc_num >= L:
        q, r = divmod(mc_num, L)
        extra = torch.randperm(L, generator=generator)[:r] + 1
        k = torch.cat((torch.arange(1, L + 1).repeat(q), extra))
    else:
        k = torch.randperm(L, generator=generator)[:mc_num] + 1
    u = torch.rand(len(k), L, generator=generator, dtype=torch.float64)
    ranks = u.argsort(dim=1).argsort(dim=1)
    return k, ranks < k[:, None]


def enumerate_plan(answer_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every nonempty mask of L positions, k-subsets for k = 1..L in order: (k [2^L - 1], masks [2^L - 1, L])."""
    L = answer_len
    rows = [c for k in range(1, L + 1) for c in itertools.combinations(range(L), k)]
    masks = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, c in enumerate(rows):
        masks[i, list(c)] = True
    return masks.sum(dim=1), masks


def _collapse_groups(n_k: torch.Tensor) -> torch.Tensor:
    """Variance group of each stratum [L]: itself when every stratum has >= 2 samples, else adjacent pairs
    (the last group a triple when L is odd)."""
    L = len(n_k)
    if int(n_k.min()) >= 2 or L == 1:
        return torch.arange(L)
    return (torch.arange(L) // 2).clamp(max=L // 2 - 1)


def aggregate(answer_len: int, k: torch.Tensor, values: torch.Tensor, design: str) -> tuple[float, float]:
    """(bound estimate, stderr) from per-sample values [n] float64 ((L/k) * sum of masked CE) of strata k [n]
    in 1..L: minus the equal-weight mean of the stratum means ("rounds", "enumerate") or of the values
    ("subset"); the stderr as in the module docstring."""
    L, n = answer_len, len(values)
    if design == "subset":
        se = math.sqrt(float(values.var()) / n) if n > 1 else math.nan
        return -float(values.mean()), se
    idx = k - 1
    n_k = torch.bincount(idx, minlength=L).to(torch.float64)
    if bool((n_k == 0).any()):
        raise ValueError("every stratum needs a sample")
    means = torch.zeros(L, dtype=torch.float64).index_add_(0, idx, values) / n_k
    if design == "enumerate":
        return -float(means.mean()), 0.0
    grp = _collapse_groups(n_k)
    gid = grp[idx]
    m_g = torch.bincount(gid).to(torch.float64)
    g_mean = torch.zeros(len(m_g), dtype=torch.float64).index_add_(0, gid, values) / m_g
    ss = torch.zeros(len(m_g), dtype=torch.float64).index_add_(0, gid, (values - g_mean[gid]) ** 2)
    s2 = ss / (m_g - 1)
    var = float((s2[grp] / n_k).sum()) / L ** 2
    return -float(means.mean()), math.sqrt(var)


def choose_design(answer_len: int, mc_num: int, masks: str) -> str:
    """"empty" | "enumerate" | "rounds" | "subset" for an answer of L tokens (see the module docstring)."""
    if masks not in MASK_DESIGNS:
        raise ValueError(f"masks must be one of {MASK_DESIGNS}, got {masks!r}")
    L = answer_len
    if L == 0:
        return "empty"
    if masks == "enumerate" or (masks == "auto" and L < 31 and 2 ** L - 1 <= mc_num):
        if L > 16:
            raise ValueError(f"masks='enumerate' runs 2^L - 1 rows; L = {L} is too long (max 16)")
        return "enumerate"
    return "rounds" if mc_num >= L else "subset"


def estimate_loglik(model: torch.nn.Module, items: Sequence[Item], *, mask_id: int, mc_num: int = 128,
                    cfg_scale: float = 0.0, masks: str = "auto", max_tokens_per_forward: int = 16384,
                    generator: Optional[torch.Generator] = None,
                    batch_rows: Optional[int] = None) -> list[LikelihoodEstimate]:
    """The bound on log p(answer | prompt) for each item, with its standard error (see the module docstring).

    items: (prompt_ids, answer_ids) token id sequences (the prompt may be empty); mc_num: masks per item
    (>= 1; for "random", exactly mc_num rows are run per item); cfg_scale: 0 = no guidance (upstream uses 0.5
    for ARC-C/HellaSwag/PIQA/GPQA, 2.0 for TruthfulQA); masks: "auto" | "random" | "enumerate";
    max_tokens_per_forward: tokens per forward including padding and CFG's unconditional copies;
    batch_rows: optional cap on rows per forward; generator: seeds the mask draws (CPU generator)."""
    if mc_num < 1:
        raise ValueError(f"mc_num must be >= 1, got {mc_num}")
    keys = [list(map(int, p)) + [-1] + list(map(int, a)) for p, a in items]  # -1: no token id collides
    gens = row_generators(keys, generator, "cpu") if items else []
    designs, ks, plans = [], [], []
    for (_, answer), g in zip(items, gens):
        design = choose_design(len(answer), mc_num, masks)
        if design == "empty":
            k, m = torch.zeros(0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.bool)
        elif design == "enumerate":
            k, m = enumerate_plan(len(answer))
        else:
            k, m = random_plan(len(answer), mc_num, g)
        designs.append(design)
        ks.append(k)
        plans.append(m)
    sums = masked_ce_sums(model, items, plans, mask_id=mask_id, cfg_scale=cfg_scale,
                          max_tokens_per_forward=max_tokens_per_forward, batch_rows=batch_rows)
    out = []
    for (_, answer), design, k, s in zip(items, designs, ks, sums):
        L = len(answer)
        if design == "empty":  # log p(empty answer) = 0
            out.append(LikelihoodEstimate(0.0, 0.0, 0, 0, design))
            continue
        values = s * (L / k.to(torch.float64))
        value, se = aggregate(L, k, values, design)
        out.append(LikelihoodEstimate(value, se, len(k), L, design))
    return out
