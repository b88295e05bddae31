"""The LLaDA+ engine's likelihood hooks, as its `EngineSpec` exposes them to the platform.

    spec = get_registry("engines").get("llada_plus")
    scores = spec.loglikelihood(model, [(prompt_ids, answer_ids), ...], cfg.likelihood, generator, greedy=True)
    scores[0].value, scores[0].stderr, scores[0].greedy      # bound on log p(answer | prompt), its SE, bool
    spec.loglikelihood_rolling(model, [text_ids, ...], cfg.likelihood, generator, prefix=[bos_id])

`loglikelihood` is `likelihood.estimate_loglik` with the `likelihood` section's knobs and the model's [MASK] id
(with `answer_window` N > 0, each answer is first padded with the model's EOS to N tokens: see config.py);
`loglikelihood_rolling` is `likelihood_rolling.loglikelihood_rolling` (value: the summed chunk bounds).
`greedy` (lm-eval's `is_greedy`) is computed only when asked: whether one forward with the whole answer masked
predicts every answer token as its argmax (with the same guidance as the estimate) -- the answer a one-step
greedy decode of exactly L tokens would give, not what the iterative samplers produce.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import torch

from mdm.engines.llada_plus.config import LikelihoodConfig
from mdm.engines.llada_plus.likelihood.estimate import estimate_loglik
from mdm.engines.llada_plus.likelihood.batch import Item
from mdm.engines.llada_plus.likelihood.rolling import loglikelihood_rolling as _rolling
from mdm.platform.engine_api import LoglikScore


def mask_id_of(model: torch.nn.Module) -> int:
    """The model's [MASK] id (config.mask_token_id); an error naming the key when unset."""
    mask_id = getattr(model.config, "mask_token_id", None)
    if mask_id is None:
        raise ValueError("model.config.mask_token_id is not set; likelihood scoring needs the [MASK] id")
    return int(mask_id)


def pad_answers(items: Sequence[Item], answer_window: int, eos_id: Optional[int]) -> list[Item]:
    """Each (prompt, answer) with the answer padded by `eos_id` to `answer_window` tokens (longer ones unchanged)."""
    if eos_id is None:
        raise ValueError("likelihood.answer_window > 0 pads answers with EOS, but model.config.eos_token_id is unset")
    return [(p, list(a) + [int(eos_id)] * max(0, answer_window - len(a))) for p, a in items]


@torch.no_grad()
def greedy_match(model: torch.nn.Module, items: Sequence[Item], *, mask_id: int, cfg_scale: float = 0.0,
                 max_tokens_per_forward: int = 16384) -> list[bool]:
    """Per item: does argmax of the logits at every answer position, with all L answer positions masked, equal
    the answer? Items of equal total length share a forward (no padding needed)."""
    out = [True] * len(items)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, (p, a) in enumerate(items):
        if len(a):
            groups[len(p) + len(a)].append(i)
    device = next(model.parameters()).device
    copies = 2 if cfg_scale > 0 else 1
    for width, idx in groups.items():
        step = max(1, max_tokens_per_forward // (width * copies))
        for lo in range(0, len(idx), step):
            chunk = idx[lo:lo + step]
            x = torch.tensor([list(items[i][0]) + [mask_id] * len(items[i][1]) for i in chunk], device=device)
            logits = model(x).logits
            if cfg_scale > 0:
                un = x.clone()
                for r, i in enumerate(chunk):
                    un[r, :len(items[i][0])] = mask_id
                u = model(un).logits
                logits = u + (cfg_scale + 1.0) * (logits - u)
            for r, i in enumerate(chunk):
                p, a = items[i]
                pred = logits[r, len(p):].argmax(-1).tolist()
                out[i] = pred == [int(t) for t in a]
    return out


def loglikelihood(model: torch.nn.Module, items: Sequence[Item], cfg: LikelihoodConfig,
                  generator: Optional[torch.Generator] = None, greedy: bool = False) -> list[LoglikScore]:
    """The bound on log p(answer | prompt) per (prompt_ids, answer_ids) item, with its standard error (nats);
    `cfg`: the `likelihood` section (LikelihoodConfig)."""
    mask_id = mask_id_of(model)
    if cfg.answer_window > 0:
        items = pad_answers(items, cfg.answer_window, getattr(model.config, "eos_token_id", None))
    ests = estimate_loglik(model, items, mask_id=mask_id, mc_num=cfg.mc_num, cfg_scale=cfg.cfg_scale,
                           masks=cfg.masks, max_tokens_per_forward=cfg.max_tokens_per_forward,
                           generator=generator, batch_rows=cfg.batch_rows)
    flags: list[Optional[bool]] = [None] * len(items)
    if greedy:
        flags = list(greedy_match(model, items, mask_id=mask_id, cfg_scale=cfg.cfg_scale,
                                  max_tokens_per_forward=cfg.max_tokens_per_forward))
    return [LoglikScore(e.value, e.stderr, e.n_samples, g) for e, g in zip(ests, flags)]


def loglikelihood_rolling(model: torch.nn.Module, texts: Sequence[Sequence[int]], cfg: LikelihoodConfig,
                          generator: Optional[torch.Generator] = None, prefix: Sequence[int] = ()
                          ) -> list[LoglikScore]:
    """Per text (token ids): the summed chunk bounds (`cfg.window` / `cfg.context`) and its standard error."""
    res = _rolling(model, texts, mask_id=mask_id_of(model), window=cfg.window, context=cfg.context,
                   mc_num=cfg.mc_num, prefix=prefix, generator=generator, cfg_scale=cfg.cfg_scale, masks=cfg.masks,
                   max_tokens_per_forward=cfg.max_tokens_per_forward, batch_rows=cfg.batch_rows)
    return [LoglikScore(r.value, r.stderr, r.n_chunks) for r in res]
