"""Samplers for masked diffusion LMs: the reference `llada` sampler (batched) and the `generate` API.

    from mdm.engines.llada_plus.sampler import generate, sample_llada
    texts = generate(model, tokenizer, SamplerConfig(gen_length=64, block_length=32, steps=64), ["2+3="])
    out = get_registry("samplers").get("llada")(model, [[1, 2, 3], [4, 5]], cfg, mask_id=126336)
    out.tokens  # generated ids per prompt (gen_length each); out.nfe: model forward passes made

`llada` follows the upstream LLaDA sampler: x = prompt + [MASK] * gen_length, denoised block by block
(semi-autoregressive when block_length < gen_length); in each of a block's steps one full forward, then
the scheduled number of most confident masked positions up to the block's end are committed (see
schedule.py / sampler_step.py). Prompts of different lengths run as one left-padded batch whose rows
each equal running that prompt alone, random draws included (each row has its own stream, seeded from one
draw of `generator` and the prompt: see sampler_batch.row_generators).
Importing this module registers `llada` and `fast` (sampler_fast.py) in the `samplers` registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from mdm.engines.llada_plus.sampler_batch import SampleBatch, row_generators
from mdm.engines.llada_plus.sampler_step import commit_step
from mdm.engines.llada_plus.schedule import check_schedule, transfer_counts
from mdm.platform.prompts import encode_prompt
from mdm.platform.registry import get_registry


@dataclass
class SampleOutput:
    tokens: list[list[int]]  # generated part only, gen_length ids per prompt
    nfe: int                 # model forward passes (a CFG pair counts as one batched forward)


def check_sampler_cfg(cfg: Any) -> tuple[int, int]:
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


def end_ids(cfg: Any, eos_id: Optional[int]) -> list[int]:
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


def logits_for(model: torch.nn.Module, ids: torch.Tensor, sl: slice, **kw: Any) -> Any:
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
def sample_llada(model: torch.nn.Module, prompts: list[list[int]], cfg: Any, *, mask_id: int,
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


def _cut(ids: list[int], ends: Sequence[int]) -> list[int]:
    for i, t in enumerate(ids):
        if t in ends:
            return ids[:i]
    return ids


def generate(model: torch.nn.Module, tokenizer_or_ids: Any, sampler_cfg: Any,
             prompts: Optional[Sequence[str] | str] = None, *, generator: Optional[torch.Generator] = None,
             chat_template: bool = True) -> list[str] | list[list[int]]:
    """Sample with the sampler named by `sampler_cfg.name`, `sampler_cfg.batch_size` prompts per call.

    `tokenizer_or_ids`: a list of prompt id lists -> returns the generated ids (gen_length each); or a
    tokenizer, with `prompts` as text laid out as training lays them out (`mdm.platform.prompts`: the chat
    template when it has one, else text + newline; `chat_template=False`: the raw text) -> returns the
    generated texts, cut at the first end token. Mask/EOS ids come from `model.config`."""
    sample = get_registry("samplers").get(sampler_cfg.name)
    mask_id = getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        raise ValueError("model.config.mask_token_id is not set; the sampler needs the [MASK] id")
    eos_id = getattr(model.config, "eos_token_id", None)
    if isinstance(tokenizer_or_ids, (list, tuple)):
        tokenizer, ids = None, [list(map(int, p)) for p in tokenizer_or_ids]
    else:
        tokenizer = tokenizer_or_ids
        if prompts is None:
            raise ValueError("generate(model, tokenizer, cfg, prompts): give the prompt texts")
        ids = [_encode(tokenizer, p, chat_template) for p in ([prompts] if isinstance(prompts, str) else prompts)]
    if sampler_cfg.batch_size < 1:
        raise ValueError(f"sampler.batch_size must be >= 1, got {sampler_cfg.batch_size}")
    was_training = model.training
    model.eval()
    out: list[list[int]] = [[] for _ in ids]
    # batching similar lengths together keeps the left padding small
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    try:
        for k in range(0, len(order), sampler_cfg.batch_size):
            chunk = order[k:k + sampler_cfg.batch_size]
            res = sample(model, [ids[i] for i in chunk], sampler_cfg, mask_id=mask_id, eos_id=eos_id,
                         generator=generator)
            for i, toks in zip(chunk, res.tokens):
                out[i] = toks
    finally:
        model.train(was_training)
    if tokenizer is None:
        return out
    ends = end_ids(sampler_cfg, eos_id)
    return [tokenizer.decode(_cut(t, ends), skip_special_tokens=True) for t in out]


def _encode(tokenizer: Any, text: str, chat_template: bool) -> list[int]:
    """Prompt ids as training laid them out (`mdm.platform.prompts`: chat template, or text + newline);
    `chat_template=False` sends the text raw."""
    if chat_template:
        return encode_prompt(tokenizer, text)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


get_registry("samplers").register("llada", sample_llada)

from mdm.engines.llada_plus import sampler_fast  # noqa: E402,F401  (registers "fast")
