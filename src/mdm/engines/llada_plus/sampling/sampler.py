"""The reference `llada` sampler for masked diffusion LMs (batched), and the helpers the samplers share.

    from mdm.engines.llada_plus.sampling.sampler import sample_llada
    out = sample_llada(model, [[1, 2, 3], [4, 5]], cfg, mask_id=126336)
    out.tokens  # generated ids per prompt (gen_length each); out.nfe: model forward passes made

`llada` follows the upstream LLaDA sampler: x = prompt + [MASK] * gen_length, denoised block by block
(semi-autoregressive when block_length < gen_length); in each of a block's steps one full forward, then
the scheduled number of most confident masked positions up to the block's end are committed (see
schedule.py / sampling/step.py). Prompts of different lengths run as one left-padded batch whose rows
each equal running that prompt alone, random draws included (each row has its own stream, seeded from one
draw of `generator` and the prompt: see sampling/batch.row_generators).
Importing this module registers `llada` in the `samplers` registry (`fast` lives in sampling/fast.py).
To generate text, use the platform's one generation path, `mdm.platform.infer.generation.generate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from mdm.engines.llada_plus.config import SamplerConfig
from mdm.engines.llada_plus.sampling.batch import SampleBatch, row_generators
from mdm.engines.llada_plus.sampling.step import commit_step
from mdm.engines.llada_plus.sampling.schedule import check_schedule, transfer_counts
from mdm.platform.registry import get_registry


@dataclass
class SampleOutput:
    tokens: list[list[int]]  # generated part only, gen_length ids per prompt
    nfe: int                 # model forward passes (a CFG pair counts as one batched forward)


def check_sampler_cfg(cfg: SamplerConfig) -> tuple[int, int]:
    """Validate the knobs shared by all samplers; returns (num_blocks, steps_per_block)."""
    if cfg.temperature < 0:
        raise ValueError(f"sampler.temperature must be >= 0, got {cfg.temperature}")
    if cfg.cfg_scale < 0:
        raise ValueError(f"sampler.cfg_scale must be >= 0 (0 = no guidance), got {cfg.cfg_scale}")
    if cfg.threshold is not None and not 0.0 < cfg.threshold <= 1.0:
        raise ValueError(f"sampler.threshold must be in (0, 1] or null, got {cfg.threshold}")
    if cfg.remasking not in ("low_confidence", "random"):
        raise ValueError(f"sampler.remasking {cfg.remasking!r} unknown; valid: low_confidence, random")
    return check_schedule(cfg.gen_length, cfg.block_length, cfg.steps)


def end_ids(cfg: SamplerConfig, eos_id: Optional[int]) -> list[int]:
    """The end-of-text ids: the sampler's eos_id plus `sampler.eot_token_id` when set."""
    ids = [] if eos_id is None else [int(eos_id)]
    if cfg.eot_token_id >= 0:
        ids.append(int(cfg.eot_token_id))
    return ids


def suppress(logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Logits with the given token ids at -inf (a copy; logits [..., V])."""
    if not ids:
        return logits
    logits = logits.clone()
    logits[..., list(ids)] = float("-inf")
    return logits


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def logits_for(model: torch.nn.Module, ids: torch.Tensor, sl: slice, **kw: object) -> Any:
    """The model's output with logits for positions `sl` only ([B, len, V]): computed only there by models
    that support it (LLaDAModelLM), sliced afterwards for others."""
    if getattr(model, "supports_logits_slice", False):
        return model(ids, logits_slice=sl, **kw)
    out = model(ids, **kw)
    out.logits = out.logits[:, sl]
    return out


def guided_logits(model: torch.nn.Module, x: torch.Tensor, batch: SampleBatch, cfg_scale: float,
                  mask_id: int, sl: slice) -> torch.Tensor:
    """Logits [B, len, V] at positions `sl` of one (batched) forward; with cfg_scale > 0 the unsupervised CFG
    mix un + (cfg_scale + 1) * (cond - un), the unconditional input having its prompt replaced by masks."""
    if cfg_scale <= 0:
        return logits_for(model, x, sl, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits
    un = x.masked_fill(batch.prompt_mask, mask_id)
    am = batch.attention_mask
    logits = logits_for(model, torch.cat((x, un)), sl, attention_mask=None if am is None else torch.cat((am, am)),
                        position_ids=torch.cat((batch.position_ids, batch.position_ids))).logits
    cond, uncond = logits.chunk(2)
    return uncond + (cfg_scale + 1) * (cond - uncond)


@torch.no_grad()
def sample_llada(model: torch.nn.Module, prompts: list[list[int]], cfg: SamplerConfig, *, mask_id: int,
                 eos_id: Optional[int] = None, generator: Optional[torch.Generator] = None) -> SampleOutput:
    """The reference LLaDA sampler over a batch of prompts (token id lists of any lengths)."""
    num_blocks, spb = check_sampler_cfg(cfg)
    device = model_device(model)
    batch = SampleBatch.build(prompts, cfg.gen_length, mask_id, eos_id if eos_id is not None else 0, device)
    x, g0, bl = batch.x, batch.gen_start, cfg.block_length
    ends = end_ids(cfg, eos_id)
    sampled = cfg.temperature > 0 or cfg.remasking == "random"
    rng = row_generators(prompts, generator, device) if sampled else None  # per-row streams: batch == alone
    nfe = 0
    for blk in range(num_blocks):
        s, e = g0 + blk * bl, g0 + (blk + 1) * bl
        counts = transfer_counts((x[:, s:e] == mask_id).sum(dim=1), spb)
        for i in range(spb):
            if cfg.threshold is not None and not (x[:, s:e] == mask_id).any():
                break  # upstream stops a threshold block once it is fully committed
            # leftover masks of earlier blocks (possible with a threshold and few steps) stay committable
            # (a sampled run always draws over all of it, so a row's draws do not depend on its batch)
            lo = g0 if sampled or (x[:, g0:s] == mask_id).any() else s
            region = guided_logits(model, x, batch, cfg.cfg_scale, mask_id, slice(lo, e))
            nfe += 1
            if cfg.suppress_eos_until_last_block and blk < num_blocks - 1:
                region = suppress(region, ends)
            allowed = x[:, lo:e] == mask_id
            if cfg.threshold is not None:  # a row whose block is complete waits, as it would have stopped alone
                allowed &= (x[:, s:e] == mask_id).any(dim=1, keepdim=True)
            x[:, lo:e], _ = commit_step(region, x[:, lo:e], allowed, counts[:, i],
                                        threshold=cfg.threshold, temperature=cfg.temperature,
                                        remasking=cfg.remasking, generator=rng)
    return SampleOutput(tokens=batch.generated(), nfe=nfe)


get_registry("samplers").register("llada", sample_llada)
