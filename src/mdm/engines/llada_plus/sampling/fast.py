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
With `early_exit`, a row whose text has ended (sampling/batch.rows_finished) is filled with end tokens at the
block boundary, and decoding stops once every row has ended.
"""

from __future__ import annotations

from typing import Optional

import torch

from mdm.engines.llada_plus.config import SamplerConfig
from mdm.engines.llada_plus.sampling.sampler import (SampleOutput, check_sampler_cfg, end_ids, logits_for, model_device,
                                             suppress)
from mdm.engines.llada_plus.sampling.batch import SampleBatch, row_generators, rows_finished
from mdm.engines.llada_plus.sampling.step import commit_step
from mdm.engines.llada_plus.sampling.schedule import transfer_counts
from mdm.platform.registry import get_registry


def _take(cache: tuple, cols: torch.Tensor | slice) -> tuple:
    """Keep the key/value columns `cols` of every layer's (k, v) [B, H, T, Dh]."""
    return tuple((k[:, :, cols], v[:, :, cols]) for k, v in cache)


@torch.no_grad()
def sample_fast(model: torch.nn.Module, prompts: list[list[int]], cfg: SamplerConfig, *, mask_id: int,
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
    sampled = cfg.temperature > 0 or cfg.remasking == "random"
    rng = row_generators(prompts, generator, device) if sampled else None  # per-row streams: batch == alone
    nfe = 0

    def commit(logits: torch.Tensor, rows: torch.Tensor, s: int, e: int, counts: torch.Tensor, blk: int) -> None:
        """Commit into the block [s, e) of the batch rows `rows` (logits [R, e - s, V])."""
        if cfg.suppress_eos_until_last_block and blk < num_blocks - 1:
            logits = suppress(logits, ends)
        xs = x[rows, s:e]
        gens = None if rng is None else [rng[r] for r in rows.tolist()]
        x[rows, s:e], _ = commit_step(logits, xs, xs == mask_id, counts, threshold=cfg.threshold,
                                      temperature=cfg.temperature, remasking=cfg.remasking, generator=gens)

    for blk in range(num_blocks):
        s, e = g0 + blk * bl, g0 + (blk + 1) * bl
        hi = total if cfg.cache == "prefix" else e
        # only rows with masks in the block run: rows that finished (early exit) or wait for slower rows
        # cost nothing, and a row's results never depend on the others
        rows = (x[:, s:e] == mask_id).any(dim=1).nonzero().flatten()
        if not len(rows):
            continue
        counts = transfer_counts((x[rows, s:e] == mask_id).sum(dim=1), spb)
        am_r = None if am is None or bool(am[rows].all()) else am[rows]
        out = logits_for(model, x[rows], slice(s, e), attention_mask=am_r, position_ids=pos[rows], use_cache=True)
        nfe += 1
        commit(out.logits, rows, s, e, counts[:, 0], blk)
        if cfg.cache == "prefix":
            cols: torch.Tensor | slice = slice(0, s)
        else:
            cols = torch.cat((torch.arange(0, s, device=device), torch.arange(e, total, device=device)))
        past, past_mask = _take(out.past_key_values, cols), None if am_r is None else am_r[:, cols]
        del out
        i = 1
        while True:
            keep = (x[rows, s:e] == mask_id).any(dim=1)
            if not keep.any():
                break
            if not keep.all():  # drop rows whose block is complete (their cache rows too)
                rows, counts = rows[keep], counts[keep]
                past = tuple((k[keep], v[keep]) for k, v in past)
                past_mask = None if past_mask is None else past_mask[keep]
            logits = logits_for(model, x[rows, s:hi], slice(0, bl), position_ids=pos[rows, s:hi],
                                past_key_values=past, past_attention_mask=past_mask).logits
            nfe += 1
            # past the schedule (only if a step committed fewer than scheduled): commit what is left
            k = counts[:, i] if i < spb else (x[rows, s:e] == mask_id).sum(dim=1)
            commit(logits, rows, s, e, k, blk)
            i += 1
        if cfg.early_exit and ends and e < total:
            # a row whose text ended gets end tokens for the rest, as it would alone (what follows the end
            # is cut off anyway); once every row has ended, stop
            done = rows_finished(x[:, g0:e], ends, mask_id)
            x[done, e:] = ends[0]
            if bool(done.all()):
                break
    return SampleOutput(tokens=batch.generated(), nfe=nfe)


get_registry("samplers").register("fast", sample_fast)
