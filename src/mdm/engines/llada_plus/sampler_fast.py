"""The `fast` sampler: Fast-dLLM's KV caching across denoising steps plus threshold parallel decoding, batched.

    cfg = SamplerConfig(name="fast", cache="dual", threshold=0.9, gen_length=128, block_length=32, steps=128)
    out = get_registry("samplers").get("fast")(model, prompts, cfg, mask_id=m, eos_id=e)

Per block: (1) one full forward over the whole batch, keeping every layer's keys/values, and a commit over
the block; (2) until the block has no mask, forwards over
- `cache: prefix`: the block and everything after it, attending to the kept keys/values before the block;
- `cache: dual`: the block only, attending to the kept keys/values on both sides of it;
each followed by a commit (the i-th repetition commits the schedule's i-th count, or by `threshold`).
The kept keys/values are not refreshed within a block: an approximation that the full forward at each
block start bounds. Unlike upstream we skip the forward that would follow an already complete block.
With `early_exit`, decoding stops once every row's text has ended (see sampler_batch.rows_finished).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from mdm.engines.llada_plus.sampler import (SampleOutput, check_sampler_cfg, end_ids, model_device, suppress)
from mdm.engines.llada_plus.sampler_batch import SampleBatch, rows_finished
from mdm.engines.llada_plus.sampler_step import commit_step
from mdm.engines.llada_plus.schedule import transfer_counts
from mdm.platform.registry import get_registry


def _take(cache: tuple, cols: torch.Tensor | slice) -> tuple:
    """Keep the key/value columns `cols` of every layer's (k, v) [B, H, T, Dh]."""
    return tuple((k[:, :, cols], v[:, :, cols]) for k, v in cache)


@torch.no_grad()
def sample_fast(model: torch.nn.Module, prompts: list[list[int]], cfg: Any, *, mask_id: int,
                eos_id: Optional[int] = None, generator: Optional[torch.Generator] = None) -> SampleOutput:
    """Fast-dLLM decoding of a batch of prompts; `cfg.cache` picks prefix or dual caching."""
    num_blocks, spb = check_sampler_cfg(cfg)
    if cfg.cfg_scale > 0:
        raise ValueError("sampler.cfg_scale > 0 is not supported by the fast sampler; use sampler.name=llada")
    if cfg.cache not in ("prefix", "dual"):
        raise ValueError(f"sampler.cache {cfg.cache!r} unknown; valid: prefix, dual")
    device = model_device(model)
    batch = SampleBatch.build(prompts, cfg.gen_length, mask_id, eos_id if eos_id is not None else 0, device)
    x, g0, bl, am, pos = batch.x, batch.gen_start, cfg.block_length, batch.attention_mask, batch.position_ids
    total = x.shape[1]
    ends = end_ids(cfg, eos_id)
    nfe = 0

    def commit(logits: torch.Tensor, s: int, e: int, counts: torch.Tensor, blk: int) -> None:
        if cfg.suppress_eos_until_last_block and blk < num_blocks - 1:
            logits = suppress(logits, ends)
        x[:, s:e], _ = commit_step(logits, x[:, s:e], x[:, s:e] == mask_id, counts, threshold=cfg.threshold,
                                   temperature=cfg.temperature, remasking=cfg.remasking, generator=generator)

    for blk in range(num_blocks):
        s, e = g0 + blk * bl, g0 + (blk + 1) * bl
        counts = transfer_counts((x[:, s:e] == mask_id).sum(dim=1), spb)
        out = model(x, attention_mask=am, position_ids=pos, use_cache=True)
        nfe += 1
        commit(out.logits[:, s:e], s, e, counts[:, 0], blk)
        if cfg.cache == "prefix":
            past, past_mask = _take(out.past_key_values, slice(0, s)), None if am is None else am[:, :s]
        else:
            other = torch.cat((torch.arange(0, s, device=device), torch.arange(e, total, device=device)))
            past, past_mask = _take(out.past_key_values, other), None if am is None else am[:, other]
        del out
        i = 1
        while (x[:, s:e] == mask_id).any():
            hi = total if cfg.cache == "prefix" else e
            logits = model(x[:, s:hi], position_ids=pos[:, s:hi], past_key_values=past,
                           past_attention_mask=past_mask).logits[:, :bl]
            nfe += 1
            # past the schedule (only if a step committed fewer than scheduled): commit what is left
            k = counts[:, i] if i < spb else (x[:, s:e] == mask_id).sum(dim=1)
            commit(logits, s, e, k, blk)
            i += 1
        if cfg.early_exit and ends and e < total and bool(rows_finished(x[:, g0:e], ends, mask_id).all()):
            x[:, e:] = ends[0]  # every row's text ended: what follows is cut off anyway
            break
    return SampleOutput(tokens=batch.generated(), nfe=nfe)


get_registry("samplers").register("fast", sample_fast)
