"""Rolling log-likelihood (perplexity) of long texts, as a sum of likelihood bounds over chunks.

    from mdm.engines.llada_plus.likelihood.rolling import loglikelihood_rolling
    res = loglikelihood_rolling(model, [text_ids, ...], mask_id=126336, window=1024, context=256, mc_num=128)
    res[0].value, res[0].stderr, res[0].n_tokens, res[0].perplexity    # nats, SE, tokens scored, exp(-value/n)

A masked diffusion LM scores a fixed-length answer given a prompt (likelihood.py), and its context is bounded,
so a long text is cut into consecutive disjoint chunks, every token scored exactly once. Each chunk is one
(prompt, answer) item whose sequence holds at most `window` tokens:
- the first chunk's prompt is `prefix` (e.g. [BOS], default none) and its answer the first
  `window - len(prefix)` tokens;
- every later chunk's prompt is the `context` tokens just before it, and its answer the next `window - context`
  tokens (the last chunk may be shorter).
The text's value is the sum of the chunk bounds: a lower bound (in expectation) on
sum_c log p(chunk_c | its prompt), the chunked, truncated-context log-likelihood that lm-eval's rolling windows
also compute for autoregressive models. Chunks are independent estimates, so the stderr is the square root of
the sum of their variances. All chunks of all texts go to one `estimate_loglik` call (packed forwards).
Larger `context` conditions each chunk on more text but scores fewer new tokens per forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from mdm.engines.llada_plus.likelihood.estimate import estimate_loglik


@dataclass(frozen=True)
class RollingEstimate:
    value: float     # sum of the chunk bounds, nats
    stderr: float    # sqrt of the sum of the chunk variances
    n_tokens: int    # tokens scored (the text's length)
    n_chunks: int

    @property
    def perplexity(self) -> float:
        """exp(-value / n_tokens): an upper bound (in expectation) on the chunked perplexity."""
        return math.exp(-self.value / self.n_tokens) if self.n_tokens else math.nan


def rolling_chunks(n_tokens: int, *, window: int, context: int, prefix_len: int = 0) -> list[tuple[int, int, int]]:
    """(prompt_start, answer_start, answer_end) token offsets of each chunk of a text of n_tokens (see the module
    docstring); the first chunk's prompt is the prefix (prompt_start == answer_start == 0)."""
    if not 0 <= context < window:
        raise ValueError(f"need 0 <= context < window, got context={context}, window={window}")
    if not 0 <= prefix_len < window:
        raise ValueError(f"the prefix ({prefix_len} tokens) must be shorter than window={window}")
    chunks, start = [], 0
    while start < n_tokens:
        if start == 0:
            end = min(n_tokens, window - prefix_len)
            chunks.append((0, 0, end))
        else:
            end = min(n_tokens, start + window - context)
            chunks.append((max(0, start - context), start, end))
        start = end
    return chunks


def loglikelihood_rolling(model: torch.nn.Module, texts: Sequence[Sequence[int]], *, mask_id: int,
                          window: int = 1024, context: int = 256, mc_num: int = 128,
                          prefix: Sequence[int] = (), generator: Optional[torch.Generator] = None,
                          **estimate_kw: object) -> list[RollingEstimate]:
    """Per text (token ids), the summed chunk bounds with stderr. `window`: tokens per chunk sequence (prompt +
    answer); `context`: tokens of preceding text each later chunk is conditioned on; `prefix`: the first chunk's
    prompt; mc_num and `estimate_kw` (cfg_scale, masks, max_tokens_per_forward, batch_rows) go to
    estimate_loglik for every chunk."""
    items, owner = [], []
    for t, text in enumerate(texts):
        ids = list(map(int, text))
        for p0, a0, a1 in rolling_chunks(len(ids), window=window, context=context, prefix_len=len(prefix)):
            items.append((list(prefix) if a0 == 0 else ids[p0:a0], ids[a0:a1]))
            owner.append(t)
    ests = estimate_loglik(model, items, mask_id=mask_id, mc_num=mc_num, generator=generator, **estimate_kw)
    value = [0.0] * len(texts)
    var = [0.0] * len(texts)
    count = [0] * len(texts)
    for t, e in zip(owner, ests):
        value[t] += e.value
        var[t] += e.stderr ** 2
        count[t] += 1
    return [RollingEstimate(value[t], math.sqrt(var[t]), len(texts[t]), count[t]) for t in range(len(texts))]
