"""One denoising step's commit rule, shared by the `llada` and `fast` samplers (batched, per-row counts).

    x_region, committed = commit_step(logits, x_region, allowed, counts, threshold=None, temperature=0.0,
                                      remasking="low_confidence", generator=g)

Prediction: x0 = argmax(logits) at temperature 0, else Gumbel-max in float64 (upstream's
`exp(logits) / (-log u) ** temperature`). Confidence: softmax(logits in float64)[x0] (`low_confidence`) or a
uniform draw (`random`). Commit per row the `counts[b]` most confident allowed positions, or with a
threshold every allowed position whose confidence reaches it plus always the single most confident one.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch


Rng = Optional[Union[torch.Generator, Sequence[torch.Generator]]]


def _uniform(shape: torch.Size, device: torch.device, generator: Rng, active: torch.Tensor) -> torch.Tensor:
    """float64 U(0, 1) draws [B, ...] on `device`: from one generator, or row b from generator[b] (per-row
    streams make a row's draws independent of the batch it is in; rows not `active` [B] draw nothing, as
    they would not have run alone). Generators may live on any device."""
    if generator is None or isinstance(generator, torch.Generator):
        where = generator.device if generator is not None else device
        return torch.rand(shape, dtype=torch.float64, device=where, generator=generator).to(device)
    out = torch.full(shape, 0.5, dtype=torch.float64, device=device)
    for b in active.nonzero().flatten().tolist():
        g = generator[b]
        out[b] = torch.rand(shape[1:], dtype=torch.float64, device=g.device, generator=g).to(device)
    return out


def predict(logits: torch.Tensor, temperature: float, generator: Rng, active: torch.Tensor) -> torch.Tensor:
    """x0 [B, n] from logits [B, n, V]; active [B] bool: rows that draw noise (see _uniform)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    lg = logits.double()
    u = _uniform(lg.shape, lg.device, generator, active)
    return (lg.exp() / (-torch.log(u)) ** temperature).argmax(dim=-1)


def confidence(logits: torch.Tensor, x0: torch.Tensor, remasking: str, generator: Rng,
               active: torch.Tensor) -> torch.Tensor:
    """Per-position confidence [B, n] float64 of the predictions x0 [B, n]."""
    if remasking == "low_confidence":
        p = torch.softmax(logits.double(), dim=-1)
        return p.gather(-1, x0[..., None]).squeeze(-1)
    if remasking == "random":
        return _uniform(x0.shape, x0.device, generator, active)
    raise ValueError(f"sampler.remasking {remasking!r} unknown; valid: low_confidence, random")


def commit_step(logits: torch.Tensor, x: torch.Tensor, allowed: torch.Tensor, counts: Optional[torch.Tensor], *,
                threshold: Optional[float], temperature: float, remasking: str,
                generator: Rng = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Commit predictions into x.

    logits [B, n, V] for the n positions of x [B, n] (long); allowed [B, n] bool (masked and committable now);
    counts [B] long (ignored with a threshold). Returns (new x [B, n], committed [B, n] bool)."""
    any_allowed = allowed.any(dim=1)
    x0 = predict(logits, temperature, generator, any_allowed)
    conf = confidence(logits, x0, remasking, generator, any_allowed)
    neg = torch.tensor(float("-inf"), dtype=conf.dtype, device=conf.device)
    conf = torch.where(allowed, conf, neg)
    if threshold is not None:
        best = conf.argmax(dim=1)
        committed = allowed & (conf >= threshold)
        committed[torch.arange(x.shape[0], device=x.device), best] |= any_allowed
    else:
        kmax = int(counts.max()) if counts.numel() else 0
        committed = torch.zeros_like(allowed)
        if kmax > 0:
            idx = torch.topk(conf, k=min(kmax, conf.shape[1]), dim=1).indices
            sel = torch.arange(idx.shape[1], device=x.device)[None, :] < counts[:, None]
            committed.scatter_(1, idx, sel)
            committed &= allowed  # a count beyond the allowed positions never commits a disallowed one
    return torch.where(committed, x0, x), committed
